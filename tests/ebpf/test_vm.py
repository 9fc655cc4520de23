"""The userspace VM: ISA semantics, memory rules, context, maps and helpers.
Programs are hand-assembled with isa.Insn so these tests need nothing else."""
from __future__ import annotations

import errno
import struct

import pytest

from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.errors import KernelError, VmError
from tailor.datapath.ebpf.maps import (BPF_EXIST, BPF_NOEXIST, F_NO_PREALLOC,
                                       MapSpec, MapType)
from tailor.datapath.ebpf.vm import MapError, Program, SkbContext, VmMap, run
from tailor.datapath.ebpf.vm import helpers as H

I = isa.Insn
M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
INT64_MIN = 1 << 63


# --- tiny assembler ---------------------------------------------------------------

def mov64(dst, imm):
    return I(isa.ALU64 | isa.MOV | isa.K, dst, 0, 0, imm)


def movr(dst, src, wide=True, off=0):
    return I((isa.ALU64 if wide else isa.ALU) | isa.MOV | isa.X, dst, src, off)


def ld64(dst, value, src=0, ref=None):
    return I(isa.OPCODE_LD_IMM64, dst, src, 0, value, ref=ref)


def alu(op, dst, *, imm=0, src=None, wide=True, off=0):
    cls = isa.ALU64 if wide else isa.ALU
    if src is None:
        return I(cls | op | isa.K, dst, 0, off, imm)
    return I(cls | op | isa.X, dst, src, off)


def jmp(op, dst, off, *, imm=0, src=None, wide=True):
    cls = isa.JMP if wide else isa.JMP32
    if src is None:
        return I(cls | op | isa.K, dst, 0, off, imm)
    return I(cls | op | isa.X, dst, src, off)


def ldx(size, dst, src, off, sx=False):
    return I(isa.LDX | (isa.MEMSX if sx else isa.MEM) | size, dst, src, off)


def stx(size, dst, src, off):
    return I(isa.STX | isa.MEM | size, dst, src, off)


def st(size, dst, off, imm):
    return I(isa.ST | isa.MEM | size, dst, 0, off, imm)


def call(helper):
    return I(isa.JMP | isa.CALL, 0, 0, 0, int(helper))


EXIT = I(isa.JMP | isa.EXIT)
PKT = bytes(range(64))


def r0_of(*body, packet=PKT, maps=None):
    """Full 64-bit r0 after `body`: stored into the packet's first 8 bytes."""
    prog = [movr(9, 1), *body,
            ldx(isa.W, 8, 9, 76),          # r8 = skb->data
            stx(isa.DW, 8, 0, 0),
            mov64(0, 0), EXIT]
    res = run(prog, packet, maps=maps)
    return struct.unpack_from("<Q", res.packet)[0]


def binop(op, a, b, wide=True, off=0):
    return r0_of(ld64(0, a & M64), ld64(1, b & M64), alu(op, 0, src=1, wide=wide, off=off))


# --- ALU -------------------------------------------------------------------------

ALU64_CASES = [
    (isa.ADD, M64, 2, 1), (isa.SUB, 0, 1, M64), (isa.MUL, 1 << 63, 2, 0),
    (isa.MUL, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFE00000001),
    (isa.DIV, 100, 7, 14), (isa.DIV, 100, 0, 0), (isa.DIV, M64, 2, M64 >> 1),
    (isa.MOD, 100, 7, 2), (isa.MOD, 100, 0, 100),
    (isa.OR, 0xF0, 0x0F, 0xFF), (isa.AND, 0xF0F0, 0xFF00, 0xF000), (isa.XOR, 0xFF, 0x0F, 0xF0),
    (isa.LSH, 1, 63, 1 << 63), (isa.LSH, 1, 64, 1), (isa.LSH, 3, 65, 6),
    (isa.RSH, 1 << 63, 63, 1), (isa.RSH, 1 << 63, 64, 1 << 63),
    (isa.ARSH, 1 << 63, 63, M64), (isa.ARSH, 1 << 63, 4, 0xF8 << 56),
]


@pytest.mark.parametrize("op,a,b,want", ALU64_CASES)
def test_alu64(op, a, b, want):
    assert binop(op, a, b) == want


