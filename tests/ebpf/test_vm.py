"""The userspace VM's instruction semantics: ALU, jumps, bpf-to-bpf calls,
register rules, the step limit and what the VM refuses to load. Programs are
hand-assembled with vm_asm so these tests need nothing else.

Memory, packet and context access are in test_vm_memory.py; maps and
helpers in test_vm_maps_helpers.py. test_vm_vs_kernel.py imports the
assembler names it needs from this module (they come from vm_asm)."""
from __future__ import annotations

import pytest

from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.errors import VmError
from tailor.datapath.ebpf.vm import Program, run

from vm_asm import (EXIT, I, M32, M64, PKT, alu, call, jmp, ld64, ldx, mov64, movr, r0_of,
                    st, stx)

INT64_MIN = 1 << 63


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


# --- registers, limits, load-time checks -----------------------------------------

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


def test_step_limit():
    with pytest.raises(VmError, match="within 100 instructions"):
        run([jmp(isa.JA, 0, -1)], PKT, max_steps=100)
    assert run([mov64(0, 0), EXIT], PKT).steps == 2


def test_unknown_opcode_and_helper():
    with pytest.raises(VmError, match="unknown"):
        Program([I(0xFE), EXIT])
    with pytest.raises(VmError, match="unknown helper 152 .redirect_neigh."):
        Program([call(152), EXIT])


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

