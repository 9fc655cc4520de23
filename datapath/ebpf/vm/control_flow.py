"""The JMP and JMP32 classes: unconditional and conditional jumps, EXIT,
bpf-to-bpf (local) calls and helper calls, each compiled to a closure that
returns the index of the next instruction.

Called by machine.compile_program. Jump offsets count slots (a LD_IMM64 is
two); they are resolved to instruction indices here, once, so a taken jump
costs no more than a fall-through. A target outside the program or inside a
LD_IMM64 is a Fault at compile time, as the kernel refuses to load it.

Calls: a local call pushes a frame (return index, the caller's r6-r10, a
fresh stack), MAX_CALL_DEPTH frames at most with the main one counted; EXIT
in a callee pops it. A helper call
runs the function helpers.HELPERS names for the id, with r1-r5 as its
arguments, and clobbers r1-r5; helpers that may change packet data move the
packet to a new region (state.Run.invalidate_packet).
"""
from __future__ import annotations

import operator

from .. import isa
from ..helper_ids import Helper
from . import helpers as _helpers
from .alu import sx
from .memory import M32, M64, STACK, Fault
from .state import EXIT, STACK_SIZE, Uninit

MAX_CALL_DEPTH = 8

_COND = {isa.JEQ: operator.eq, isa.JNE: operator.ne, isa.JGT: operator.gt,
         isa.JGE: operator.ge, isa.JLT: operator.lt, isa.JLE: operator.le,
         isa.JSET: operator.and_, isa.JSGT: operator.gt, isa.JSGE: operator.ge,
         isa.JSLT: operator.lt, isa.JSLE: operator.le}
_SIGNED = {isa.JSGT, isa.JSGE, isa.JSLT, isa.JSLE}


def _target(i, rel, slot_of, index_of):
    t = index_of.get(slot_of[i] + 1 + rel)
    if t is None:
        raise Fault(f"jump out of range or into the middle of an instruction "
                    f"(offset {rel:+d})")
    return t


def compile_jmp(insn, i, n, slot_of, index_of, st):
    """The closure for instruction i of the JMP or JMP32 class; n = i + 1.
    slot_of maps index to slot, index_of slot to index."""
    r = st.r
    c, d, s, off, imm = insn.code, insn.dst, insn.src, insn.off, insn.imm
    k, o, x = isa.cls(c), isa.op(c), isa.source(c) == isa.X
    if o == isa.JA:
        t = _target(i, imm if k == isa.JMP32 else off, slot_of, index_of)
        return lambda: t
    if o == isa.EXIT:
        return _compile_exit(st)
    if o == isa.CALL:
        if k != isa.JMP:
            raise Fault("CALL is a JMP-class instruction")
        if s == isa.CALL_LOCAL:
            return _compile_local_call(_target(i, imm, slot_of, index_of), n, st)
        if s == isa.CALL_HELPER:
            return _compile_helper(imm, n, st)
        raise Fault("kfunc calls are not supported by the VM")
    cmp = _COND.get(o)
    if cmp is None:
        raise Fault(f"unknown jump opcode {c:#04x}")
    t = _target(i, off, slot_of, index_of)
    bits = 32 if k == isa.JMP32 else 64
    mask = M32 if bits == 32 else M64
    if o in _SIGNED:
        sign = 1 << (bits - 1)
        if x:
            def f():
                return t if cmp(((r[d] & mask) ^ sign) - sign,
                                ((r[s] & mask) ^ sign) - sign) else n
        else:
            b = sx(imm, 32)

            def f():
                return t if cmp(((r[d] & mask) ^ sign) - sign, b) else n
        return f
    if x:
        def f():
            return t if cmp(r[d] & mask, r[s] & mask) else n
    else:
        b = imm & mask

        def f():
            return t if cmp(r[d] & mask, b) else n
    return f


def _compile_exit(st):
    r, frames = st.r, st.frames

    def f():
        if r[0] is None:
            raise Uninit(0)
        if not frames:
            return EXIT
        ret, saved, stack = frames.pop()
        st.mem.drop(stack)
        r[6], r[7], r[8], r[9], r[10] = saved
        r[1] = r[2] = r[3] = r[4] = r[5] = None
        return ret
    return f


def _compile_local_call(target, n, st):
    r, frames, mem = st.r, st.frames, st.mem

    def f():
        if len(frames) + 1 >= MAX_CALL_DEPTH:
            raise Fault(f"the call stack of {MAX_CALL_DEPTH} frames is too deep")
        stack = mem.add(STACK, bytearray(STACK_SIZE), init=bytearray(STACK_SIZE))
        frames.append((n, (r[6], r[7], r[8], r[9], r[10]), stack))
        r[0] = r[6] = r[7] = r[8] = r[9] = None
        r[10] = stack.base + STACK_SIZE
        return target
    return f


def _compile_helper(helper_id, n, st):
    r = st.r
    spec = _helpers.HELPERS.get(helper_id)
    if spec is None:
        try:
            name = Helper(helper_id).name
        except ValueError:
            name = "?"
        raise Fault(f"unknown helper {helper_id} ({name}): not modelled by the VM")
    name, nargs, fn, changes_pkt = spec

    def f():
        args = r[1:6]
        for reg in range(nargs):
            if args[reg] is None:
                raise Uninit(reg + 1)
        args = [0 if a is None else a for a in args]
        r[0] = int(fn(st, *args)) & M64
        r[1] = r[2] = r[3] = r[4] = r[5] = None
        if changes_pkt:
            st.invalidate_packet()
        return n
    return f
