"""The userspace VM's maps (userspace and program semantics of each map
type) and helpers (redirects, clocks, packet bytes, checksums), and a
Program reused across runs. Programs are hand-assembled with vm_asm so these
tests need nothing else."""
from __future__ import annotations

import errno
import struct

import pytest

from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.errors import KernelError, VmError
from tailor.datapath.ebpf.maps import (BPF_EXIST, BPF_NOEXIST, F_NO_PREALLOC,
                                       MapSpec, MapType)
from tailor.datapath.ebpf.vm import MapError, Program, VmMap, run
from tailor.datapath.ebpf.vm import helpers as H

from vm_asm import EXIT, M32, PKT, alu, atomic, call, jmp, ld64, ldx, mov64, movr, st


# --- maps --------------------------------------------------------------------------

def spec(type_, key=4, value=8, entries=4, name="m"):
    flags = F_NO_PREALLOC if type_ == MapType.LPM_TRIE else 0
    return MapSpec(name, type_, key, value, entries, flags)


def key_on_stack(value: int, off=-8):
    return [st(isa.W, 10, off, value), movr(2, 10), alu(isa.ADD, 2, imm=off)]


def lookup_prog(key: int, name="m"):
    """r0 = 1 + first u32 of the value, or 0 on a miss."""
    return [*key_on_stack(key), ld64(1, 0, src=isa.PSEUDO_MAP_FD, ref=name),
            call(H.Helper.map_lookup_elem), jmp(isa.JEQ, 0, 2, imm=0),
            ldx(isa.W, 0, 0, 0), alu(isa.ADD, 0, imm=1), EXIT]


def test_hash_map_userspace_semantics():
    m = VmMap.create(spec(MapType.HASH, entries=2))
    k = lambda i: struct.pack("<I", i)
    v = lambda i: struct.pack("<Q", i)
    m.update(k(1), v(10))
    with pytest.raises(MapError) as exc:
        m.update(k(1), v(11), BPF_NOEXIST)
    assert exc.value.errno == errno.EEXIST and isinstance(exc.value, KernelError)
    with pytest.raises(MapError, match="ENOENT"):
        m.update(k(2), v(11), BPF_EXIST)
    m.update(k(2), v(20))
    with pytest.raises(MapError, match="E2BIG"):
        m.update(k(3), v(30))
    m.update(k(2), v(21))                    # replacing when full is fine
    assert m.lookup(k(2)) == v(21) and m.lookup(k(3)) is None
    assert sorted(m.keys()) == [k(1), k(2)]
    assert m.delete(k(1)) and not m.delete(k(1))
    assert m.items() == [(k(2), v(21))]
    with pytest.raises(MapError, match="EINVAL"):
        m.update(k(5), v(1), 4)
    with pytest.raises(ValueError):
        m.update(b"12", v(1))


def test_program_lookup_update_delete_and_write_through():
    m = VmMap.create(spec(MapType.HASH))
    m.update(struct.pack("<I", 7), struct.pack("<Q", 41))
    prog = [*key_on_stack(7), ld64(1, 0, src=isa.PSEUDO_MAP_FD, ref="m"),
            call(H.Helper.map_lookup_elem), jmp(isa.JEQ, 0, 3, imm=0),
            mov64(1, 1), atomic(isa.DW, isa.ATOMIC_OPS["add"], 0, 1, 0),
            st(isa.W, 0, 4, 2),
            # update key 8 from the stack, then delete key 7
            *key_on_stack(8), st(isa.DW, 10, -16, 5), movr(3, 10), alu(isa.ADD, 3, imm=-16),
            ld64(1, 0, src=isa.PSEUDO_MAP_FD, ref="m"), mov64(4, BPF_NOEXIST),
            call(H.Helper.map_update_elem), movr(6, 0),
            *key_on_stack(7), ld64(1, 0, src=isa.PSEUDO_MAP_FD, ref="m"),
            call(H.Helper.map_delete_elem), alu(isa.ADD, 0, src=6), EXIT]
    assert run(prog, PKT, maps={"m": m}).retval == 0
    assert m.lookup(struct.pack("<I", 7)) is None
    assert m.lookup(struct.pack("<I", 8)) == struct.pack("<Q", 5)
    m.update(struct.pack("<I", 9), struct.pack("<Q", 1))
    # lookup hit writes through, seen from userspace
    m2 = VmMap.create(spec(MapType.HASH))
    m2.update(struct.pack("<I", 7), struct.pack("<Q", 41))
    run(prog[:12] + [mov64(0, 0), EXIT], PKT, maps={"m": m2})
    assert m2.lookup(struct.pack("<I", 7)) == struct.pack("<II", 42, 2)
    # update of an existing key with NOEXIST returns -EEXIST to the program
    assert run(prog, PKT, maps={"m": m}).retval == (-errno.EEXIST - errno.ENOENT) & M32