ALU32_CASES = [
    (isa.ADD, 0xFFFFFFFF, 1, 0), (isa.ADD, (5 << 32) | 1, 1, 2),   # upper half dropped
    (isa.SUB, 0, 1, M32), (isa.MUL, 0x10000, 0x10000, 0),
    (isa.DIV, 100, 0, 0), (isa.DIV, (1 << 32) | 100, 10, 10),
    (isa.MOD, (7 << 32) | 100, 0, 100),                            # mod 0: dst, zero-extended
    (isa.LSH, 1, 31, 1 << 31), (isa.LSH, 1, 32, 1), (isa.RSH, 1 << 31, 33, 1 << 30),
    (isa.ARSH, 1 << 31, 31, M32), (isa.OR, 1 << 40, 1, 1), (isa.XOR, M64, 0, M32),
    (isa.AND, M64, M64, M32),
]


@pytest.mark.parametrize("op,a,b,want", ALU32_CASES)
def test_alu32_zero_extends(op, a, b, want):
    assert binop(op, a, b, wide=False) == want


@pytest.mark.parametrize("op,a,b,want,wide", [
    (isa.DIV, -7, 2, -3, True), (isa.DIV, 7, -2, -3, True), (isa.DIV, -7, -2, 3, True),
    (isa.MOD, -7, 2, -1, True), (isa.MOD, 7, -2, 1, True),
    (isa.DIV, INT64_MIN, -1, INT64_MIN, True), (isa.MOD, INT64_MIN, -1, 0, True),
    (isa.DIV, 5, 0, 0, True), (isa.MOD, -5, 0, -5, True),
    (isa.DIV, -(1 << 31), -1, 1 << 31, False), (isa.MOD, -(1 << 31), -1, 0, False),
    (isa.DIV, -7, 2, (-3) & M32, False), (isa.MOD, -7, 2, (-1) & M32, False),
    (isa.MOD, -5, 0, (-5) & M32, False),
])
def test_signed_div_mod(op, a, b, want, wide):
    assert binop(op, a, b, wide=wide, off=1) == want & M64


def test_immediates_sign_extend_in_alu64_and_not_alu32():
    assert r0_of(mov64(0, 0), alu(isa.ADD, 0, imm=-1)) == M64
    assert r0_of(ld64(0, M64), alu(isa.ADD, 0, imm=-1, wide=False)) == M32 - 1
    assert r0_of(I(isa.ALU | isa.MOV | isa.K, 0, 0, 0, -1)) == M32
    assert r0_of(ld64(0, 5), alu(isa.NEG, 0)) == (-5) & M64
    assert r0_of(ld64(0, 5 | (9 << 32)), alu(isa.NEG, 0, wide=False)) == (-5) & M32


@pytest.mark.parametrize("code_cls,src_bit,width,want", [
    (isa.ALU, isa.TO_BE, 16, 0x0102), (isa.ALU, isa.TO_BE, 32, 0x01020304),
    (isa.ALU, isa.TO_BE, 64, 0x0102030405060708), (isa.ALU, isa.TO_LE, 16, 0x0201),
    (isa.ALU, isa.TO_LE, 32, 0x04030201), (isa.ALU, isa.TO_LE, 64, 0x0807060504030201),
    (isa.ALU64, 0, 16, 0x0102), (isa.ALU64, 0, 32, 0x01020304),
    (isa.ALU64, 0, 64, 0x0102030405060708),
])
def test_end_and_bswap(code_cls, src_bit, width, want):
    got = r0_of(ld64(0, 0x0807060504030201), I(code_cls | isa.END | src_bit, 0, 0, 0, width))
    assert got == want


def test_movsx():
    assert r0_of(ld64(1, 0x80), movr(0, 1, off=8)) == 0xFFFFFFFFFFFFFF80
    assert r0_of(ld64(1, 0x7F80), movr(0, 1, off=8)) == 0xFFFFFFFFFFFFFF80
    assert r0_of(ld64(1, 0x8000), movr(0, 1, off=16)) == 0xFFFFFFFFFFFF8000
    assert r0_of(ld64(1, 0x80000000), movr(0, 1, off=32)) == 0xFFFFFFFF80000000
    assert r0_of(ld64(1, 0x80), movr(0, 1, wide=False, off=8)) == 0xFFFFFF80
    assert r0_of(ld64(1, 0x7FFF), movr(0, 1, wide=False, off=16)) == 0x7FFF
    assert r0_of(ld64(1, 1 << 40 | 7), movr(0, 1, wide=False)) == 7


