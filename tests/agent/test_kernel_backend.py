"""The kernel backend on real network namespaces: a node namespace with pod
namespaces wired to it by veth, the pods' compiled programs on tcx links of
the host-side veths, and real TCP/UDP between the pods."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time

import pytest

import agent_world as world
import kernel_lab
from tailor.datapath.agent import wire
from tailor.datapath.groups import GroupChange
from tailor.datapath.agent.backends import base
from tailor.datapath.agent.backends import kernel as kb
from tailor.datapath.ebpf import kernel
from tailor.datapath import layout

pytestmark = pytest.mark.kernel

TAG = f"{os.getpid() % 100000}"


@pytest.fixture(scope="module")
def lab():
    lab = kernel_lab.Lab(TAG, dict(world.ADDRESSES))
    try:
        lab.up()
        lab.serve("server")
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def received():
    v1 = {n: wire.from_proto(m) for n, m in world.programs().items()}
    v2 = {n: wire.from_proto(m) for n, m in world.programs(ports=(80, 8080)).items()}
    return v1, v2


@pytest.fixture
def roots(tmp_path):
    root = f"/sys/fs/bpf/tailor-test-{TAG}"
    yield root, str(tmp_path / "state")
    # Whatever a test left: detach pinned links, unpin everything.
    if os.path.isdir(root):
        for dirpath, _, files in os.walk(root):
            if "link" in files:
                from tailor.datapath.ebpf import attach
                try:
                    with attach.Link.open_pinned(os.path.join(dirpath, "link")) as link:
                        link.detach()
                except Exception:
                    pass
        kernel.remove_tree(root)


def backend(lab, roots) -> kb.KernelBackend:
    b = kb.KernelBackend("test", bpffs_root=roots[0], state_dir=roots[1], netns=lab.node)
    b.start()
    return b


def crash(b: kb.KernelBackend) -> None:
    """What kill -9 does to the agent: every fd closed, nothing unpinned or
    detached."""
    for pod in b._pods.values():
        for side in pod.sides.values():
            for obj in (side.prog, side.link, *side.maps.values()):
                if obj is not None and obj.fd >= 0:
                    os.close(obj.fd)
    for m in b.node_maps.values():
        os.close(m.fd)


def attach_all(b, lab, received):
    for name in world.ADDRESSES:
        b.update_groups(received[name].groups)      # the core does this before an attach
        state, changed = b.attach(lab.endpoint(name), received[name])
        assert changed and state.state == base.State.LOADED


def bpftool_link(link_id: int) -> dict:
    return json.loads(subprocess.run(["bpftool", "-j", "link", "show", "id", str(link_id)],
                                     check=True, capture_output=True, text=True).stdout)


def test_programs_decide_traffic_and_count_redirects(lab, roots, received):
    b = backend(lab, roots)
    attach_all(b, lab, received[0])
    ids = b.link_ids("app/server")
    ifindex = lab.endpoint("server").host_ifindex
    for direction, hook in (("ingress", "egress"), ("egress", "ingress")):
        # bpftool 7.1 predates tcx: it shows the link and its program, not the hook.
        assert bpftool_link(ids[direction][0])["prog_id"] == ids[direction][1]
        info = b._pods["app/server"].sides[direction].link.info()
        assert (info.ifindex, info.direction) == (ifindex, hook)
    assert lab.probe("client", "server", "TCP", 80)
    assert lab.probe("client", "server", "UDP", 80)
    assert not lab.probe("client", "server", "TCP", 8080)     # port not allowed
    assert not lab.probe("other", "server", "TCP", 80)        # peer not allowed
    client, server = b.counters("app/client"), b.counters("app/server")
    assert client.egress[layout.STAT_REDIRECTED] >= 2        # same node: redirected
    assert server.ingress[layout.STAT_DROPPED] >= 1
    assert server.ingress[layout.STAT_ALLOWED] >= 2
    status = b.state("app/server")
    assert status.ingress.program_id == ids["ingress"][1]
    assert f"tcx/egress ifindex {ifindex}" in status.ingress.attach
    assert status.ingress.verified_insns > 0
    for name in world.ADDRESSES:
        b.detach(f"app/{name}")
    b.stop()


def test_same_hash_is_no_reload_and_new_hash_swaps_without_loss(lab, roots, received):
    v1, v2 = received
    b = backend(lab, roots)
    attach_all(b, lab, v1)
    before = b.link_ids("app/server")
    state, changed = b.attach(lab.endpoint("server"), v1["server"])
    assert not changed and b.link_ids("app/server") == before
    stream = lab.stream("client", "server", 80, 1500)
    time.sleep(0.3)
    state, changed = b.attach(lab.endpoint("server"), v2["server"])
    lost = int(stream.communicate(timeout=30)[0])
    assert changed and state.hash == v2["server"].hash
    after = b.link_ids("app/server")
    # Same links, new programs.
    assert [after[d][0] for d in layout.DIRECTIONS] == [before[d][0] for d in layout.DIRECTIONS]
    assert all(after[d][1] != before[d][1] for d in layout.DIRECTIONS)
    assert lost == 0, f"{lost} of 1500 datagrams lost while the program was swapped"
    assert lab.probe("client", "server", "TCP", 8080)         # the new policy is in force
    pod_dir = os.path.join(roots[0], "pods", "app_server_uid-server")
    assert sorted(os.listdir(pod_dir)) == ["egress", "ingress"]   # no _next left
    with open(os.path.join(roots[1], "pods", "app_server_uid-server", "meta.json")) as f:
        assert json.load(f)["hash"] == v2["server"].hash
    for name in world.ADDRESSES:
        b.detach(f"app/{name}")
    b.stop()


def test_same_hash_with_other_peers_updates_the_groups_without_a_reload(lab, roots, received):
    """Peers change while a pod's program stays (same hash): the node's
    group members change, the program is not reloaded, the counters stay."""
    v1, _ = received
    b = backend(lab, roots)
    attach_all(b, lab, v1)
    assert lab.probe("client", "server", "TCP", 80)
    before = b.link_ids("app/server")
    allowed = b.counters("app/server").ingress[layout.STAT_ALLOWED]
    assert allowed >= 1
    gid = world.group_of(v1["server"])
    assert b.update_groups([GroupChange(gid, (), replace=True)]) == 1
    state, changed = b.attach(lab.endpoint("server"), v1["server"])
    assert not changed and state.hash == v1["server"].hash and b.link_ids("app/server") == before
    assert not lab.probe("client", "server", "TCP", 80)         # the client is no peer now
    assert b.counters("app/server").ingress[layout.STAT_ALLOWED] == allowed
    b.update_groups(v1["server"].groups)
    assert lab.probe("client", "server", "TCP", 80)
    for name in world.ADDRESSES:
        b.detach(f"app/{name}")
    b.stop()


def test_rejected_program_leaves_the_old_one_in_force(lab, roots, received):
    b = backend(lab, roots)
    attach_all(b, lab, received[0])
    before = b.link_ids("app/server")
    from tailor.datapath.ebpf import isa
    bad_insns = dict(received[0]["server"].insns)
    # r0 = 0; r0 += 1; and no exit: the verifier refuses to fall off the end.
    bad_insns["ingress"] = isa.decode(bytes.fromhex("b700000000000000" "0700000001000000"))
    broken = dataclasses.replace(received[0]["server"], hash="broken", insns=bad_insns)
    with pytest.raises(base.AttachFailed) as e:
        b.attach(lab.endpoint("server"), broken)
    assert "app/server" in str(e.value) and "verifier" in str(e.value)
    assert b.link_ids("app/server") == before
    assert b.state("app/server").hash == received[0]["server"].hash
    assert not lab.probe("other", "server", "TCP", 80) and lab.probe("client", "server", "TCP", 80)
    assert not any(n.endswith("_next") for n in kernel_lab.tree(roots[0]))
    for name in world.ADDRESSES:
        b.detach(f"app/{name}")
    b.stop()


def test_detach_leaves_nothing(lab, roots, received):
    b = backend(lab, roots)
    pins, state = kernel_lab.tree(roots[0]), kernel_lab.tree(roots[1])
    links = kernel_lab.sh("ip", "-d", "-n", lab.node, "link", "show")
    attach_all(b, lab, received[0])
    assert kernel_lab.tree(roots[0]) != pins
    ids = b.link_ids("app/client")
    for name in world.ADDRESSES:
        assert b.detach(f"app/{name}")
    assert not b.detach("app/client")
    # The node's groups are the program source's to drop; dropped, none keeps a bit.
    b.update_groups([], full=True)
    with open(os.path.join(roots[1], "groups.json")) as f:
        assert json.load(f) == {"bits": {}, "wanted": []}
    assert kernel_lab.tree(roots[0]) == pins and kernel_lab.tree(roots[1]) == sorted(state + ["groups.json"])
    assert kernel_lab.sh("ip", "-d", "-n", lab.node, "link", "show") == links
    assert list(b.node_maps["endpoints4"].items()) == []
    shown = subprocess.run(["bpftool", "link", "show", "id", str(ids["egress"][0])],
                           capture_output=True, text=True)
    assert shown.returncode != 0                                # the link is gone
    assert lab.probe("other", "server", "TCP", 80)              # nothing enforces any more
    b.stop()


def test_restart_adopts_pinned_state(lab, roots, received):
    v1, v2 = received
    b = backend(lab, roots)
    attach_all(b, lab, v1)
    # A fourth pod whose interface will vanish while the agent is down.
    lab.pods["gone"] = "10.244.0.14"
    lab.ns["gone"], lab.host["gone"] = f"tlp-{TAG}-gone", "h-gone"
    lab.wire("gone", "10.244.0.14")
    gone = dataclasses.replace(v1["other"], name="gone", uid="uid-gone", addresses=("10.244.0.14",))
    b.attach(lab.endpoint("gone"), gone)
    ids = {n: b.link_ids(f"app/{n}") for n in world.ADDRESSES}
    crash(b)
    del b
    # No agent: the pinned links keep enforcing.
    assert lab.probe("client", "server", "TCP", 80) and not lab.probe("other", "server", "TCP", 80)
    lab.unwire("gone")
    kernel_lab.sh("ip", "netns", "del", lab.ns.pop("gone"))
    del lab.pods["gone"], lab.host["gone"]

    b2 = kb.KernelBackend("test", bpffs_root=roots[0], state_dir=roots[1], netns=lab.node)
    adopted = b2.start()
    assert sorted(a.state.key for a in adopted) == ["app/client", "app/other", "app/server"]
    assert {n: b2.link_ids(f"app/{n}") for n in world.ADDRESSES} == ids
    assert all(a.received is not None and a.received.hash == v1[a.state.name].hash for a in adopted)
    assert not os.path.exists(os.path.join(roots[0], "pods", "app_gone_uid-gone"))
    assert not os.path.exists(os.path.join(roots[1], "pods", "app_gone_uid-gone"))
    assert b2.node_maps["endpoints4"].lookup(layout.pack_addr("10.244.0.14")) is None
    assert lab.probe("client", "server", "TCP", 80) and not lab.probe("other", "server", "TCP", 80)
    assert b2.counters("app/client").egress[layout.STAT_REDIRECTED] >= 2   # counted across restart
    # Adopted pods take new programs and go away as usual.
    assert b2.attach(lab.endpoint("server"), v2["server"])[1]
    assert lab.probe("client", "server", "TCP", 8080)
    for name in world.ADDRESSES:
        assert b2.detach(f"app/{name}")
    assert kernel_lab.tree(os.path.join(roots[0], "pods")) == []
    b2.stop()


def _members_again_then_clean_up(b, lab, received) -> None:
    """The program source sends every group whole (as after a digest
    mismatch): the policy holds as applied; then everything is detached."""
    b.update_groups([c for name in world.ADDRESSES for c in received[name].groups], full=True)
    assert lab.probe("client", "server", "TCP", 80)
    assert not lab.probe("other", "server", "TCP", 80)
    for name in world.ADDRESSES:
        assert b.detach(f"app/{name}")
    b.stop()


def test_a_lost_numbering_comes_back_from_the_pods_programs(lab, roots, received):
    """groups.json gone while programs stay pinned: the bits each pod's
    programs were loaded with (its meta) number the node's groups again,
    members are read back with them, and no program needs reloading."""
    v1, _ = received
    b = backend(lab, roots)
    attach_all(b, lab, v1)
    links, legend = b.link_ids("app/server"), b.groups.legend()
    gid = world.group_of(v1["server"])
    crash(b)
    del b
    os.remove(os.path.join(roots[1], "groups.json"))
    b2 = kb.KernelBackend("test", bpffs_root=roots[0], state_dir=roots[1], netns=lab.node)
    assert {a.state.name for a in b2.start()} == set(world.ADDRESSES)
    assert b2.link_ids("app/server") == links and b2.groups.legend() == legend
    assert b2.groups.members(gid) == {world.ADDRESSES["client"]}
    assert lab.probe("client", "server", "TCP", 80)
    _members_again_then_clean_up(b2, lab, v1)


def test_programs_whose_bits_conflict_are_resolved_again(lab, roots, received):
    """A pod's recorded bit taken by another group in groups.json: its
    programs are resolved again to the registry's numbering and swapped in,
    links kept; identity map entries with bits nobody knows are rewritten."""
    v1, _ = received
    b = backend(lab, roots)
    attach_all(b, lab, v1)
    links = b.link_ids("app/server")
    gid = world.group_of(v1["server"])
    bit = b.groups.legend()[gid]
    crash(b)
    del b
    path = os.path.join(roots[1], "groups.json")
    with open(path, "w") as f:
        json.dump({"bits": {"p:someoneelse": bit}, "wanted": []}, f)
    b2 = kb.KernelBackend("test", bpffs_root=roots[0], state_dir=roots[1], netns=lab.node)
    b2.start()
    relinked = b2.link_ids("app/server")
    assert relinked["ingress"][0] == links["ingress"][0] and relinked["ingress"][1] != links["ingress"][1]
    assert b2.groups.legend()[gid] != bit
    _members_again_then_clean_up(b2, lab, v1)


def test_adoption_reads_group_members_from_the_pinned_maps(lab, roots, received):
    """Group members changed after the Apply live in the pinned identity
    maps: after a restart the node's groups are read back from them (and
    groups.json), numbering and members as they were."""
    v1, _ = received
    b = backend(lab, roots)
    attach_all(b, lab, v1)
    gid = world.group_of(v1["server"])
    assert b.groups.members(gid) == {world.ADDRESSES["client"]}
    b.update_groups([GroupChange(gid, remove=(world.ADDRESSES["client"],))])
    legend, digest = b.groups.legend(), b.groups_digest()
    crash(b)
    del b
    b2 = kb.KernelBackend("test", bpffs_root=roots[0], state_dir=roots[1], netns=lab.node)
    adopted = {a.state.name: a.received for a in b2.start()}
    assert set(adopted) == set(world.ADDRESSES)
    assert b2.groups.members(gid) == set() and b2.groups.legend() == legend
    assert b2.groups_digest() == digest
    assert not lab.probe("client", "server", "TCP", 80)
    b2.update_groups([GroupChange(gid, add=(world.ADDRESSES["client"],))])
    assert lab.probe("client", "server", "TCP", 80)
    for name in world.ADDRESSES:
        assert b2.detach(f"app/{name}")
    b2.stop()


class _Crash(BaseException):
    pass


def test_swap_cut_short_is_finished_on_adoption(lab, roots, received, monkeypatch):
    v1, v2 = received
    b = backend(lab, roots)
    attach_all(b, lab, v1)
    links = b.link_ids("app/server")

    def die(dirname):
        raise _Crash()
    monkeypatch.setattr(b, "_finish_swap", die)         # links switched, pins not yet moved
    with pytest.raises(_Crash):
        b.attach(lab.endpoint("server"), v2["server"])
    crash(b)
    b2 = kb.KernelBackend("test", bpffs_root=roots[0], state_dir=roots[1], netns=lab.node)
    b2.start()
    assert b2.state("app/server").hash == v2["server"].hash
    assert [b2.link_ids("app/server")[d][0] for d in layout.DIRECTIONS] == \
        [links[d][0] for d in layout.DIRECTIONS]
    assert not any(n.endswith("_next") for n in kernel_lab.tree(roots[0]))
    assert lab.probe("client", "server", "TCP", 8080)
    for name in world.ADDRESSES:
        b2.detach(f"app/{name}")
    b2.stop()


def test_trace_runs_scratch_copies(lab, roots, received):
    b = backend(lab, roots)
    attach_all(b, lab, received[0])
    ct = list(b.node_maps["ct4"].keys())
    ok = b.trace("app/client", "app/server", "TCP", 0, 80)
    assert ok.allowed and [s.verdict for s in ok.steps] == ["redirect", "pass", "redirect", "pass"]
    assert not b.trace("app/other", "10.244.0.12", "TCP", 0, 80).allowed
    assert not b.trace("app/client", "app/server", "UDP", 0, 81).allowed
    assert list(b.node_maps["ct4"].keys()) == ct          # the live conntrack is untouched
    assert b.counters("app/client").egress == (0, 0, 0)
    for name in world.ADDRESSES:
        b.detach(f"app/{name}")
    b.stop()


def test_no_fd_leaks_across_attach_detach_cycles(lab, roots, received):
    v1, v2 = received
    b = backend(lab, roots)
    attach_all(b, lab, v1)
    for name in world.ADDRESSES:
        b.detach(f"app/{name}")
    fds = kernel_lab.open_fds()
    for _ in range(3):
        attach_all(b, lab, v1)
        b.attach(lab.endpoint("server"), v2["server"])
        b.trace("app/client", "app/server", "TCP", 0, 80)
        for name in world.ADDRESSES:
            b.detach(f"app/{name}")
    assert kernel_lab.open_fds() == fds
    b.stop()