def test_map_lookup_miss_is_null():
    m = VmMap.create(spec(MapType.HASH))
    assert run(lookup_prog(3), PKT, maps={"m": m}).retval == 0
    with pytest.raises(VmError, match="null"):
        run([*key_on_stack(3), ld64(1, 0, src=isa.PSEUDO_MAP_FD, ref="m"),
             call(H.Helper.map_lookup_elem), ldx(isa.W, 0, 0, 0), EXIT], PKT, maps={"m": m})


def test_helper_clobbers_r1_to_r5():
    m = VmMap.create(spec(MapType.HASH))
    with pytest.raises(VmError, match="R2 !read_ok"):
        run([*key_on_stack(3), ld64(1, 0, src=isa.PSEUDO_MAP_FD, ref="m"),
             call(H.Helper.map_lookup_elem), movr(0, 2), EXIT], PKT, maps={"m": m})


def test_map_key_from_uninitialised_stack():
    m = VmMap.create(spec(MapType.HASH))
    with pytest.raises(VmError, match="stack"):
        run([movr(2, 10), alu(isa.ADD, 2, imm=-8), ld64(1, 0, src=isa.PSEUDO_MAP_FD, ref="m"),
             call(H.Helper.map_lookup_elem), EXIT], PKT, maps={"m": m})


def test_array_map():
    m = VmMap.create(spec(MapType.ARRAY, entries=3))
    assert m.lookup(struct.pack("<I", 2)) == bytes(8)
    assert m.lookup(struct.pack("<I", 3)) is None
    with pytest.raises(MapError, match="E2BIG"):
        m.update(struct.pack("<I", 3), bytes(8))
    with pytest.raises(MapError, match="EEXIST"):
        m.update(struct.pack("<I", 1), bytes(8), BPF_NOEXIST)
    with pytest.raises(MapError, match="EINVAL"):
        m.delete(struct.pack("<I", 1))
    m.update(struct.pack("<I", 1), struct.pack("<Q", 4), BPF_EXIST)
    assert len(m.items()) == 3
    assert run(lookup_prog(1), PKT, maps={"m": m}).retval == 5
    assert run(lookup_prog(3), PKT, maps={"m": m}).retval == 0


def test_array_direct_value_access():
    m = VmMap.create(spec(MapType.ARRAY, entries=1))
    prog = [ld64(1, 4 << 32, src=isa.PSEUDO_MAP_VALUE, ref="m"), st(isa.W, 1, 0, 77),
            mov64(0, 0), EXIT]
    run(prog, PKT, maps={"m": m})
    assert m.lookup(bytes(4)) == bytes(4) + struct.pack("<I", 77)


def test_lru_hash_evicts_least_recently_used():
    m = VmMap.create(spec(MapType.LRU_HASH, entries=2))
    k = lambda i: struct.pack("<I", i)
    m.update(k(1), bytes(8))
    m.update(k(2), bytes(8))
    run(lookup_prog(1), PKT, maps={"m": m})      # program lookup marks 1 used
    m.lookup(k(2))                               # userspace lookup does not
    m.update(k(3), bytes(8))
    assert sorted(m.keys()) == [k(1), k(3)]


