"""LLVM's BPF assembly syntax as tables: text -> encoding. The assembler
(`asm`) reads them forwards and the disassembler (`disasm`) derives its
reverse tables from them, so the two cannot drift apart. Pure data.
"""
from __future__ import annotations

from . import isa

# Compound-assignment operator (without the `=`) -> (ALU op, off). `off` 1
# selects the signed variant of div/mod (cpu v4).
ALU_OPERATORS = {
    "+": (isa.ADD, 0), "-": (isa.SUB, 0), "*": (isa.MUL, 0),
    "/": (isa.DIV, 0), "s/": (isa.DIV, 1), "%": (isa.MOD, 0), "s%": (isa.MOD, 1),
    "|": (isa.OR, 0), "&": (isa.AND, 0), "^": (isa.XOR, 0),
    "<<": (isa.LSH, 0), ">>": (isa.RSH, 0), "s>>": (isa.ARSH, 0),
}
# Comparison text -> JMP op, from isa's name -> text table.
CONDITION_OPS = {text: isa.JMP_OPS[name] for name, text in isa.CONDITIONS.items()}
# `(u32 *)` / `(s16 *)` -> size field; `s` types only exist for MEMSX loads.
MEM_TYPES = {f"u{8 * n}": isa.BYTES_SIZE[n] for n in (1, 2, 4, 8)}
SIGNED_MEM_TYPES = {f"s{8 * n}": isa.BYTES_SIZE[n] for n in (1, 2, 4)}
# Atomic operators usable with `lock ... OP= reg` and `atomic_fetch_NAME`.
ATOMIC_OPERATORS = {"+": "add", "|": "or", "&": "and", "^": "xor"}
# Byte swaps: `be16` etc. are ALU-class END (to big / little endian),
# `bswap16` etc. the unconditional ALU64-class swap.
SWAPS = {f"{name}{bits}": (code, bits) for bits in (16, 32, 64) for name, code in (
    ("be", isa.ALU | isa.END | isa.TO_BE), ("le", isa.ALU | isa.END | isa.TO_LE),
    ("bswap", isa.ALU64 | isa.END | isa.TO_LE))}
# MOVSX source widths per class: `w1 = (s32)w2` would be a plain move.
MOVSX_BITS = {isa.ALU: (8, 16), isa.ALU64: (8, 16, 32)}
# The fetch forms' function names, per width.
XCHG_NAMES = {isa.DW: "xchg_64", isa.W: "xchg32_32"}
CMPXCHG_NAMES = {isa.DW: "cmpxchg_64", isa.W: "cmpxchg32_32"}

# Registers r0-r10 exist; llvm-mc also takes r11, the kernel does not.
MAX_REG = isa.R10
