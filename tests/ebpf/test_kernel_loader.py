"""The kernel loader against the real kernel: maps, programs, pins, test runs,
verifier errors, tcx and tc attachment, and fd hygiene.

Instructions are built by hand with `isa` so these tests depend on nothing
above the loader.
"""
from __future__ import annotations

import os
import struct
import subprocess
import time

import pytest

from tailor.datapath.ebpf import attach, errors, isa, kernel, maps

pytestmark = pytest.mark.kernel

I = isa.Insn


# --- tiny instruction helpers ------------------------------------------------

def mov_imm(dst, imm):
    return I(isa.ALU64 | isa.MOV | isa.K, dst=dst, imm=imm)


def mov_reg(dst, src):
    return I(isa.ALU64 | isa.MOV | isa.X, dst=dst, src=src)


def exit_():
    return I(isa.JMP | isa.EXIT)


def ld_map(dst, name):
    return I(isa.LD | isa.IMM | isa.DW, dst=dst, src=isa.PSEUDO_MAP_FD, ref=name)


RETURN_2 = [mov_imm(0, 2), exit_()]


def count_in(map_name: str, retval: int = 0) -> list[isa.Insn]:
    """value[0] += 1 in array map `map_name`; return `retval`."""
    return [
        ld_map(1, map_name),
        I(isa.ST | isa.MEM | isa.W, dst=isa.FP, off=-4, imm=0),   # key 0 on the stack
        mov_reg(2, isa.FP),
        I(isa.ALU64 | isa.ADD | isa.K, dst=2, imm=-4),
        I(isa.JMP | isa.CALL, imm=1),                              # map_lookup_elem
        I(isa.JMP | isa.JEQ | isa.K, dst=0, off=3, imm=0),
        I(isa.LDX | isa.MEM | isa.W, dst=1, src=0),
        I(isa.ALU64 | isa.ADD | isa.K, dst=1, imm=1),
        I(isa.STX | isa.MEM | isa.W, dst=0, src=1),
        mov_imm(0, retval),
        exit_(),
    ]


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


PACKET = bytes.fromhex("020000000002" "020000000001" "0800") + bytes(range(50))  # 64 bytes


# --- fixtures -----------------------------------------------------------------

@pytest.fixture
def pin_dir():
    path = f"{kernel.BPFFS_ROOT}/tailor-test-{os.getpid()}"
    kernel.ensure_dir(path)
    yield path
    kernel.remove_tree(path)