# --- jumps -----------------------------------------------------------------------

def branch(op, a, b, wide=True, use_reg=True):
    """1 if the jump is taken."""
    cmp = jmp(op, 1, 2, src=2, wide=wide) if use_reg else jmp(op, 1, 2, imm=b, wide=wide)
    prog = [ld64(1, a & M64), ld64(2, b & M64), cmp, mov64(0, 0), EXIT, mov64(0, 1), EXIT]
    return run(prog, PKT).retval


@pytest.mark.parametrize("op,a,b,taken", [
    (isa.JEQ, 5, 5, 1), (isa.JEQ, 5, 6, 0), (isa.JNE, 5, 6, 1), (isa.JNE, 5, 5, 0),
    (isa.JGT, -1, 1, 1), (isa.JGT, 1, 1, 0), (isa.JGE, 1, 1, 1), (isa.JGE, 0, 1, 0),
    (isa.JLT, 1, -1, 1), (isa.JLT, 1, 1, 0), (isa.JLE, 1, 1, 1), (isa.JLE, 2, 1, 0),
    (isa.JSGT, 1, -1, 1), (isa.JSGT, -1, 1, 0), (isa.JSGE, -1, -1, 1), (isa.JSGE, -2, -1, 0),
    (isa.JSLT, -1, 1, 1), (isa.JSLT, 1, -1, 0), (isa.JSLE, -1, -1, 1), (isa.JSLE, 0, -1, 0),
    (isa.JSET, 6, 2, 1), (isa.JSET, 6, 1, 0),
])
def test_jump_conditions_64(op, a, b, taken):
    assert branch(op, a, b) == taken
    assert branch(op, a, b, use_reg=False) == taken


@pytest.mark.parametrize("op,a,b,taken", [
    (isa.JEQ, (7 << 32) | 5, 5, 1), (isa.JGT, 0x1_0000_0000, 1, 0),
    (isa.JSLT, 0xFFFFFFFF, 0, 1), (isa.JSGT, 0x7FFFFFFF, 0x80000000, 1),
    (isa.JSET, 1 << 40, 1 << 40, 0), (isa.JLE, (1 << 33) | 3, 3, 1),
])
def test_jump_conditions_32(op, a, b, taken):
    assert branch(op, a, b, wide=False) == taken
    assert branch(op, a, b & M32, wide=False, use_reg=False) == taken


def test_ja_and_gotol_count_slots_across_ld_imm64():
    prog = [jmp(isa.JA, 0, 2), ld64(0, 1), mov64(0, 9), EXIT]   # skips the 2-slot ld64
    assert run(prog, PKT).retval == 9
    gotol = I(isa.JMP32 | isa.JA, 0, 0, 0, 1)
    assert run([gotol, mov64(0, 1), mov64(0, 2), EXIT], PKT).retval == 2


def test_jump_into_ld_imm64_rejected_at_compile():
    with pytest.raises(VmError, match="middle"):
        Program([jmp(isa.JA, 0, 1), ld64(0, 1), EXIT])


def test_retval_is_low_32_bits():
    assert run([ld64(0, 0x1234_0000_0007), EXIT], PKT).retval == 7
    assert run([mov64(0, -1), EXIT], PKT).retval == M32


# --- memory ----------------------------------------------------------------------

def test_stack_roundtrip_and_memsx():
    body = [st(isa.DW, 10, -8, -2),
            ldx(isa.B, 1, 10, -8, sx=True), ldx(isa.H, 2, 10, -8, sx=True),
            ldx(isa.W, 0, 10, -8, sx=True), alu(isa.ADD, 0, src=1), alu(isa.ADD, 0, src=2)]
    assert r0_of(*body) == (-6) & M64
    assert r0_of(st(isa.B, 10, -1, 0x80), ldx(isa.B, 0, 10, -1)) == 0x80


