"""The eBPF instruction set (RFC 9669): opcode fields, the instruction value,
and its binary encoding. Pure data, no I/O.

Used by the builder and the text assembler (which make instructions), the
disassembler, the kernel loader (which patches map references) and the VM
(which decodes and runs them).

One table per field maps name -> number; every reverse table is derived from
it, so the two directions cannot drift apart.
"""
from __future__ import annotations

import dataclasses
import struct

# --- instruction classes (low 3 bits of the opcode) -------------------------
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)
CLASS_NAMES = {LD: "ld", LDX: "ldx", ST: "st", STX: "stx", ALU: "alu",
               JMP: "jmp", JMP32: "jmp32", ALU64: "alu64"}

# --- source bit for ALU / JMP ------------------------------------------------
K = 0x00   # operand is the immediate
X = 0x08   # operand is the src register
# For END (byte swap) in the ALU class the same bit means little/big endian.
TO_LE = 0x00
TO_BE = 0x08

# --- ALU operations (high 4 bits) --------------------------------------------
ALU_OPS = {
    "add": 0x00, "sub": 0x10, "mul": 0x20, "div": 0x30, "or": 0x40,
    "and": 0x50, "lsh": 0x60, "rsh": 0x70, "neg": 0x80, "mod": 0x90,
    "xor": 0xA0, "mov": 0xB0, "arsh": 0xC0, "end": 0xD0,
}
ALU_OP_NAMES = {v: k for k, v in ALU_OPS.items()}
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR, MOV, ARSH, END = (
    ALU_OPS[n] for n in ("add", "sub", "mul", "div", "or", "and", "lsh", "rsh",
                         "neg", "mod", "xor", "mov", "arsh", "end"))

# --- JMP operations (high 4 bits) --------------------------------------------
JMP_OPS = {
    "ja": 0x00, "jeq": 0x10, "jgt": 0x20, "jge": 0x30, "jset": 0x40,
    "jne": 0x50, "jsgt": 0x60, "jsge": 0x70, "call": 0x80, "exit": 0x90,
    "jlt": 0xA0, "jle": 0xB0, "jslt": 0xC0, "jsle": 0xD0,
}
JMP_OP_NAMES = {v: k for k, v in JMP_OPS.items()}
JA, JEQ, JGT, JGE, JSET, JNE, JSGT, JSGE, CALL, EXIT, JLT, JLE, JSLT, JSLE = (
    JMP_OPS[n] for n in ("ja", "jeq", "jgt", "jge", "jset", "jne", "jsgt", "jsge",
                         "call", "exit", "jlt", "jle", "jslt", "jsle"))
# Conditional jumps: name -> (op, the comparison in LLVM's text syntax).
CONDITIONS = {
    "jeq": "==", "jne": "!=", "jgt": ">", "jge": ">=", "jlt": "<", "jle": "<=",
    "jsgt": "s>", "jsge": "s>=", "jslt": "s<", "jsle": "s<=", "jset": "&",
}

# --- load/store size (bits 3-4) and mode (bits 5-7) ---------------------------
SIZES = {"w": 0x00, "h": 0x08, "b": 0x10, "dw": 0x18}
SIZE_BYTES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}
BYTES_SIZE = {v: k for k, v in SIZE_BYTES.items()}
W, H, B, DW = SIZES["w"], SIZES["h"], SIZES["b"], SIZES["dw"]

MODES = {"imm": 0x00, "abs": 0x20, "ind": 0x40, "mem": 0x60, "memsx": 0x80,
         "atomic": 0xC0}
IMM, ABS, IND, MEM, MEMSX, ATOMIC = (MODES[n] for n in
                                     ("imm", "abs", "ind", "mem", "memsx", "atomic"))

# --- atomic operations (in imm) ----------------------------------------------
FETCH = 0x01
ATOMIC_OPS = {"add": 0x00, "or": 0x40, "and": 0x50, "xor": 0xA0,
              "xchg": 0xE0 | FETCH, "cmpxchg": 0xF0 | FETCH}
ATOMIC_OP_NAMES = {v: k for k, v in ATOMIC_OPS.items()}

# --- LD_IMM64 src-register meanings (RFC 9669 5.4) -----------------------------
PSEUDO_IMM64 = 0
PSEUDO_MAP_FD = 1        # imm = map fd
PSEUDO_MAP_VALUE = 2     # imm = map fd, next imm = offset into the value
PSEUDO_BTF_ID = 3
PSEUDO_FUNC = 4
PSEUDO_MAP_IDX = 5
PSEUDO_MAP_IDX_VALUE = 6

# --- CALL src-register meanings ----------------------------------------------
CALL_HELPER = 0
CALL_LOCAL = 1           # bpf-to-bpf call, imm = relative offset
CALL_KFUNC = 2

# Registers: r0 return value, r1-r5 arguments (clobbered by calls),
# r6-r9 callee-saved, r10 read-only frame pointer.
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)
FP = R10
STACK_SIZE = 512

OPCODE_LD_IMM64 = LD | IMM | DW   # 0x18, the only two-slot instruction
SLOT = 8                          # bytes per instruction slot


def cls(code: int) -> int:
    return code & 0x07


def op(code: int) -> int:
    return code & 0xF0


def source(code: int) -> int:
    return code & 0x08


