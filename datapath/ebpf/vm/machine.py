"""The interpreter: compiles a program once into one closure per
instruction, then runs it on packets.

Called by vm.run / vm.Program (vm/__init__.py). Uses memory.py for every
load and store, skb.py for the context, helpers.py for CALLs.

Register model: `r` is a list of 11 Python ints (unsigned 64-bit) or None
for "never written" (the verifier's NOT_INIT). Reading a None register makes
the operation raise, and the loop turns that into VmError "R2 !read_ok" by
looking at which register the faulting instruction read. Helper calls set
r1-r5 back to None (clobbered); a local call gives the callee fresh r0 and
r6-r9 and restores the caller's r6-r9 and r10 on return.

Each closure does its work and returns the index of the next instruction
(-1 ends the run). Jumps are resolved from slot offsets to indices at
compile time, so the loop is just `pc = code[pc]()`.

Semantics notes (RFC 9669 and the kernel where the RFC leaves room):
- shift amounts are masked to 63 / 31 (the RFC leaves out-of-range shifts
  undefined; x86 and arm64 JITs and the interpreter mask);
- division by zero gives 0, modulo by zero leaves dst (32-bit: zero-extended);
  signed INT_MIN / -1 gives INT_MIN and INT_MIN % -1 gives 0 (what the
  verifier's rewrite produces);
- LD_ABS/LD_IND out of the packet end the program with r0 = 0.
"""
from __future__ import annotations

import operator
import random
import time

from .. import isa
from ..errors import VmError
from ..helper_ids import Helper
from . import helpers as _helpers
from . import skb as _skb
from .memory import CTX, KIND_NAMES, M32, M64, MAP_HANDLE, MAP_VALUE, PACKET, STACK, Fault, Memory

MAX_CALL_DEPTH = 8
STACK_SIZE = isa.STACK_SIZE
EXIT = -1


class _Uninit(Exception):
    def __init__(self, reg: int):
        self.reg = reg


def _sx(value: int, bits: int) -> int:
    """Sign-extend the low `bits` of value to a Python int."""
    sign = 1 << (bits - 1)
    return ((value & ((1 << bits) - 1)) ^ sign) - sign


def _bswap(value: int, nbytes: int) -> int:
    return int.from_bytes((value & ((1 << (8 * nbytes)) - 1)).to_bytes(nbytes, "little"), "big")


# --- ALU operation tables: (a, b) -> result, operands already masked to width ---

def _alu_table(bits: int, mask: int, shmask: int):
    def sdiv(a, b):
        sa, sb = _sx(a, bits), _sx(b, bits)
        if sb == 0:
            return 0
        q = abs(sa) // abs(sb)
        return (-q if (sa < 0) != (sb < 0) else q) & mask

    def smod(a, b):
        sa, sb = _sx(a, bits), _sx(b, bits)
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
        (isa.ARSH, 0): lambda a, b: (_sx(a, bits) >> (b & shmask)) & mask,
    }


ALU64_OPS = _alu_table(64, M64, 63)
ALU32_OPS = _alu_table(32, M32, 31)

_COND = {isa.JEQ: operator.eq, isa.JNE: operator.ne, isa.JGT: operator.gt,
         isa.JGE: operator.ge, isa.JLT: operator.lt, isa.JLE: operator.le,
         isa.JSET: operator.and_, isa.JSGT: operator.gt, isa.JSGE: operator.ge,
         isa.JSLT: operator.lt, isa.JSLE: operator.le}
_SIGNED = {isa.JSGT, isa.JSGE, isa.JSLT, isa.JSLE}


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