def test_uninitialised_stack_read_is_an_error():
    with pytest.raises(VmError, match="invalid read from stack"):
        run([st(isa.W, 10, -8, 1), ldx(isa.DW, 0, 10, -8), EXIT], PKT)


def test_stack_out_of_bounds():
    with pytest.raises(VmError, match="pc 0"):
        run([st(isa.DW, 10, 0, 1), mov64(0, 0), EXIT], PKT)
    with pytest.raises(VmError):
        run([st(isa.DW, 10, -520, 1), mov64(0, 0), EXIT], PKT)


def test_uninitialised_register():
    with pytest.raises(VmError, match=r"pc 0: R2 !read_ok"):
        run([alu(isa.ADD, 0, src=2), EXIT], PKT)
    with pytest.raises(VmError, match=r"R3 !read_ok"):
        run([movr(0, 3), EXIT], PKT)
    with pytest.raises(VmError, match=r"R0 !read_ok"):
        run([EXIT], PKT)
    with pytest.raises(VmError, match=r"R4 !read_ok"):
        run([stx(isa.DW, 10, 4, -8), mov64(0, 0), EXIT], PKT)


def test_frame_pointer_is_read_only():
    with pytest.raises(VmError, match="read only"):
        Program([mov64(10, 0), EXIT])


def test_null_and_scalar_dereference():
    with pytest.raises(VmError, match="null"):
        run([mov64(1, 0), ldx(isa.W, 0, 1, 0), EXIT], PKT)
    with pytest.raises(VmError, match="scalar"):
        run([mov64(1, 1234), ldx(isa.W, 0, 1, 0), EXIT], PKT)


def test_step_limit():
    with pytest.raises(VmError, match="within 100 instructions"):
        run([jmp(isa.JA, 0, -1)], PKT, max_steps=100)
    assert run([mov64(0, 0), EXIT], PKT).steps == 2


def test_unknown_opcode_and_helper():
    with pytest.raises(VmError, match="unknown"):
        Program([I(0xFE), EXIT])
    with pytest.raises(VmError, match="unknown helper 152 .redirect_neigh."):
        Program([call(152), EXIT])


# --- packet access -----------------------------------------------------------------

def pkt_prog(*body):
    """r2 = data, r3 = data_end, then body."""
    return [ldx(isa.W, 2, 1, 76), ldx(isa.W, 3, 1, 80), *body]


def test_direct_packet_read_write():
    prog = pkt_prog(movr(4, 2), alu(isa.ADD, 4, imm=14), jmp(isa.JGT, 4, 3, src=3),
                    ldx(isa.H, 0, 2, 12), st(isa.B, 2, 0, 0xAA), EXIT,
                    mov64(0, 99), EXIT)
    res = run(prog, PKT)
    assert res.retval == 0x0D0C          # bytes 12,13 little-endian
    assert res.packet == b"\xAA" + PKT[1:]
    assert run(prog, PKT[:12] + b"\0\0").retval == 0  # exactly 14 bytes: in bounds


def test_packet_out_of_bounds_is_vm_error():
    with pytest.raises(VmError, match="packet"):
        run(pkt_prog(ldx(isa.W, 0, 2, 62), EXIT), PKT)
    with pytest.raises(VmError):
        run(pkt_prog(ldx(isa.B, 0, 3, 0), EXIT), PKT)     # data_end itself
    with pytest.raises(VmError):
        run(pkt_prog(ldx(isa.B, 0, 2, -1), EXIT), PKT)


def test_ld_abs_ind_big_endian_and_out_of_bounds_returns_zero():
    prog = [movr(6, 1), I(isa.LD | isa.ABS | isa.H, 0, 0, 0, 12), EXIT]
    assert run(prog, PKT).retval == 0x0C0D
    prog = [movr(6, 1), mov64(7, 4), I(isa.LD | isa.IND | isa.W, 0, 7, 0, 10), EXIT]
    assert run(prog, PKT).retval == 0x0E0F1011
    prog = [movr(6, 1), I(isa.LD | isa.ABS | isa.W, 0, 0, 0, 62), mov64(0, 5), EXIT]
    assert run(prog, PKT).retval == 0
    with pytest.raises(VmError, match="R1 !read_ok"):   # LD_ABS clobbers r1-r5
        run([movr(6, 1), I(isa.LD | isa.ABS | isa.B, 0, 0, 0, 0), movr(0, 1), EXIT], PKT)


