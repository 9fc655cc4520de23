"""Host-local style IPAM: which addresses it hands out, that it never hands
one out twice (threads and processes), that state survives a restart, and
release / GC. No root needed."""
from __future__ import annotations

import ipaddress
import multiprocessing
import os
import threading

import pytest

from tailor.datapath.agent.cni import ipam


def addresses(allocs):
    return [str(a.address) for a in allocs]


def test_network_gateway_and_broadcast_are_never_handed_out(tmp_path):
    pool = ipam.Ipam.from_cidrs(tmp_path, ["10.0.0.0/29"])
    got = [addresses(pool.allocate(f"c{i}", "eth0"))[0] for i in range(5)]
    # .0 network, .1 gateway, .7 broadcast
    assert got == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    with pytest.raises(ipam.Exhausted):
        pool.allocate("c9", "eth0")
    assert pool.free() == {"10.0.0.0/29": 0}


def test_dual_stack_gets_one_address_per_family(tmp_path):
    pool = ipam.Ipam.from_cidrs(tmp_path, ["10.0.0.0/24", "fd00::/64"])
    allocs = pool.allocate("c1", "eth0")
    assert addresses(allocs) == ["10.0.0.2", "fd00::2"]
    assert [a.range.subnet.prefixlen for a in allocs] == [24, 64]


def test_exhaustion_in_one_family_reserves_nothing(tmp_path):
    pool = ipam.Ipam(tmp_path, [["fd00::/64"], ["10.0.0.0/30"]])
    pool.allocate("c1", "eth0")
    with pytest.raises(ipam.Exhausted):
        pool.allocate("c2", "eth0")
    assert pool.lookup("c2", "eth0") == []


def test_release_is_idempotent_and_a_freed_address_is_not_reused_at_once(tmp_path):
    pool = ipam.Ipam.from_cidrs(tmp_path, ["10.0.0.0/24"])
    first = addresses(pool.allocate("c1", "eth0"))
    pool.allocate("c2", "eth0")
    assert addresses(pool.release("c1", "eth0")) == first
    assert pool.release("c1", "eth0") == []
    assert addresses(pool.allocate("c3", "eth0")) == ["10.0.0.4"]   # after the last one handed out


def test_the_same_attachment_gets_its_addresses_back(tmp_path):
    pool = ipam.Ipam.from_cidrs(tmp_path, ["10.0.0.0/24"])
    assert addresses(pool.allocate("c1", "eth0")) == addresses(pool.allocate("c1", "eth0"))
    assert addresses(pool.allocate("c1", "net1")) == ["10.0.0.3"]


def test_state_survives_a_restart(tmp_path):
    ipam.Ipam.from_cidrs(tmp_path, ["10.0.0.0/24"]).allocate("c1", "eth0")
    again = ipam.Ipam.from_cidrs(tmp_path, ["10.0.0.0/24"])
    assert [(str(a.address), a.container_id, a.ifname) for a in again.allocated()] == [("10.0.0.2", "c1", "eth0")]
    assert addresses(again.allocate("c2", "eth0")) == ["10.0.0.3"]


def test_gc_keeps_only_valid_attachments(tmp_path):
    pool = ipam.Ipam.from_cidrs(tmp_path, ["10.0.0.0/24", "fd00::/64"])
    for c in ("c1", "c2", "c3"):
        pool.allocate(c, "eth0")
    gone = pool.gc([("c2", "eth0")])
    assert sorted({a.container_id for a in gone}) == ["c1", "c3"]
    assert {a.container_id for a in pool.allocated()} == {"c2"}


def test_range_options_from_a_netconf(tmp_path):
    rangesets = ipam.parse_ranges({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100",
                                                "rangeEnd": "10.1.0.101"}, {"subnet": "10.2.0.0/30"}]]})
    pool = ipam.Ipam(tmp_path, rangesets)
    got = [addresses(pool.allocate(f"c{i}", "eth0"))[0] for i in range(3)]
    assert got == ["10.1.0.100", "10.1.0.101", "10.2.0.2"]


@pytest.mark.parametrize("ranges", [
    [[{"subnet": "10.0.0.0/33"}]],
    [[{"subnet": "10.0.0.1/24"}]],                        # host bits set
    [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]],   # families mixed in a set
    [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}]],   # two IPv4 sets
    [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]],
    [[]],
])
def test_bad_ranges_are_refused(ranges):
    with pytest.raises((ValueError, KeyError)):
        ipam.parse_ranges({"ranges": ranges})


def test_concurrent_threads_never_share_an_address(tmp_path):
    pool = ipam.Ipam.from_cidrs(tmp_path, ["10.0.0.0/24"])
    got, lock = [], threading.Lock()

    def take(i):
        a = pool.allocate(f"t{i}", "eth0")[0].address
        with lock:
            got.append(a)
    threads = [threading.Thread(target=take, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 200


def _allocate_in_process(state_dir, prefix, n, queue):
    pool = ipam.Ipam.from_cidrs(state_dir, ["10.0.0.0/23"])
    queue.put([str(pool.allocate(f"{prefix}{i}", "eth0")[0].address) for i in range(n)])


def test_concurrent_processes_never_share_an_address(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_allocate_in_process, args=(str(tmp_path), f"p{p}x", 50, queue)) for p in range(4)]
    for p in procs:
        p.start()
    got = [a for _ in procs for a in queue.get(timeout=60)]
    for p in procs:
        p.join()
    assert len(got) == len(set(got)) == 200
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("10.0.0.0/23") for a in got)
    assert len([f for f in os.listdir(tmp_path) if f[0].isdigit()]) == 200