class Run:
    """The mutable state of one program: registers, memory, the packet and
    the context. Created once per Program; reset at the start of each run
    (so a Program is not reentrant)."""

    def __init__(self, maps: dict):
        self.r: list = [None] * 11
        self.mem = Memory()
        self.maps = maps
        self.handles: dict[str, int] = {}
        self.frames: list = []
        self.pkt = bytearray()
        self.pkt_region = None
        self.ctx_image = bytearray()
        self.ctx = None
        self.redirect = None
        self.rng = random.Random(0)
        self.ktime = time.monotonic_ns

    def reset(self, packet: bytes, ctx: _skb.SkbContext, ktime_ns, seed: int) -> None:
        mem = self.mem
        mem.reset()
        self.frames.clear()
        self.redirect = None
        self.rng.seed(seed)
        if ktime_ns is None:
            self.ktime = time.monotonic_ns
        elif callable(ktime_ns):
            self.ktime = ktime_ns
        else:
            self.ktime = lambda value=ktime_ns: value
        self.handles = {name: mem.add(MAP_HANDLE, b"", obj=m).base
                        for name, m in self.maps.items()}
        self.ctx_image = ctx.image()
        self.ctx = _skb.CtxAccess(self.ctx_image)
        ctx_region = mem.add(CTX, self.ctx_image, obj=self.ctx)
        self.pkt = bytearray(packet)
        self.pkt_region = None
        self.invalidate_packet()
        stack = mem.add(STACK, bytearray(STACK_SIZE), init=bytearray(STACK_SIZE))
        r = self.r
        r[:] = [None] * 11
        r[1] = ctx_region.base
        r[10] = stack.base + STACK_SIZE

    def invalidate_packet(self) -> None:
        """Give the packet a fresh region: pointers made before a helper that
        may change packet data stop working, as the verifier demands."""
        if self.pkt_region is not None:
            self.mem.drop(self.pkt_region)
        self.pkt_region = self.mem.add(PACKET, self.pkt)
        self.ctx.data = self.pkt_region.base
        self.ctx.data_end = self.pkt_region.base + len(self.pkt)

    def set_hash(self, value: int) -> None:
        self.ctx_image[_skb.OFFSETS["hash"]:_skb.OFFSETS["hash"] + 4] = value.to_bytes(4, "little")


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


def _target(i, rel, slot_of, index_of):
    t = index_of.get(slot_of[i] + 1 + rel)
    if t is None:
        raise Fault(f"jump out of range or into the middle of an instruction "
                    f"(offset {rel:+d})")
    return t


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
        return _compile_alu(insn, n, r)
    if k == isa.LDX:
        return _compile_ldx(insn, n, st)
    if k in (isa.ST, isa.STX):
        return _compile_store(insn, n, st)
    if k == isa.LD:
        return _compile_ld(insn, n, st)
    return _compile_jmp(insn, i, n, slot_of, index_of, st)


def _compile_alu(insn, n, r):
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
                        raise _Uninit(s)
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
            r[d] = _sx(r[s], off) & mask
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


def _compile_ldx(insn, n, st):
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
            r[d] = _sx(load(r[s] + off, size), bits) & M64
            return n
        return f
    raise Fault(f"unknown LDX opcode {c:#04x}")


def _compile_store(insn, n, st):
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
                raise _Uninit(s)
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


def _compile_ld(insn, n, st):
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
                raise _Uninit(6)
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


def _compile_jmp(insn, i, n, slot_of, index_of, st):
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
            b = _sx(imm, 32)

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
            raise _Uninit(0)
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
                raise _Uninit(reg + 1)
        args = [0 if a is None else a for a in args]
        r[0] = int(fn(st, *args)) & M64
        r[1] = r[2] = r[3] = r[4] = r[5] = None
        if changes_pkt:
            st.invalidate_packet()
        return n
    return f


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
    except _Uninit as exc:
        raise VmError(f"R{exc.reg} !read_ok (register never written)", slot_of[pc]) from None
    except Exception as exc:   # a Python error inside the VM must not escape raw
        for reg in reads_of(insns[pc]):
            if st.r[reg] is None:
                raise VmError(f"R{reg} !read_ok (register never written)",
                              slot_of[pc]) from None
        raise VmError(f"internal VM error on {insns[pc]}: {exc!r}", slot_of[pc]) from exc
    return steps