# --- context -----------------------------------------------------------------------

IPV4 = bytes(6) + b"\x02" * 6 + b"\x08\x00" + bytes(40)


@pytest.mark.parametrize("off,want", [
    (0, len(IPV4)), (4, 0), (16, 0x0008), (40, 1), (36, 0), (68, 0), (160, len(IPV4))])
def test_ctx_defaults_like_test_run(off, want):
    assert run([ldx(isa.W, 0, 1, off), EXIT], IPV4).retval == want


def test_from_packet_pkt_type_and_protocol():
    assert SkbContext.from_packet(b"\xff" * 6 + bytes(6) + b"\x86\xdd" + bytes(40)).pkt_type == 2
    assert SkbContext.from_packet(b"\x02" * 12 + b"\x08\x06").pkt_type == 3
    assert SkbContext.from_packet(b"\x02" * 12 + b"\x08\x06").protocol == 0x0608
    assert SkbContext.from_packet(b"\x02" * 12 + b"\x00\x40\xff\xff").protocol == 0x0100
    assert SkbContext.from_packet(b"\x02" * 12 + b"\x00\x40\x00\x00").protocol == 0x0400
    assert SkbContext.from_packet(IPV4).wire_len == len(IPV4)
    with pytest.raises(ValueError):
        SkbContext.from_packet(bytes(13))
    with pytest.raises(ValueError):
        SkbContext.from_packet(bytes(12) + b"\x86\xdd" + bytes(39))


def test_ctx_read_write_fields():
    ctx = SkbContext.from_packet(IPV4, mark=7, priority=3, cb=(1, 2, 3, 4, 5))
    prog = [ldx(isa.W, 2, 1, 8), alu(isa.ADD, 2, imm=1), stx(isa.W, 1, 2, 8),
            st(isa.W, 1, 32, 9), st(isa.DW, 1, 48, -1), st(isa.W, 1, 44, 0x12345),
            st(isa.W, 1, 12, 0xFFFF), st(isa.W, 1, 72, 0x10002),
            ldx(isa.B, 0, 1, 64), EXIT]       # narrow load of cb[4]
    res = run(prog, IPV4, ctx=ctx)
    assert res.retval == 5
    assert (res.ctx.mark, res.ctx.priority) == (8, 9)
    assert res.ctx.cb == (M32, M32, 3, 4, 5)
    assert res.ctx.tc_index == 0x2345 and res.ctx.tc_classid == 2
    assert res.ctx.queue_mapping == 0        # >= 0xffff is ignored
    out = res.ctx.ctx_out()
    assert out.mark == 8 and out.tc_index == 0 and out.len == 0


@pytest.mark.parametrize("insn", [
    st(isa.W, 1, 0, 1),            # len is read-only
    st(isa.B, 1, 8, 1),            # narrow write of mark
    ldx(isa.H, 0, 1, 76),          # narrow load of data
    ldx(isa.W, 0, 1, 88),          # family: not for tc
    ldx(isa.H, 0, 1, 9),           # misaligned
    ldx(isa.W, 0, 1, 152),         # tstamp is 8 bytes
])
def test_ctx_invalid_access(insn):
    with pytest.raises(VmError, match="bpf_context access"):
        run([mov64(0, 0), insn, mov64(0, 0), EXIT], IPV4)


