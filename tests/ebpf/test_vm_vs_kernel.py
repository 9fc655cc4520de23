"""Smoke test of the VM against BPF_PROG_TEST_RUN on edge cases where the
kernel's behaviour was established by experiment: ALU corner values, the
test_run skb's default fields and ctx_out, checksum helpers, redirect codes
and map errors seen from a program."""
from __future__ import annotations

import random
import struct

import pytest

from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.maps import MapSpec, MapType, F_NO_PREALLOC
from tailor.datapath.ebpf.vm import SkbContext, VmMap, run
from tailor.datapath.ebpf.vm import helpers as H

from vm_asm import (EXIT, alu, call, jmp, ld64, ldx, mov64, movr, st, stx)

pytestmark = [pytest.mark.kernel, pytest.mark.differential]


def both(insns, packet, specs=(), ctx=None):
    from tailor.datapath.ebpf import kernel
    kmaps = {s.name: kernel.KernelMap.create(s) for s in specs}
    vmaps = {s.name: VmMap.create(s) for s in specs}
    try:
        with kernel.KernelProgram.load(insns, kmaps) as prog:
            k = prog.test_run(packet, ctx=None if ctx is None else ctx.to_bytes())
            v = run(insns, packet, maps=vmaps, ctx=ctx)
            assert (k.retval, k.data) == (v.retval, v.packet)
            if ctx is not None:
                assert SkbContext.from_bytes(k.ctx) == v.ctx.ctx_out()
            for name in kmaps:
                assert dict(kmaps[name].items()) == dict(vmaps[name].items())
            return v
    finally:
        for m in kmaps.values():
            m.close()


def packet_binop(op, wide, off=0):
    """r0 = pkt[0:8] op pkt[8:16]; result written back to pkt[0:8]."""
    return [mov64(0, 0), ldx(isa.W, 2, 1, 76), ldx(isa.W, 3, 1, 80), movr(4, 2),
            alu(isa.ADD, 4, imm=16), jmp(isa.JGT, 4, 5, src=3), ldx(isa.DW, 0, 2, 0), ldx(isa.DW, 5, 2, 8),
            alu(op, 0, src=5, wide=wide, off=off), stx(isa.DW, 2, 0, 0), mov64(0, 0), EXIT]


EDGE = [0, 1, 2, 31, 32, 63, 64, 65, (1 << 31), (1 << 32) - 1, (1 << 63), (1 << 64) - 1,
        (1 << 63) - 1, 0x8000_0000_0000_0001]


@pytest.mark.parametrize("op,off", [(isa.DIV, 0), (isa.DIV, 1), (isa.MOD, 0), (isa.MOD, 1),
                                    (isa.LSH, 0), (isa.RSH, 0), (isa.ARSH, 0), (isa.MUL, 0)])
@pytest.mark.parametrize("wide", [True, False])
def test_alu_edges_match_kernel(op, off, wide):
    prog = packet_binop(op, wide, off)
    from tailor.datapath.ebpf import kernel
    with kernel.KernelProgram.load(prog) as kp:
        for a in EDGE:
            for b in (0, 1, (1 << 64) - 1, (1 << 32) - 1, 31, 32, 63, 64, 7, 1 << 31):
                pkt = struct.pack("<QQ", a, b) + bytes(40)
                assert kp.test_run(pkt).data == run(prog, pkt).packet, (a, b)


@pytest.mark.parametrize("dst", [bytes(6), b"\xff" * 6, b"\x01\x00\x5e\0\0\1", b"\x02" * 6])
@pytest.mark.parametrize("ethertype", [b"\x08\x00", b"\x86\xdd", b"\x00\x40"])
@pytest.mark.parametrize("off", [0, 4, 16, 40, 36, 68, 160, 12, 44, 8])
def test_ctx_defaults_match_kernel(dst, ethertype, off):
    pkt = dst + b"\x02" * 6 + ethertype + bytes(46)
    both([ldx(isa.W, 0, 1, off), EXIT], pkt)
    both([ldx(isa.W, 0, 1, off), EXIT], pkt,
         ctx=SkbContext.from_packet(pkt, mark=3, priority=4, cb=(1, 2, 3, 4, 5), tstamp=9))