def test_lpm_trie_longest_match():
    m = VmMap.create(spec(MapType.LPM_TRIE, key=8, value=4, entries=3))
    key = lambda plen, ip: struct.pack("<I", plen) + bytes(ip)
    m.update(key(8, [10, 0, 0, 0]), struct.pack("<I", 8))
    m.update(key(24, [10, 1, 2, 99]), struct.pack("<I", 24))   # host bits ignored
    m.update(key(0, [0, 0, 0, 0]), struct.pack("<I", 0))
    assert m.lookup(key(32, [10, 1, 2, 3])) == struct.pack("<I", 24)
    assert m.lookup(key(32, [10, 1, 3, 3])) == struct.pack("<I", 8)
    assert m.lookup(key(32, [11, 1, 2, 3])) == struct.pack("<I", 0)
    assert m.lookup(key(16, [10, 1, 2, 3])) == struct.pack("<I", 8)   # /16 key: no /24
    with pytest.raises(MapError, match="ENOSPC"):
        m.update(key(16, [10, 1, 0, 0]), bytes(4))
    with pytest.raises(MapError, match="EINVAL"):
        m.update(key(33, [0, 0, 0, 0]), bytes(4))
    assert m.delete(key(24, [10, 1, 2, 0]))
    assert m.lookup(key(32, [10, 1, 2, 3])) == struct.pack("<I", 8)
    # from a program: key = prefixlen 32 + 10.1.3.3 on the stack
    prog = [st(isa.W, 10, -8, 32), st(isa.W, 10, -4, int.from_bytes(bytes([10, 1, 3, 3]), "little")),
            movr(2, 10), alu(isa.ADD, 2, imm=-8), ld64(1, 0, src=isa.PSEUDO_MAP_FD, ref="m"),
            call(H.Helper.map_lookup_elem), jmp(isa.JEQ, 0, 1, imm=0), ldx(isa.W, 0, 0, 0), EXIT]
    assert run(prog, PKT, maps={"m": m}).retval == 8


@pytest.mark.parametrize("type_", [MapType.PERCPU_ARRAY, MapType.PERCPU_HASH])
def test_percpu_maps(type_):
    m = VmMap.create(spec(type_), ncpus=3)
    k = struct.pack("<I", 1)
    if type_ == MapType.PERCPU_HASH:
        assert m.lookup(k) is None
        m.update(k, struct.pack("<Q", 9))
    else:
        m.update(k, [struct.pack("<Q", i + 9) for i in range(3)])
    prog = [*key_on_stack(1), ld64(1, 0, src=isa.PSEUDO_MAP_FD, ref="m"),
            call(H.Helper.map_lookup_elem), mov64(1, 1),
            atomic(isa.DW, isa.ATOMIC_OPS["add"], 0, 1, 0), mov64(0, 0), EXIT]
    run(prog, PKT, maps={"m": m})
    got = m.lookup(k)
    assert len(got) == 3 and got[0] == struct.pack("<Q", 10)   # the VM is CPU 0
    assert VmMap.create(spec(type_)).ncpus >= 1


# --- helpers -------------------------------------------------------------------------

def test_redirect_codes():
    res = run([mov64(1, 5), mov64(2, 1), call(H.Helper.redirect), EXIT], PKT)
    assert res.retval == 7 and res.redirect == (5, 1, False)
    res = run([mov64(1, 5), mov64(2, 2), call(H.Helper.redirect), EXIT], PKT)
    assert res.retval == 2 and res.redirect is None
    res = run([mov64(1, 6), mov64(2, 0), call(H.Helper.redirect_peer), EXIT], PKT)
    assert res.retval == 7 and res.redirect == (6, 0, True)
    res = run([mov64(1, 6), mov64(2, 1), call(H.Helper.redirect_peer), EXIT], PKT)
    assert res.retval == 2
    # a recorded target without returning TC_ACT_REDIRECT is no redirect
    res = run([mov64(1, 5), mov64(2, 0), call(H.Helper.redirect), mov64(0, 0), EXIT], PKT)
    assert res.redirect is None