def test_ctx_image_only_carries_accepted_fields():
    ctx = SkbContext.from_packet(IPV4, mark=1, priority=2, ingress_ifindex=3, cb=(4,),
                                 tstamp=5, gso_segs=6, gso_size=7, hwtstamp=8)
    img = ctx.to_bytes()
    assert len(img) == 192
    nonzero = sorted({i // 4 * 4 for i, b in enumerate(img) if b})
    assert nonzero == [8, 32, 36, 40, 48, 152, 160, 164, 176, 184]
    back = SkbContext.from_bytes(img)
    assert (back.mark, back.wire_len, back.ifindex, back.cb[0], back.hwtstamp) == \
        (1, len(IPV4), 1, 4, 8)
    assert back.protocol == 0 and back.len == 0


# --- atomics ---------------------------------------------------------------------

def atomic(size, op, dst, src, off):
    return I(isa.STX | isa.ATOMIC | size, dst, src, off, op)


@pytest.mark.parametrize("name,init,operand,mem_after,fetched", [
    ("add", 5, 3, 8, 5), ("or", 5, 2, 7, 5), ("and", 6, 3, 2, 6), ("xor", 6, 3, 5, 6),
    ("xchg", 6, 3, 3, 6),
])
@pytest.mark.parametrize("size", [isa.W, isa.DW])
def test_atomics(name, init, operand, mem_after, fetched, size):
    opcode = isa.ATOMIC_OPS[name]
    for fetch in ({True} if name == "xchg" else {False, True}):
        op = opcode | (isa.FETCH if fetch else 0)
        mem, reg = r0_of(ld64(2, init), stx(isa.DW, 10, 2, -8), mov64(1, operand),
                         atomic(size, op, 10, 1, -8), ldx(isa.DW, 0, 10, -8)), \
            r0_of(ld64(2, init), stx(isa.DW, 10, 2, -8), mov64(1, operand),
                  atomic(size, op, 10, 1, -8), movr(0, 1))
        assert mem == mem_after
        assert reg == (fetched if fetch else operand)


def test_atomic_32_wraps_within_the_word():
    got = r0_of(ld64(2, 0x1_FFFFFFFF), stx(isa.DW, 10, 2, -8), mov64(1, 1),
                atomic(isa.W, isa.ATOMIC_OPS["add"], 10, 1, -8), ldx(isa.DW, 0, 10, -8))
    assert got == 0x1_00000000


def test_cmpxchg():
    base = [st(isa.DW, 10, -8, 10), mov64(1, 20)]
    cx = atomic(isa.DW, isa.ATOMIC_OPS["cmpxchg"], 10, 1, -8)
    assert r0_of(*base, mov64(0, 10), cx, ldx(isa.DW, 0, 10, -8)) == 20
    assert r0_of(*base, mov64(0, 11), cx, ldx(isa.DW, 0, 10, -8)) == 10
    assert r0_of(*base, mov64(0, 11), cx) == 10     # r0 = old value either way


def test_atomic_on_packet_rejected():
    with pytest.raises(VmError, match="atomic"):
        run(pkt_prog(mov64(1, 1), atomic(isa.W, 0, 2, 1, 0), mov64(0, 0), EXIT), PKT)


# --- bpf-to-bpf calls ------------------------------------------------------------------

def local_call(rel):
    return I(isa.JMP | isa.CALL, 0, isa.CALL_LOCAL, 0, rel)


def test_local_call_saves_callee_saved_and_has_own_stack():
    prog = [mov64(6, 100), st(isa.DW, 10, -8, 7), mov64(1, 5),
            local_call(4),
            alu(isa.ADD, 0, src=6), ldx(isa.DW, 2, 10, -8), alu(isa.ADD, 0, src=2), EXIT,
            # callee: r0 = r1 * 2, clobbers r6 and its own stack slot
            movr(0, 1), alu(isa.MUL, 0, imm=2), mov64(6, 1), st(isa.DW, 10, -8, 99), EXIT]
    assert run(prog, PKT).retval == 10 + 100 + 7


def test_callee_starts_without_r6():
    prog = [mov64(6, 1), local_call(1), EXIT, movr(0, 6), EXIT]
    with pytest.raises(VmError, match="R6 !read_ok"):
        run(prog, PKT)


def test_call_depth_limit():
    recurse = [local_call(-1), EXIT]
    with pytest.raises(VmError, match="too deep"):
        run(recurse, PKT)
    # depth 8 (main + 7 nested) is fine
    chain = []
    for _ in range(7):
        chain += [local_call(1), EXIT]
    chain += [mov64(0, 3), EXIT]
    assert run(chain, PKT).retval == 3


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
