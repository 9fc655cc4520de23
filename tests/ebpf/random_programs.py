"""Hypothesis strategies for random programs the verifier accepts: ALU and
ALU64 of every operation, forward conditional and unconditional jumps (no
loops, so every program terminates), stack stores, loads, sign-extending
loads and atomics, context reads and writes.

Register plan: r6 holds the context for the whole program; r0-r5 and r7-r9
are scalars, all initialised first (the verifier rejects reading an
uninitialised register); r10 is the frame pointer. The stack below r10 is:
  [-64, 0)     scratch, zeroed first, where the random memory ops work
  [-136, -64)  register spill area for the epilogue
  [-144, -136) the map key
The epilogue copies every scalar register and the scratch area into the
value of array map `out` (key 0), so comparing that map compares the whole
final state, not only r0.
"""
from __future__ import annotations

from hypothesis import strategies as st

from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.builder import Builder, Reg, R0, R1, R6, R10
from tailor.datapath.ebpf.maps import MapSpec, MapType

SCALARS = [Reg(i) for i in (0, 1, 2, 3, 4, 5, 7, 8, 9)]
SCRATCH = 64
SPILL = -136
KEY = -144
OUT = MapSpec("out", MapType.ARRAY, 4, 8 * (len(SCALARS) + SCRATCH // 8), 1)

ALU_NAMES = ["add", "sub", "mul", "div", "sdiv", "mod", "smod", "or", "and", "xor",
             "lsh", "rsh", "arsh", "mov"]
# __sk_buff u32 fields a sched_cls program may read, and those it may write.
CTX_READ = [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64, 68, 72]
CTX_WRITE = [8, 32, 44, 48, 52, 56, 60, 64, 72]   # mark, priority, tc_index, cb[], tc_classid

interesting = st.sampled_from([0, 1, -1, 2, 7, 31, 32, 63, 64, 0x7FFFFFFF, -0x80000000,
                               0xFFFFFFFF, 0x80000000])
imm32 = st.one_of(interesting, st.integers(-(1 << 31), (1 << 31) - 1))
imm64 = st.one_of(interesting, st.integers(0, (1 << 64) - 1),
                  st.sampled_from([1 << 63, (1 << 64) - 1, (1 << 63) - 1]))
scalar = st.sampled_from(SCALARS)


@st.composite
def alu_op(draw):
    name = draw(st.sampled_from(ALU_NAMES))
    wide = draw(st.booleans())
    dst = draw(scalar)
    if name in ("lsh", "rsh", "arsh"):
        # An immediate shift beyond the width is rejected by the verifier;
        # a register shift of any amount is masked at run time.
        src = draw(st.one_of(scalar, st.integers(0, 63 if wide else 31)))
    elif name in ("div", "sdiv", "mod", "smod"):
        # Division by an immediate zero is rejected at load; by a register
        # holding zero it is defined (RFC 9669) and must be compared.
        src = draw(st.one_of(scalar, imm32.filter(lambda v: v & 0xFFFFFFFF)))
    else:
        src = draw(st.one_of(scalar, imm32))
    return ("alu", name, wide, dst, src)


@st.composite
def unary_op(draw):
    kind = draw(st.sampled_from(["neg", "be", "le", "bswap", "movsx64", "movsx32"]))
    dst = draw(scalar)
    if kind == "neg":
        return ("neg", draw(st.booleans()), dst)
    if kind in ("be", "le", "bswap"):
        return (kind, dst, draw(st.sampled_from([16, 32, 64])))
    bits = draw(st.sampled_from([8, 16, 32] if kind == "movsx64" else [8, 16]))
    return (kind, dst, draw(scalar), bits)


@st.composite
def mem_op(draw):
    kind = draw(st.sampled_from(["store", "store_imm", "load", "load_sx", "atomic"]))
    nbytes = draw(st.sampled_from([1, 2, 4, 8]))
    if kind == "atomic":
        nbytes = draw(st.sampled_from([4, 8]))
    if kind == "load_sx":
        nbytes = draw(st.sampled_from([1, 2, 4]))
    # Stack accesses must be aligned to their size.
    off = -SCRATCH + nbytes * draw(st.integers(0, SCRATCH // nbytes - 1))
    reg = draw(scalar)
    if kind == "store_imm":
        return (kind, nbytes, off, draw(imm32))
    if kind == "atomic":
        op = draw(st.sampled_from(["add", "or", "and", "xor", "xchg", "cmpxchg"]))
        fetch = op in ("xchg", "cmpxchg") or draw(st.booleans())
        return (kind, nbytes, off, reg, op, fetch)
    return (kind, nbytes, off, reg)


@st.composite
def ctx_op(draw):
    if draw(st.booleans()):
        return ("ctx_read", draw(scalar), draw(st.sampled_from(CTX_READ)))
    return ("ctx_write", draw(scalar), draw(st.sampled_from(CTX_WRITE)))


@st.composite
def jump_op(draw):
    cond = draw(st.sampled_from(sorted(isa.CONDITIONS) + ["ja"]))
    return ("jump", cond, draw(st.booleans()), draw(scalar), draw(st.one_of(scalar, imm32)),
            draw(st.integers(1, 6)))


op_strategy = st.one_of(alu_op(), alu_op(), unary_op(), mem_op(), mem_op(), ctx_op(), jump_op())


@st.composite
def programs(draw, max_ops: int = 40):
    """A (list of Insn, description) pair; the description is the op list."""
    inits = [draw(imm64) for _ in SCALARS]
    ops = draw(st.lists(op_strategy, min_size=1, max_size=max_ops))
    return build(inits, ops), ops


def build(inits, ops) -> list[isa.Insn]:
    b = Builder()
    b.mov64(R6, R1)
    for off in range(-SCRATCH, 0, 8):
        b.store(8, R10, off, 0)
    for reg, value in zip(SCALARS, inits):
        if -(1 << 31) <= value < (1 << 31):
            b.mov64(reg, value)
        else:
            b.ld_imm64(reg, value)
    targets: dict[int, list[str]] = {}
    for i, op in enumerate(ops):
        for name in targets.pop(i, []):
            b.label(name)
        _emit(b, op, i, len(ops), targets)
    b.label("end")
    for name in (n for names in targets.values() for n in names):
        b.label(name)
    _epilogue(b)
    return b.assemble()


def _emit(b: Builder, op, i: int, n: int, targets) -> None:
    kind = op[0]
    if kind == "alu":
        _, name, wide, dst, src = op
        base = {"sdiv": "div", "smod": "mod"}.get(name, name)
        b.alu(base, dst, src, wide=wide, off=1 if name in ("sdiv", "smod") else 0)
    elif kind == "neg":
        (b.neg64 if op[1] else b.neg32)(op[2])
    elif kind in ("be", "le", "bswap"):
        getattr(b, kind)(op[1], op[2])
    elif kind in ("movsx64", "movsx32"):
        getattr(b, kind)(op[1], op[2], op[3])
    elif kind == "store":
        b.store(op[1], R10, op[2], op[3])
    elif kind == "store_imm":
        b.store(op[1], R10, op[2], op[3])
    elif kind == "load":
        b.load(op[1], op[3], R10, op[2])
    elif kind == "load_sx":
        b.load_sx(op[1], op[3], R10, op[2])
    elif kind == "atomic":
        _, nbytes, off, reg, name, fetch = op
        b.atomic(nbytes, name, R10, off, reg, fetch=fetch)
    elif kind == "ctx_read":
        b.load(4, op[1], R6, op[2])
    elif kind == "ctx_write":
        b.store(4, R6, op[2], op[1])
    elif kind == "jump":
        _, cond, wide, dst, src, skip = op
        target = i + 1 + skip
        name = f"t{i}"
        targets.setdefault(min(target, n), []).append(name)
        if cond == "ja":
            b.jump(name)
        else:
            b.jump_if(cond, dst, src, name, wide=wide)
    else:
        raise AssertionError(f"unknown op {op}")


def _epilogue(b: Builder) -> None:
    for j, reg in enumerate(SCALARS):
        b.store(8, R10, SPILL + 8 * j, reg)
    b.store(4, R10, KEY, 0)
    b.map_lookup("out", KEY)
    b.jeq(R0, 0, "no_value")
    words = [SPILL + 8 * j for j in range(len(SCALARS))] + list(range(-SCRATCH, 0, 8))
    for j, off in enumerate(words):
        b.load(8, R1, R10, off)
        b.store(8, R0, 8 * j, R1)
    b.load(8, R0, R10, SPILL)
    b.exit()
    b.label("no_value")
    b.ret(0xDEAD)