def _run(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _ifindex(name, netns=None):
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-o", "link", "show", name]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.split(":", 1)[0])


@pytest.fixture
def veth():
    """A fresh netns holding a pod-side veth `eth0` (10.199.0.1/24), whose
    host-side peer stays in our netns, as the CNI wires a pod."""
    ns = f"tailor-test-{os.getpid()}"
    host = f"tlr{os.getpid() % 10**8}"
    _run("ip", "netns", "add", ns)
    try:
        _run("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", host, "up")
        _run("ip", "-n", ns, "addr", "add", "10.199.0.1/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        yield {"netns": ns, "host": host, "host_ifindex": _ifindex(host),
               "pod_ifindex": _ifindex("eth0", ns)}
    finally:
        subprocess.run(["ip", "link", "del", host], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


_SEND_FRAME = """
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
s.send(bytes.fromhex("ffffffffffff020000000001") + b"\\x88\\xb5" + bytes(50))
"""


def _send_from_pod(ns):
    """Send one Ethernet frame out of the pod's eth0 (no ping on this image)."""
    subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", _SEND_FRAME], check=True)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- maps -----------------------------------------------------------------------

def test_hash_map_crud_and_iterate():
    spec = maps.MapSpec("tailor_hash", maps.MapType.HASH, 4, 8, 16)
    with kernel.KernelMap.create(spec) as m:
        assert m.lookup(u32(1)) is None
        m.update(u32(1), b"a" * 8)
        m.update(u32(2), b"b" * 8)
        assert m.lookup(u32(1)) == b"a" * 8
        m.update(u32(1), b"c" * 8, maps.BPF_EXIST)
        with pytest.raises(errors.KernelError) as e:
            m.update(u32(2), b"x" * 8, maps.BPF_NOEXIST)
        assert "tailor_hash" in str(e.value) and e.value.errno == 17   # EEXIST
        assert dict(m.items()) == {u32(1): b"c" * 8, u32(2): b"b" * 8}
        assert sorted(m.keys()) == [u32(1), u32(2)]
        assert m.delete(u32(1)) is True
        assert m.delete(u32(1)) is False
        assert list(m.keys()) == [u32(2)]


def test_wrong_sizes_name_the_map():
    with kernel.KernelMap.create(maps.MapSpec("sized", maps.MapType.HASH, 4, 8, 4)) as m:
        with pytest.raises(ValueError, match="sized.*key is 3 bytes"):
            m.lookup(b"abc")
        with pytest.raises(ValueError, match="sized.*value is 2 bytes"):
            m.update(u32(0), b"ab")


def test_array_map():
    with kernel.KernelMap.create(maps.MapSpec("arr", maps.MapType.ARRAY, 4, 4, 3)) as m:
        assert dict(m.items()) == {u32(i): u32(0) for i in range(3)}   # arrays are always full
        m.update(u32(2), u32(7))
        assert m.lookup(u32(2)) == u32(7)
        assert m.lookup(u32(3)) is None                                  # past the end
        with pytest.raises(errors.KernelError, match="arr"):
            m.delete(u32(0))                                             # EINVAL on arrays


def test_lru_hash_evicts_within_max_entries():
    spec = maps.MapSpec("lru", maps.MapType.LRU_HASH, 4, 4, 32)
    with kernel.KernelMap.create(spec) as m:
        for i in range(200):
            m.update(u32(i), u32(i))
        keys = list(m.keys())
        assert 0 < len(keys) <= 32
        assert m.lookup(u32(199)) == u32(199)          # the newest survives


def test_lpm_trie_longest_prefix():
    spec = maps.MapSpec("lpm", maps.MapType.LPM_TRIE, 8, 4, 16, flags=maps.F_NO_PREALLOC)

    def key(prefixlen, addr):
        return struct.pack("<I", prefixlen) + bytes(int(x) for x in addr.split("."))

    with kernel.KernelMap.create(spec) as m:
        m.update(key(8, "10.0.0.0"), u32(8))
        m.update(key(24, "10.1.2.0"), u32(24))
        m.update(key(0, "0.0.0.0"), u32(0))
        assert m.lookup(key(32, "10.1.2.3")) == u32(24)
        assert m.lookup(key(32, "10.9.9.9")) == u32(8)
        assert m.lookup(key(32, "192.168.0.1")) == u32(0)
        assert len(list(m.keys())) == 3
        assert m.delete(key(0, "0.0.0.0"))
        assert m.lookup(key(32, "192.168.0.1")) is None


def test_percpu_array_values_per_cpu():
    spec = maps.MapSpec("pcpu", maps.MapType.PERCPU_ARRAY, 4, 4, 2)
    with kernel.KernelMap.create(spec) as m:
        ncpu = len(m.lookup(u32(0)))
        assert ncpu >= 1 and m.lookup(u32(0)) == [u32(0)] * ncpu
        m.update(u32(1), u32(5))                                  # one value for every CPU
        assert m.lookup(u32(1)) == [u32(5)] * ncpu
        m.update(u32(1), [u32(i) for i in range(ncpu)])
        assert m.lookup(u32(1)) == [u32(i) for i in range(ncpu)]
        with pytest.raises(ValueError, match="pcpu"):
            m.update(u32(1), [u32(1)] * (ncpu + 1))


# --- pins --------------------------------------------------------------------------

def test_pin_and_reopen_map(pin_dir):
    spec = maps.MapSpec("pinned_map", maps.MapType.HASH, 4, 4, 8)
    path = f"{pin_dir}/maps/pinned_map"
    with kernel.KernelMap.create(spec) as m:
        m.update(u32(1), u32(42))
        m.pin(path)
    with kernel.KernelMap.open_pinned(path, name="pinned_map") as again:
        assert again.spec == spec
        assert again.lookup(u32(1)) == u32(42)
    assert kernel.unpin(path) and not kernel.unpin(path)


def test_pin_and_reopen_program(pin_dir):
    path = f"{pin_dir}/prog"
    with kernel.KernelProgram.load(RETURN_2, name="pinned_prog") as p:
        prog_id = p.info().id
        p.pin(path)
    with kernel.KernelProgram.open_pinned(path) as again:
        assert again.info().id == prog_id
        assert again.test_run(PACKET).retval == 2
    with pytest.raises(errors.KernelError, match="pinned as a bpf prog, not a map"):
        kernel.KernelMap.open_pinned(path)


def test_bpffs_helpers(tmp_path, pin_dir):
    assert kernel.is_bpffs_mounted()
    assert not kernel.is_bpffs_mounted(str(tmp_path))
    with pytest.raises(errors.KernelError, match="mount -t bpf"):
        kernel.ensure_dir(str(tmp_path / "x"))
    deep = kernel.ensure_dir(f"{pin_dir}/a/b/c")
    assert os.path.isdir(deep)


# --- programs -----------------------------------------------------------------------

def test_load_and_test_run():
    with kernel.KernelProgram.load(RETURN_2, name="return-2") as p:
        run = p.test_run(PACKET, repeat=10)
        assert run.retval == 2
        assert run.data == PACKET
        assert run.duration_ns >= 0
        info = p.info()
        assert info.name == "return_2"          # the kernel allows no '-'
        assert len(info.tag) == 16 and info.type == kernel.SCHED_CLS
        assert info.xlated_len == 16 and info.jited_len > 0 and info.verified_insns >= 2
        with kernel.KernelProgram.from_id(info.id) as same:
            assert same.info().tag == info.tag


def test_test_run_skb_context():
    read_mark = [I(isa.LDX | isa.MEM | isa.W, dst=0, src=1, off=8), exit_()]
    write_mark = [I(isa.ST | isa.MEM | isa.W, dst=1, off=8, imm=42), mov_imm(0, 0), exit_()]
    ctx = kernel.SkbCtx(mark=5, priority=6, cb=(1, 2, 3, 4, 5))
    with kernel.KernelProgram.load(read_mark) as p:
        run = p.test_run(PACKET, ctx=ctx)
        assert run.retval == 5
        assert run.skb.priority == 6 and run.skb.cb == (1, 2, 3, 4, 5)
        assert run.skb.ifindex == 1 and run.skb.wire_len == len(PACKET)   # loopback
    with kernel.KernelProgram.load(write_mark) as p:
        assert p.test_run(PACKET, ctx=ctx).skb.mark == 42


# What BPF_PROG_TEST_RUN shows a tc program, for the VM to match. The packet
# appears on the caller netns' loopback (ifindex 1, MAC 00:00:00:00:00:00), so
# eth_type_trans makes a unicast to another MAC PACKET_OTHERHOST (3), one to
# 00:..:00 PACKET_HOST (0), and ff:..:ff PACKET_MULTICAST (2): lo's broadcast
# address is all zeros, so it is not "broadcast" there.
@pytest.mark.parametrize("field, offset, dst_mac, expected", [
    ("len", 0, "020000000002", 64),
    ("pkt_type", 4, "020000000002", 3),
    ("pkt_type", 4, "000000000000", 0),
    ("pkt_type", 4, "ffffffffffff", 2),
    ("protocol", 16, "020000000002", 0x0008),     # network byte order: htons(0x0800)
    ("ifindex", 40, "020000000002", 1),
    ("ingress_ifindex", 36, "020000000002", 0),
    ("hash", 68, "020000000002", 0),
    ("wire_len", 160, "020000000002", 64),
])
def test_run_skb_fields_as_the_kernel_sets_them(field, offset, dst_mac, expected):
    read = [I(isa.LDX | isa.MEM | isa.W, dst=0, src=1, off=offset), exit_()]
    with kernel.KernelProgram.load(read, name=field) as p:
        assert p.test_run(bytes.fromhex(dst_mac) + PACKET[6:]).retval == expected


def test_run_packet_pointers_span_the_frame():
    data_len = [I(isa.LDX | isa.MEM | isa.W, dst=2, src=1, off=76),    # data
                I(isa.LDX | isa.MEM | isa.W, dst=0, src=1, off=80),    # data_end
                I(isa.ALU64 | isa.SUB | isa.X, dst=0, src=2), exit_()]
    with kernel.KernelProgram.load(data_len) as p:
        assert p.test_run(PACKET).retval == len(PACKET)          # from the Ethernet header


def test_program_using_a_map():
    spec = maps.MapSpec("counter", maps.MapType.ARRAY, 4, 4, 1)
    with kernel.KernelMap.create(spec) as m:
        with kernel.KernelProgram.load(count_in("m", retval=1), {"m": m}) as p:
            assert p.test_run(PACKET).retval == 1
            p.test_run(PACKET, repeat=9)
        assert m.lookup(u32(0)) == u32(10)


def test_missing_map_is_named():
    with pytest.raises(errors.KernelError, match="'m'.*maps="):
        kernel.KernelProgram.load(count_in("m"), {})


@pytest.mark.parametrize("insns, reason", [
    ([exit_()], "R0 !read_ok"),
    ([mov_reg(0, 2), exit_()], "R2 !read_ok"),
])
def test_verifier_rejection_carries_reason_and_log(insns, reason):
    with pytest.raises(errors.VerifierError) as e:
        kernel.KernelProgram.load(insns, name="bad")
    assert reason in str(e.value) and "'bad'" in str(e.value)
    assert reason in e.value.log and "processed" in e.value.log
    assert e.value.errno == 13    # EACCES


def test_log_level_keeps_log_of_good_program():
    with kernel.KernelProgram.load(RETURN_2, log_level=2) as p:
        assert "processed 2 insns" in p.log


# --- attachment ---------------------------------------------------------------------

def test_tcx_attach_info_pin_detach(veth, pin_dir):
    spec = maps.MapSpec("seen", maps.MapType.ARRAY, 4, 4, 1)
    with kernel.KernelMap.create(spec) as m, \
            kernel.KernelProgram.load(count_in("m"), {"m": m}, name="tcx_test") as p:
        link = attach.attach_tcx(p, veth["host_ifindex"], "ingress")
        info = link.info()
        assert info.ifindex == veth["host_ifindex"] and info.direction == "ingress"
        assert info.prog_id == p.info().id and info.id == link.id > 0

        _send_from_pod(veth["netns"])
        seen = struct.unpack("<I", m.lookup(u32(0)))[0]
        assert seen > 0                                  # packets ran through the program

        link.pin(f"{pin_dir}/link")
        link.close()                                     # the pin keeps it attached
        with attach.Link.open_pinned(f"{pin_dir}/link") as again:
            assert again.info().ifindex == veth["host_ifindex"]
            again.detach()
            assert again.info().ifindex == 0             # defunct after detach
        kernel.unpin(f"{pin_dir}/link")

        before = struct.unpack("<I", m.lookup(u32(0)))[0]
        _send_from_pod(veth["netns"])
        time.sleep(0.1)
        assert struct.unpack("<I", m.lookup(u32(0)))[0] == before


def test_tcx_attach_inside_a_netns(veth):
    with kernel.KernelProgram.load(RETURN_2) as p:
        with attach.attach_tcx(p, veth["pod_ifindex"], "egress", netns=veth["netns"]) as link:
            info = link.info()
            assert info.direction == "egress" and info.ifindex == veth["pod_ifindex"]


def test_attach_prefers_tcx(veth):
    with kernel.KernelProgram.load(RETURN_2) as p:
        with attach.attach(p, veth["host_ifindex"], "egress") as link:
            assert isinstance(link, attach.Link)


def test_tc_fallback_attach_detach(veth):
    ns, idx = veth["netns"], veth["pod_ifindex"]
    with kernel.KernelProgram.load(RETURN_2, name="tc_test") as p:
        filt = attach.attach_tc(p, idx, "egress", netns=ns)
        attach.attach_tc(p, idx, "egress", netns=ns)     # replacing is idempotent
        assert [f["name"] for f in attach.tc_filters(idx, "egress", netns=ns)] == ["tc_test"]
        assert attach.tc_filters(idx, "ingress", netns=ns) == []
    # The filter holds its own reference: closing our fd leaves it attached.
    assert len(attach.tc_filters(idx, "egress", netns=ns)) == 1
    filt.detach()
    assert attach.tc_filters(idx, "egress", netns=ns) == []
    assert attach.detach_tc(idx, "egress", netns=ns) is False


def test_bad_direction():
    with kernel.KernelProgram.load(RETURN_2) as p:
        with pytest.raises(ValueError, match="ingress' or 'egress"):
            attach.attach_tcx(p, 1, "sideways")


# --- fd hygiene -------------------------------------------------------------------------

def test_no_fd_leaks(veth, pin_dir):
    def cycle():
        spec = maps.MapSpec("leak", maps.MapType.ARRAY, 4, 4, 1)
        with kernel.KernelMap.create(spec) as m:
            with kernel.KernelProgram.load(count_in("m"), {"m": m}) as p:
                p.test_run(PACKET)
                p.pin(f"{pin_dir}/p")
                with attach.attach_tcx(p, veth["host_ifindex"], "ingress") as link:
                    link.info()
                    link.detach()
            with kernel.KernelProgram.open_pinned(f"{pin_dir}/p"):
                pass
            with pytest.raises(errors.KernelError):
                kernel.KernelMap.open_pinned(f"{pin_dir}/p")     # wrong kind: fd closed
            kernel.unpin(f"{pin_dir}/p")
        with pytest.raises(errors.VerifierError):
            kernel.KernelProgram.load([exit_()])

    cycle()                     # warm up: libbpf's feature probes, lazy imports
    before = _open_fds()
    for _ in range(3):
        cycle()
    assert _open_fds() == before
