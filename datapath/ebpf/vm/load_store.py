"""The LD, LDX, ST and STX classes: memory loads and stores, atomics,
LD_IMM64 (constants and map references) and the legacy LD_ABS/LD_IND packet
loads, each compiled to a closure bound to the run state.

Called by machine.compile_program. Every access goes through memory.Memory,
which raises Fault for what the kernel would reject; the closures only
decode the instruction once and keep its operands.

Semantics notes: LD_ABS/LD_IND out of the packet end the program with r0 = 0
(what the kernel does), and clobber r1-r5 like a helper call. Atomics are
allowed on the stack and on map values only, as the verifier allows.
"""
from __future__ import annotations

import operator

from .. import isa
from .alu import sx
from .memory import KIND_NAMES, M32, M64, MAP_VALUE, STACK, Fault
from .state import EXIT, Uninit


def compile_ldx(insn, n, st):
    """LDX: r[dst] = *(size *)(r[src] + off), sign-extended for MEMSX."""
    r, mem = st.r, st.mem
    c, d, s, off = insn.code, insn.dst, insn.src, insn.off
    size = isa.SIZE_BYTES[isa.size(c)]
    m = isa.mode(c)
    load = mem.load
    if m == isa.MEM:
        def f():
            r[d] = load(r[s] + off, size)
            return n
        return f
    if m == isa.MEMSX and size != 8:
        bits = 8 * size

        def f():
            r[d] = sx(load(r[s] + off, size), bits) & M64
            return n
        return f
    raise Fault(f"unknown LDX opcode {c:#04x}")


def compile_store(insn, n, st):
    """ST (immediate) and STX (register) stores, and STX atomics."""
    r, mem = st.r, st.mem
    c, d, s, off, imm = insn.code, insn.dst, insn.src, insn.off, insn.imm
    size = isa.SIZE_BYTES[isa.size(c)]
    m = isa.mode(c)
    store = mem.store
    if m == isa.MEM:
        if isa.cls(c) == isa.ST:
            value = imm & M64

            def f():
                store(r[d] + off, size, value)
                return n
            return f

        def f():
            v = r[s]
            if v is None:
                raise Uninit(s)
            store(r[d] + off, size, v)
            return n
        return f
    if m == isa.ATOMIC and isa.cls(c) == isa.STX and size in (4, 8):
        return _compile_atomic(insn, n, st, size)
    raise Fault(f"unknown store opcode {c:#04x}")


_ATOMIC_FN = {isa.ATOMIC_OPS["add"]: operator.add, isa.ATOMIC_OPS["or"]: operator.or_,
              isa.ATOMIC_OPS["and"]: operator.and_, isa.ATOMIC_OPS["xor"]: operator.xor}


def _compile_atomic(insn, n, st, size):
    r, mem = st.r, st.mem
    d, s, off, imm = insn.dst, insn.src, insn.off, insn.imm
    mask = M32 if size == 4 else M64
    fetch = imm & isa.FETCH
    fn = _ATOMIC_FN.get(imm & ~isa.FETCH)

    def target(addr):
        region, _ = mem.region_for(addr, size, True)
        if region.kind not in (STACK, MAP_VALUE):   # the verifier's rule
            raise Fault(f"atomic operation on {KIND_NAMES[region.kind]} memory is not allowed")

    if imm == isa.ATOMIC_OPS["xchg"]:
        fn, fetch = (lambda old, new: new), True
    if fn is not None:
        def f():
            addr = r[d] + off
            target(addr)
            old = mem.load(addr, size)
            mem.store(addr, size, fn(old, r[s] & mask) & mask)
            if fetch:
                r[s] = old
            return n
        return f
    if imm == isa.ATOMIC_OPS["cmpxchg"]:
        def f():
            addr = r[d] + off
            target(addr)
            old = mem.load(addr, size)
            new = r[s] & mask
            if old == r[0] & mask:
                mem.store(addr, size, new)
            r[0] = old
            return n
        return f
    raise Fault(f"unknown atomic operation {imm:#x}")


def compile_ld(insn, n, st):
    """LD class: LD_IMM64 (a constant, a map handle or a pointer into a
    one-entry array's value) and LD_ABS/LD_IND."""
    r = st.r
    c, d, s, imm = insn.code, insn.dst, insn.src, insn.imm
    if c == isa.OPCODE_LD_IMM64:
        if s == isa.PSEUDO_IMM64:
            value = imm & M64

            def f():
                r[d] = value
                return n
            return f
        if s in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE):
            name = insn.ref
            if name is None or name not in st.maps:
                raise Fault(f"map reference {name!r} has no VM map (pass it in maps=)")
            if s == isa.PSEUDO_MAP_FD:
                def f():
                    r[d] = st.handles[name]
                    return n
                return f
            the_map = st.maps[name]
            value_off = (imm >> 32) & M32
            if the_map.max_entries != 1 or the_map.percpu or value_off >= the_map.value_size:
                raise Fault(f"direct value access to map {name!r} needs a 1-entry array "
                            f"and an offset inside the value")

            def f():
                r[d] = st.mem.value_ptr(the_map.prog_lookup(bytes(4))) + value_off
                return n
            return f
        raise Fault(f"LD_IMM64 with src {s} is not supported by the VM")
    m = isa.mode(c)
    if m in (isa.ABS, isa.IND):
        size = isa.SIZE_BYTES[isa.size(c)]
        if size == 8:
            raise Fault("LD_ABS/LD_IND cannot load 8 bytes")
        ind = m == isa.IND

        def f():
            if r[6] is None:
                raise Uninit(6)
            at = ((r[s] if ind else 0) + imm) & M32
            at = at - (1 << 32) if at >> 31 else at
            pkt = st.pkt
            r[1] = r[2] = r[3] = r[4] = r[5] = None
            if at < 0 or at + size > len(pkt):
                r[0] = 0          # the kernel ends the program returning 0
                st.frames.clear()
                return EXIT
            r[0] = int.from_bytes(pkt[at:at + size], "big")
            return n
        return f
    raise Fault(f"unknown LD opcode {c:#04x}")
