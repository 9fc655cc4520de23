"""The ALU and ALU64 classes: arithmetic, MOV/MOVSX, NEG and byte swaps,
each compiled to a closure over the register list.

Called by machine.compile_program for every ALU-class instruction; sx (sign
extension) is shared with load_store.py and control_flow.py.

Semantics notes (RFC 9669 and the kernel where the RFC leaves room):
- shift amounts are masked to 63 / 31 (the RFC leaves out-of-range shifts
  undefined; x86 and arm64 JITs and the interpreter mask);
- division by zero gives 0, modulo by zero leaves dst (32-bit: zero-extended);
  signed INT_MIN / -1 gives INT_MIN and INT_MIN % -1 gives 0 (what the
  verifier's rewrite produces).
"""
from __future__ import annotations

import operator

from .. import isa
from .memory import M32, M64, Fault
from .state import Uninit


def sx(value: int, bits: int) -> int:
    """Sign-extend the low `bits` of value to a Python int."""
    sign = 1 << (bits - 1)
    return ((value & ((1 << bits) - 1)) ^ sign) - sign


def _bswap(value: int, nbytes: int) -> int:
    return int.from_bytes((value & ((1 << (8 * nbytes)) - 1)).to_bytes(nbytes, "little"), "big")


# --- ALU operation tables: (a, b) -> result, operands already masked to width ---

def _alu_table(bits: int, mask: int, shmask: int):
    def sdiv(a, b):
        sa, sb = sx(a, bits), sx(b, bits)
        if sb == 0:
            return 0
        q = abs(sa) // abs(sb)
        return (-q if (sa < 0) != (sb < 0) else q) & mask

    def smod(a, b):
        sa, sb = sx(a, bits), sx(b, bits)
        if sb == 0:
            return a
        q = abs(sa) // abs(sb)
        q = -q if (sa < 0) != (sb < 0) else q
        return (sa - q * sb) & mask

    return {
        (isa.ADD, 0): lambda a, b: (a + b) & mask,
        (isa.SUB, 0): lambda a, b: (a - b) & mask,
        (isa.MUL, 0): lambda a, b: (a * b) & mask,
        (isa.DIV, 0): lambda a, b: a // b if b else 0,
        (isa.DIV, 1): sdiv,
        (isa.OR, 0): operator.or_,
        (isa.AND, 0): operator.and_,
        (isa.LSH, 0): lambda a, b: (a << (b & shmask)) & mask,
        (isa.RSH, 0): lambda a, b: a >> (b & shmask),
        (isa.MOD, 0): lambda a, b: a % b if b else a,
        (isa.MOD, 1): smod,
        (isa.XOR, 0): operator.xor,
        (isa.ARSH, 0): lambda a, b: (sx(a, bits) >> (b & shmask)) & mask,
    }


ALU64_OPS = _alu_table(64, M64, 63)
ALU32_OPS = _alu_table(32, M32, 31)


def compile_alu(insn, n, r):
    """The closure for one ALU or ALU64 instruction: it updates r[dst] and
    returns n, the next index. Raises Fault for encodings the kernel refuses."""
    c, d, s, off, imm = insn.code, insn.dst, insn.src, insn.off, insn.imm
    wide = isa.cls(c) == isa.ALU64
    mask = M64 if wide else M32
    o, x = isa.op(c), isa.source(c) == isa.X
    if o == isa.END:
        if imm not in (16, 32, 64):
            raise Fault(f"invalid END width {imm}")
        nbytes = imm // 8
        width = (1 << imm) - 1
        if wide:   # BSWAP: unconditional
            if x:
                raise Fault("BSWAP must use source bit 0")
            swap = True
        else:      # host is little-endian: to_le truncates, to_be swaps
            swap = x

        def f():
            r[d] = _bswap(r[d], nbytes) if swap else r[d] & width
            return n
        return f
    if o == isa.NEG:
        if x:
            raise Fault("NEG takes no source register")

        def f():
            r[d] = -(r[d] & mask) & mask
            return n
        return f
    if o == isa.MOV:
        if not x:
            if off:
                raise Fault("MOVSX needs a register source")
            value = imm & mask

            def f():
                r[d] = value
                return n
            return f
        if off == 0:
            if wide:
                def f():
                    v = r[s]
                    if v is None:
                        raise Uninit(s)
                    r[d] = v
                    return n
            else:
                def f():
                    r[d] = r[s] & M32
                    return n
            return f
        if off not in ((8, 16, 32) if wide else (8, 16)):
            raise Fault(f"invalid MOVSX width {off}")

        def f():
            r[d] = sx(r[s], off) & mask
            return n
        return f
    if off not in (0, 1) or (off == 1 and o not in (isa.DIV, isa.MOD)):
        raise Fault(f"invalid offset {off} for ALU op {isa.ALU_OP_NAMES.get(o, o)}")
    fn = (ALU64_OPS if wide else ALU32_OPS).get((o, off))
    if fn is None:
        raise Fault(f"unknown ALU opcode {c:#04x}")
    if x:
        if wide:
            def f():
                r[d] = fn(r[d], r[s])
                return n
        else:
            def f():
                r[d] = fn(r[d] & M32, r[s] & M32)
                return n
        return f
    b = imm & mask
    if wide:
        if o == isa.ADD:
            def f():
                r[d] = (r[d] + b) & M64
                return n
            return f

        def f():
            r[d] = fn(r[d], b)
            return n
        return f

    def f():
        r[d] = fn(r[d] & M32, b)
        return n
    return f