def test_ktime_prandom_cpu():
    prog = [call(H.Helper.ktime_get_ns), EXIT]
    assert run(prog, PKT, ktime_ns=123).retval == 123
    rnd = [call(H.Helper.get_prandom_u32), EXIT]
    assert run(rnd, PKT, prandom_seed=1).retval == run(rnd, PKT, prandom_seed=1).retval
    assert run([call(H.Helper.get_smp_processor_id), EXIT], PKT).retval == 0


def test_skb_load_and_store_bytes():
    prog = [movr(6, 1),
            mov64(2, 10), movr(3, 10), alu(isa.ADD, 3, imm=-8), mov64(4, 4),
            call(H.Helper.skb_load_bytes), movr(7, 0),
            movr(1, 6), mov64(2, 0), movr(3, 10), alu(isa.ADD, 3, imm=-8), mov64(4, 4),
            mov64(5, 0), call(H.Helper.skb_store_bytes), alu(isa.ADD, 0, src=7), EXIT]
    res = run(prog, PKT)
    assert res.retval == 0 and res.packet == PKT[10:14] + PKT[4:]
    # out of range
    bad = [mov64(2, 62), movr(3, 10), alu(isa.ADD, 3, imm=-8), mov64(4, 4),
           call(H.Helper.skb_load_bytes), EXIT]
    assert run(bad, PKT).retval == (-errno.EFAULT) & M32
    bad_flags = [st(isa.W, 10, -4, 0), mov64(2, 0), movr(3, 10), alu(isa.ADD, 3, imm=-4),
                 mov64(4, 4), mov64(5, 4), call(H.Helper.skb_store_bytes), EXIT]
    assert run(bad_flags, PKT).retval == (-errno.EINVAL) & M32


def test_packet_pointers_invalidated_by_store_bytes():
    prog = [ldx(isa.W, 7, 1, 76), st(isa.W, 10, -4, 0), mov64(2, 0), movr(3, 10),
            alu(isa.ADD, 3, imm=-4), mov64(4, 4), mov64(5, 0),
            call(H.Helper.skb_store_bytes), ldx(isa.B, 0, 7, 0), EXIT]
    with pytest.raises(VmError, match="invalidated"):
        run(prog, PKT)


def ip_checksum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_packet(dst=(10, 0, 0, 2)):
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 1, 0, 64, 17, 0,
                                bytes([10, 0, 0, 1]), bytes(dst)))
    struct.pack_into("!H", hdr, 10, ip_checksum(bytes(hdr)))
    return bytes(12) + b"\x08\x00" + bytes(hdr)


def test_l3_csum_replace_4_keeps_header_valid():
    pkt = ipv4_packet()
    new_dst = bytes([192, 168, 7, 9])
    old_le = int.from_bytes(pkt[30:34], "little")
    new_le = int.from_bytes(new_dst, "little")
    prog = [movr(6, 1),
            ld64(3, old_le), ld64(4, new_le), mov64(2, 24), mov64(5, 4),
            call(H.Helper.l3_csum_replace), movr(7, 0),
            st(isa.W, 10, -4, new_le if new_le < 1 << 31 else new_le - (1 << 32)),
            movr(1, 6), mov64(2, 30), movr(3, 10), alu(isa.ADD, 3, imm=-4), mov64(4, 4),
            mov64(5, 0), call(H.Helper.skb_store_bytes), alu(isa.ADD, 0, src=7), EXIT]
    res = run(prog, pkt)
    assert res.retval == 0
    assert res.packet[30:34] == new_dst
    assert ip_checksum(res.packet[14:34]) == 0