def size(code: int) -> int:
    return code & 0x18


def mode(code: int) -> int:
    return code & 0xE0


@dataclasses.dataclass(frozen=True)
class Insn:
    """One instruction. A LD_IMM64 is one Insn with a 64-bit `imm` and
    occupies two slots; every other instruction one slot.

    `ref` names a map for pseudo map loads (src PSEUDO_MAP_FD / _VALUE): the
    loader (kernel or VM) resolves it into the fd it holds for that map.
    `group` names a node-wide peer group (or named-port group) whose bit the
    instruction tests: on a load, `off` is the base of the bitmap and the
    loader adds the group's word offset; on a jump, the loader sets `imm` to
    the group's bit within that word (datapath/groups.py). Like `ref`, it is
    resolved per node at load and is not encoded.
    `comment` is the source annotation (the rule or feature that produced the
    instruction); it is not encoded.
    """
    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    ref: str | None = dataclasses.field(default=None, compare=True)
    group: str | None = dataclasses.field(default=None, compare=True)
    comment: str | None = dataclasses.field(default=None, compare=False)

    @property
    def slots(self) -> int:
        return 2 if self.code == OPCODE_LD_IMM64 else 1

    @property
    def is_wide(self) -> bool:
        return self.code == OPCODE_LD_IMM64


def _s16(v: int) -> int:
    return ((v + 0x8000) & 0xFFFF) - 0x8000


def _s32(v: int) -> int:
    return ((v + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def encode_one(insn: Insn) -> bytes:
    """Little-endian encoding: opcode, dst|src<<4, off (s16), imm (s32)."""
    if not 0 <= insn.dst <= 15 or not 0 <= insn.src <= 15:
        raise ValueError(f"register out of range in {insn}")
    if not -0x8000 <= insn.off <= 0xFFFF:
        raise ValueError(f"offset {insn.off} does not fit 16 bits in {insn}")
    regs = insn.dst | (insn.src << 4)
    if insn.is_wide:
        lo = insn.imm & 0xFFFFFFFF
        hi = (insn.imm >> 32) & 0xFFFFFFFF
        return (struct.pack("<BBhi", insn.code, regs, _s16(insn.off), _s32(lo))
                + struct.pack("<BBhi", 0, 0, 0, _s32(hi)))
    if not -0x80000000 <= insn.imm <= 0xFFFFFFFF:
        raise ValueError(f"immediate {insn.imm} does not fit 32 bits in {insn}")
    return struct.pack("<BBhi", insn.code, regs, _s16(insn.off), _s32(insn.imm))


def encode(insns) -> bytes:
    return b"".join(encode_one(i) for i in insns)


def decode(data: bytes, comments=None) -> list[Insn]:
    """Raw instruction bytes (8 per slot) -> instructions. Immediates and
    offsets come back signed; a LD_IMM64's imm is the unsigned 64-bit value.
    `comments`: one per instruction ("" for none), given to each as it is made."""
    if len(data) % SLOT:
        raise ValueError(f"instruction bytes must be a multiple of 8, got {len(data)}")
    out: list[Insn] = []
    slots = struct.iter_unpack("<BBhi", data)
    for n, (code, regs, off, imm) in enumerate(slots):
        comment = (comments[len(out)] or None) if comments is not None and len(out) < len(comments) else None
        if code == OPCODE_LD_IMM64:
            second = next(slots, None)
            if second is None:
                raise ValueError(f"LD_IMM64 at slot {n} is missing its second slot")
            imm = (imm & 0xFFFFFFFF) | ((second[3] & 0xFFFFFFFF) << 32)
        out.append(Insn(code, regs & 0xF, regs >> 4, off, imm, comment=comment))
    if comments is not None and len(comments) != len(out):
        raise ValueError(f"{len(comments)} annotations for {len(out)} instructions")
    return out


def canonical(insn: Insn) -> Insn:
    """The instruction as its encoding reads back: imm a signed 32-bit value
    (0xFFFFFFFF and -1 are one encoding), off a signed 16-bit value. An
    engine interprets the canonical form, never the spelling it was given."""
    if insn.is_wide:
        return insn
    imm, off = _s32(insn.imm), _s16(insn.off)
    if imm == insn.imm and off == insn.off:
        return insn
    return dataclasses.replace(insn, imm=imm, off=off)


def slot_count(insns) -> int:
    return sum(i.slots for i in insns)


def resolve_maps(insns, fds: dict[str, int]) -> list[Insn]:
    """Replace each map reference by the fd (or VM handle) the loader holds.
    For PSEUDO_MAP_VALUE the high 32 bits of imm (the value offset) are kept."""
    out = []
    for insn in insns:
        if insn.ref is None:
            out.append(insn)
            continue
        if insn.ref not in fds:
            raise KeyError(f"program refers to map {insn.ref!r}, which was not created")
        imm = (insn.imm & ~0xFFFFFFFF) | (fds[insn.ref] & 0xFFFFFFFF)
        out.append(dataclasses.replace(insn, imm=imm))
    return out


def map_refs(insns) -> list[str]:
    """Names of the maps a program refers to, in first-use order."""
    seen: dict[str, None] = {}
    for insn in insns:
        if insn.ref is not None:
            seen.setdefault(insn.ref, None)
    return list(seen)