def test_ctx_writes_match_kernel():
    pkt = bytes(60)
    prog = [st(isa.W, 1, 8, 77), st(isa.W, 1, 32, -1), st(isa.DW, 1, 48, -2),
            st(isa.W, 1, 44, 0x12345), st(isa.W, 1, 12, 3), st(isa.DW, 1, 152, 1000),
            ldx(isa.W, 0, 1, 44), ldx(isa.W, 2, 1, 12), alu(isa.ADD, 0, src=2), EXIT]
    both(prog, pkt, ctx=SkbContext.from_packet(pkt))


def test_csum_helpers_match_kernel():
    rnd = random.Random(7)
    for _ in range(40):
        pkt = bytes(rnd.getrandbits(8) for _ in range(64))
        old, new = rnd.getrandbits(32), rnd.getrandbits(32)
        for helper in (H.Helper.l3_csum_replace, H.Helper.l4_csum_replace):
            for flags in (2, 4, 4 | H.BPF_F_PSEUDO_HDR, 4 | H.BPF_F_MARK_MANGLED_0):
                prog = [mov64(2, 24), ld64(3, old if flags & 4 else old & 0xFFFF),
                        ld64(4, new if flags & 4 else new & 0xFFFF), mov64(5, flags),
                        call(helper), EXIT]
                both(prog, pkt)
        seed = rnd.getrandbits(32)
        words = [rnd.getrandbits(32) - (1 << 31) for _ in range(4)]
        for from_size, to_size in ((8, 8), (0, 8), (8, 0), (4, 12), (0, 0)):
            prog = [st(isa.W, 10, -16 + 4 * i, w) for i, w in enumerate(words)]
            from_ptr = [movr(1, 10), alu(isa.ADD, 1, imm=-16)] if from_size else [mov64(1, 0)]
            to_ptr = ([movr(3, 10), alu(isa.ADD, 3, imm=-16 + from_size)] if to_size
                      else [mov64(3, 0)])
            prog += [*from_ptr, mov64(2, from_size), *to_ptr, mov64(4, to_size),
                     ld64(5, seed), call(H.Helper.csum_diff), EXIT]
            both(prog, pkt)


def test_redirect_and_map_errors_match_kernel():
    for flags in (0, 1, 2):
        both([mov64(1, 3), mov64(2, flags), call(H.Helper.redirect), EXIT], bytes(20))
        both([mov64(1, 3), mov64(2, flags), call(H.Helper.redirect_peer), EXIT], bytes(20))
    spec = MapSpec("h", MapType.HASH, 4, 8, 1)
    upd = lambda key, flags: [st(isa.W, 10, -4, key), st(isa.DW, 10, -16, key * 10),
                              ld64(1, 0, src=isa.PSEUDO_MAP_FD, ref="h"), movr(2, 10),
                              alu(isa.ADD, 2, imm=-4), movr(3, 10), alu(isa.ADD, 3, imm=-16),
                              mov64(4, flags), call(H.Helper.map_update_elem)]
    prog = upd(1, 0) + [movr(6, 0)] + upd(2, 0) + [alu(isa.LSH, 0, imm=8), alu(isa.OR, 0, src=6)] \
        + [movr(6, 0)] + upd(1, 1) + [alu(isa.LSH, 0, imm=16), alu(isa.OR, 0, src=6), EXIT]
    both(prog, bytes(20), specs=[spec])
    lpm = MapSpec("l", MapType.LPM_TRIE, 8, 4, 1, F_NO_PREALLOC)
    ins = lambda plen: [st(isa.W, 10, -8, plen), st(isa.W, 10, -4, 0x0000000A),
                        st(isa.W, 10, -16, plen), ld64(1, 0, src=isa.PSEUDO_MAP_FD, ref="l"),
                        movr(2, 10), alu(isa.ADD, 2, imm=-8), movr(3, 10),
                        alu(isa.ADD, 3, imm=-16), mov64(4, 0), call(H.Helper.map_update_elem)]
    prog = ins(8) + [movr(6, 0)] + ins(16) + [alu(isa.LSH, 0, imm=8), alu(isa.OR, 0, src=6), EXIT]
    both(prog, bytes(20), specs=[lpm])