def test_csum_replace_arithmetic_matches_recomputation():
    hdr = bytearray(ipv4_packet()[14:34])
    field = int.from_bytes(hdr[10:12], "little")
    old = int.from_bytes(hdr[12:16], "little")
    hdr[12:16] = bytes([172, 16, 0, 1])
    new = int.from_bytes(hdr[12:16], "little")
    hdr[10:12] = H.csum_replace4(field, old, new).to_bytes(2, "little")
    assert ip_checksum(bytes(hdr)) == 0
    # replace2 on the TTL/protocol word
    old2 = int.from_bytes(hdr[8:10], "little")
    field = int.from_bytes(hdr[10:12], "little")
    hdr[8] = 63
    hdr[10:12] = H.csum_replace2(field, old2, int.from_bytes(hdr[8:10], "little")).to_bytes(2, "little")
    assert ip_checksum(bytes(hdr)) == 0


def test_l4_csum_replace_flags():
    pkt = bytearray(ipv4_packet())
    udp = 34
    pkt += struct.pack("!HHHH", 1000, 53, 8, 0)     # UDP checksum 0: "none"
    prog = lambda flags: [mov64(2, udp + 6), mov64(3, 0), mov64(4, 0x1234), mov64(5, flags),
                          call(H.Helper.l4_csum_replace), EXIT]
    res = run(prog(H.BPF_F_MARK_MANGLED_0 | H.BPF_F_PSEUDO_HDR), bytes(pkt))
    assert res.retval == 0 and res.packet[udp + 6:udp + 8] == b"\0\0"   # left alone
    res = run(prog(H.BPF_F_PSEUDO_HDR), bytes(pkt))
    assert res.retval == 0 and res.packet[udp + 6:udp + 8] != b"\0\0"
    assert run(prog(1 << 10), bytes(pkt)).retval == (-errno.EINVAL) & M32
    odd = [mov64(2, 35), mov64(3, 0), mov64(4, 0), mov64(5, 0), call(H.Helper.l4_csum_replace), EXIT]
    assert run(odd, bytes(pkt)).retval == (-errno.EFAULT) & M32
    # the arithmetic can produce 0, which MANGLED_0 then writes as 0xffff
    assert H.csum_replace_by_diff(0xFFFF, 0) == 0


def test_csum_diff_values():
    # checksum over a buffer, folded: csum_diff(NULL, 0, buf, 4, 0)
    prog = [st(isa.W, 10, -4, 0x04030201), mov64(1, 0), mov64(2, 0), movr(3, 10),
            alu(isa.ADD, 3, imm=-4), mov64(4, 4), mov64(5, 0), call(H.Helper.csum_diff), EXIT]
    assert run(prog, PKT).retval == (0x0201 + 0x0403)
    bad = [mov64(1, 0), mov64(2, 0), movr(3, 10), mov64(4, 3), mov64(5, 0),
           call(H.Helper.csum_diff), EXIT]
    assert run(bad, PKT).retval == (-errno.EINVAL) & M32
    empty = lambda seed: [mov64(1, 0), mov64(2, 0), mov64(3, 0), mov64(4, 0), ld64(5, seed),
                          call(H.Helper.csum_diff), EXIT]
    assert run(empty(77), PKT).retval == 77
    assert run(empty(0x1012F837), PKT).retval == 0x084A    # folded, as on 6.18


def test_program_reuse_resets_state():
    m = VmMap.create(spec(MapType.ARRAY))
    prog = Program([*key_on_stack(0), ld64(1, 0, src=isa.PSEUDO_MAP_FD, ref="m"),
                    call(H.Helper.map_lookup_elem), jmp(isa.JEQ, 0, 3, imm=0),
                    mov64(1, 1), atomic(isa.DW, isa.ATOMIC_OPS["add"], 0, 1, 0),
                    mov64(0, 1), EXIT], {"m": m})
    for _ in range(3):
        assert prog.run(PKT).retval == 1
    assert m.lookup(bytes(4)) == struct.pack("<Q", 3)


def test_missing_map_is_a_compile_error():
    with pytest.raises(VmError, match="no VM map"):
        Program([ld64(1, 0, src=isa.PSEUDO_MAP_FD, ref="nope"), mov64(0, 0), EXIT])
