"""The interpreter: compiles a program once into one closure per
instruction, then runs it on packets.

Called by vm.Program (vm/__init__.py): compile_program when the Program is
built, execute for every packet. The closures come from one module per
instruction family — alu.py (ALU, ALU64), load_store.py (LD, LDX, ST, STX),
control_flow.py (JMP, JMP32) — and are bound to a state.Run, which holds the
registers, memory.py's regions, the packet and skb.py's context.

Each closure does its work and returns the index of the next instruction
(state.EXIT ends the run). Jumps are resolved from slot offsets to indices at
compile time, so the loop is just `pc = code[pc]()`: no decoding and no
dispatch per instruction.

Failures: a closure raises memory.Fault (what the kernel would reject or
kill) or state.Uninit (a register never written); any other Python error is
diagnosed by reads_of. execute turns all of them into VmError carrying the pc.
"""
from __future__ import annotations

from .. import isa
from ..errors import VmError
from . import alu, control_flow, load_store
from . import helpers as _helpers
from .memory import Fault
from .state import Run, Uninit


def reads_of(insn: isa.Insn) -> list[int]:
    """Registers an instruction reads, in the order the verifier checks them
    (source first), for the uninitialised-register diagnosis."""
    c, k = insn.code, isa.cls(insn.code)
    if k in (isa.ALU, isa.ALU64):
        o = isa.op(c)
        regs = [insn.src] if isa.source(c) == isa.X and o not in (isa.NEG, isa.END) else []
        return regs if o == isa.MOV else regs + [insn.dst]
    if k == isa.LDX:
        return [insn.src]
    if k == isa.ST:
        return [insn.dst]
    if k == isa.STX:
        regs = [insn.src, insn.dst]
        if isa.mode(c) == isa.ATOMIC and insn.imm == isa.ATOMIC_OPS["cmpxchg"]:
            regs.append(isa.R0)
        return regs
    if k == isa.LD:
        regs = [isa.R6] if isa.mode(c) in (isa.ABS, isa.IND) else []
        return regs + ([insn.src] if isa.mode(c) == isa.IND else [])
    o = isa.op(c)
    if o == isa.CALL:
        spec = _helpers.HELPERS.get(insn.imm)
        return [1, 2, 3, 4, 5][:spec[1]] if insn.src == isa.CALL_HELPER and spec else []
    if o == isa.EXIT:
        return [isa.R0]
    if o == isa.JA:
        return []
    return ([insn.src] if isa.source(c) == isa.X else []) + [insn.dst]


def compile_program(insns: list[isa.Insn], st: Run) -> list:
    """One closure per instruction, bound to `st`. Raises VmError for
    instructions the kernel would refuse to load (bad opcode, jump into the
    middle of a LD_IMM64 or out of the program, write to r10...)."""
    slot_of = []
    slot = 0
    for insn in insns:
        slot_of.append(slot)
        slot += insn.slots
    index_of = {s: i for i, s in enumerate(slot_of)}
    code = []
    for i, insn in enumerate(insns):
        try:
            code.append(_compile_one(insn, i, slot_of, index_of, st))
        except Fault as exc:
            raise VmError(str(exc), slot_of[i]) from None
    return code


def _compile_one(insn, i, slot_of, index_of, st):
    r = st.r
    c, d, s = insn.code, insn.dst, insn.src
    k = isa.cls(c)
    n = i + 1
    if d > 10 or s > 10:
        raise Fault(f"invalid register in {insn}")
    writes_dst = k in (isa.ALU, isa.ALU64, isa.LDX) or c == isa.OPCODE_LD_IMM64
    if writes_dst and d == isa.R10:
        raise Fault("frame pointer is read only")

    if k in (isa.ALU, isa.ALU64):
        return alu.compile_alu(insn, n, r)
    if k == isa.LDX:
        return load_store.compile_ldx(insn, n, st)
    if k in (isa.ST, isa.STX):
        return load_store.compile_store(insn, n, st)
    if k == isa.LD:
        return load_store.compile_ld(insn, n, st)
    return control_flow.compile_jmp(insn, i, n, slot_of, index_of, st)


def execute(code: list, insns: list[isa.Insn], slot_of: list[int], st: Run,
            max_steps: int) -> int:
    """Run from instruction 0 until the outermost EXIT. Returns the number of
    instructions executed. Every failure leaves as VmError with the pc."""
    pc = 0
    steps = 0
    try:
        while pc >= 0:
            if steps >= max_steps:
                raise VmError(f"program did not finish within {max_steps} instructions",
                              slot_of[pc])
            steps += 1
            pc = code[pc]()
    except VmError:
        raise
    except Fault as exc:
        raise VmError(str(exc), slot_of[pc]) from None
    except Uninit as exc:
        raise VmError(f"R{exc.reg} !read_ok (register never written)", slot_of[pc]) from None
    except Exception as exc:   # a Python error inside the VM must not escape raw
        for reg in reads_of(insns[pc]):
            if st.r[reg] is None:
                raise VmError(f"R{reg} !read_ok (register never written)",
                              slot_of[pc]) from None
        raise VmError(f"internal VM error on {insns[pc]}: {exc!r}", slot_of[pc]) from exc
    return steps
