"""Disassembler: instructions -> text in LLVM's BPF syntax, as `llvm-objdump
-d --mcpu=v4` prints it (immediates in hex by default), and a listing with
slot numbers and source annotations to read beside `bpftool prog dump xlated`.

Used by debugging output, error reports (the verifier log names slots) and
tests. Every line re-assembles with `asm.assemble` to the same bytes; the
syntax tables come from `syntax`, reversed here. (`asm` and `disasm` are
sibling layers: neither imports the other.)

Where llvm-objdump's text would not re-assemble to the same bytes we print
`asm`'s extensions instead: `call pc+N` for bpf-to-bpf calls (objdump prints
them like helper calls), `call kfunc N`, `skb[r1 + N]` for LD_IND with an
imm (objdump drops it), `ld_pseudo rD, SRC, IMM, NEXT` when the second slot's
imm is not zero, and `r1 = NAME ll` for unresolved map references.

An instruction the kernel would reject for its encoding alone -- unknown
opcode, reserved field not zero, register above r10 -- is printed as
`.invalid code=0x.. dst=.. src=.. off=.. imm=..`, which `asm` refuses to
assemble. (llvm-objdump prints `<unknown>` for some of these and silently
ignores the reserved fields of others.)
"""
from __future__ import annotations

from . import isa, syntax

# Reverse syntax tables, derived from the forward ones `asm` reads.
ALU_OPERATOR_TEXT = {v: k for k, v in syntax.ALU_OPERATORS.items()}
CONDITION_TEXT = {v: k for k, v in syntax.CONDITION_OPS.items()}
MEM_TYPE_TEXT = {v: k for k, v in syntax.MEM_TYPES.items()}
SIGNED_MEM_TYPE_TEXT = {v: k for k, v in syntax.SIGNED_MEM_TYPES.items()}
SWAP_TEXT = {v: k for k, v in syntax.SWAPS.items()}
LOCK_TEXT = {isa.ATOMIC_OPS[name]: text for text, name in syntax.ATOMIC_OPERATORS.items()}
FETCH_TEXT = {isa.ATOMIC_OPS[name] | isa.FETCH: name for name in syntax.ATOMIC_OPERATORS.values()}


class _Invalid(Exception):
    """The instruction has no text form; format_insn prints `.invalid`."""


def _need(condition: bool) -> None:
    if not condition:
        raise _Invalid


class _Fmt:
    """Number formatting: llvm-objdump's hex by default (its
    --print-imm-hex), decimal on request; `labels` maps slot -> name for
    jump targets shown as labels."""

    def __init__(self, hex_imm: bool, slot: int = 0, labels: dict[int, str] | None = None):
        self.hex_imm, self.slot, self.labels = hex_imm, slot, labels or {}

    def num(self, v: int) -> str:
        if not self.hex_imm:
            return str(v)
        return f"-0x{-v:x}" if v < 0 else f"0x{v:x}"

    def signed(self, v: int) -> str:
        return ("+" if v >= 0 else "") + self.num(v)

    def mem(self, base: int, off: int) -> str:
        sign = "-" if off < 0 else "+"
        return f"(r{base} {sign} {self.num(abs(off))})"

    def jump(self, distance: int) -> str:
        target = self.slot + 1 + distance
        return self.labels.get(target) or self.signed(distance)


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - 2**32 if v >= 2**31 else v


def _alu(insn: isa.Insn, f: _Fmt) -> str:
    klass, o, is_x = isa.cls(insn.code), isa.op(insn.code), isa.source(insn.code) == isa.X
    p = "w" if klass == isa.ALU else "r"
    d, s, imm = insn.dst, insn.src, _s32(insn.imm)
    if o == isa.END:
        name = SWAP_TEXT.get((insn.code, imm))
        _need(name is not None and s == 0 and insn.off == 0)
        return f"r{d} = {name} r{d}"
    if o == isa.NEG:
        _need(not is_x and s == 0 and insn.off == 0 and imm == 0)
        return f"{p}{d} = -{p}{d}"
    if o == isa.MOV:
        if not is_x:
            _need(s == 0 and insn.off == 0)
            return f"{p}{d} = {f.num(imm)}"
        _need(imm == 0 and (insn.off == 0 or insn.off in syntax.MOVSX_BITS[klass]))
        cast = f"(s{insn.off})" if insn.off else ""
        return f"{p}{d} = {cast}{p}{s}"
    text = ALU_OPERATOR_TEXT.get((o, insn.off))
    _need(text is not None)
    if is_x:
        _need(imm == 0)
        return f"{p}{d} {text}= {p}{s}"
    _need(s == 0)
    return f"{p}{d} {text}= {f.num(imm)}"


def _jmp(insn: isa.Insn, f: _Fmt) -> str:
    klass, o, is_x = isa.cls(insn.code), isa.op(insn.code), isa.source(insn.code) == isa.X
    name = isa.JMP_OP_NAMES.get(o)
    d, s, off, imm = insn.dst, insn.src, insn.off, _s32(insn.imm)
    if o == isa.JA:
        _need(not is_x and d == 0 and s == 0)
        if klass == isa.JMP:
            _need(imm == 0)
            return f"goto {f.jump(off)}"
        _need(off == 0)
        return f"gotol {f.jump(imm)}"
    if name in ("call", "exit"):
        _need(klass == isa.JMP)
    if name == "exit":
        _need(not is_x and d == s == off == imm == 0)
        return "exit"
    if name == "call":
        if is_x:
            _need(s == 0 and off == 0 and imm == 0)
            return f"callx r{d}"
        _need(d == 0 and (off == 0 or s == isa.CALL_KFUNC))
        if s == isa.CALL_HELPER:
            return f"call {f.num(imm)}"
        if s == isa.CALL_LOCAL:
            target = f.jump(imm)
            return f"call {target}" if target[0] not in "+-" else f"call pc{target}"
        _need(s == isa.CALL_KFUNC)
        return f"call kfunc {f.num(imm)}" + (f", {f.num(off)}" if off else "")
    _need(name in isa.CONDITIONS)
    p = "w" if klass == isa.JMP32 else "r"
    cond = CONDITION_TEXT[o]
    if is_x:
        _need(imm == 0)
        return f"if {p}{d} {cond} {p}{s} goto {f.jump(off)}"
    _need(s == 0)
    return f"if {p}{d} {cond} {f.num(imm)} goto {f.jump(off)}"


def _ld(insn: isa.Insn, f: _Fmt) -> str:
    d, s, imm = insn.dst, insn.src, insn.imm
    if insn.code == isa.OPCODE_LD_IMM64:
        _need(insn.off == 0 and 0 <= imm < 2**64 and s <= isa.PSEUDO_MAP_IDX_VALUE)
        lo, hi = imm & 0xFFFFFFFF, imm >> 32
        if s == 0:
            _need(insn.ref is None)
            return f"r{d} = {f.num(imm - 2**64 if imm >= 2**63 else imm)} ll"
        # A resolved reference (fd in imm) prints as the number it now is.
        ref = insn.ref if insn.ref is not None and lo == 0 else None
        if s == isa.PSEUDO_MAP_FD and ref and hi == 0:
            return f"r{d} = {ref} ll"
        text = f"ld_pseudo r{d}, {f.num(s)}, {ref or f.num(lo)}"
        return text + (f", {f.num(hi)}" if hi else "")
    size, mode = isa.size(insn.code), isa.mode(insn.code)
    _need(mode in (isa.ABS, isa.IND) and size != isa.DW and d == 0 and insn.off == 0)
    kind = MEM_TYPE_TEXT[size]
    if mode == isa.ABS:
        _need(s == 0)
        return f"r0 = *({kind} *)skb[{f.num(_s32(imm))}]"
    index = f.mem(s, _s32(imm))[1:-1] if imm else f"r{s}"
    return f"r0 = *({kind} *)skb[{index}]"


def _ldx(insn: isa.Insn, f: _Fmt) -> str:
    size, mode = isa.size(insn.code), isa.mode(insn.code)
    _need(insn.imm == 0)
    addr = f.mem(insn.src, insn.off)
    if mode == isa.MEMSX:
        _need(size != isa.DW)
        return f"r{insn.dst} = *({SIGNED_MEM_TYPE_TEXT[size]} *){addr}"
    _need(mode == isa.MEM)
    # Narrow loads zero-extend, so objdump (alu32) names the w register.
    p = "r" if size == isa.DW else "w"
    return f"{p}{insn.dst} = *({MEM_TYPE_TEXT[size]} *){addr}"


def _st(insn: isa.Insn, f: _Fmt) -> str:
    _need(isa.mode(insn.code) == isa.MEM and insn.src == 0)
    addr = f.mem(insn.dst, insn.off)
    return f"*({MEM_TYPE_TEXT[isa.size(insn.code)]} *){addr} = {f.num(_s32(insn.imm))}"


def _stx(insn: isa.Insn, f: _Fmt) -> str:
    size, mode = isa.size(insn.code), isa.mode(insn.code)
    kind, addr = MEM_TYPE_TEXT[size], f.mem(insn.dst, insn.off)
    p = "r" if size == isa.DW else "w"
    s, imm = insn.src, _s32(insn.imm)
    if mode == isa.MEM:
        _need(imm == 0)
        return f"*({kind} *){addr} = {p}{s}"
    _need(mode == isa.ATOMIC and size in (isa.W, isa.DW))
    if imm in LOCK_TEXT:
        return f"lock *({kind} *){addr} {LOCK_TEXT[imm]}= {p}{s}"
    if imm in FETCH_TEXT:
        return f"{p}{s} = atomic_fetch_{FETCH_TEXT[imm]}(({kind} *){addr}, {p}{s})"
    if imm == isa.ATOMIC_OPS["xchg"]:
        return f"{p}{s} = {syntax.XCHG_NAMES[size]}({addr[1:-1]}, {p}{s})"
    _need(imm == isa.ATOMIC_OPS["cmpxchg"])
    return f"{p}0 = {syntax.CMPXCHG_NAMES[size]}({addr[1:-1]}, {p}0, {p}{s})"


_BY_CLASS = {isa.ALU: _alu, isa.ALU64: _alu, isa.JMP: _jmp, isa.JMP32: _jmp,
             isa.LD: _ld, isa.LDX: _ldx, isa.ST: _st, isa.STX: _stx}


def _text(insn: isa.Insn, f: _Fmt) -> str:
    try:
        # src above r10 can only be a pseudo kind (LD_IMM64); the call kinds
        # are all small and checked in _jmp.
        _need(insn.dst <= syntax.MAX_REG and
              (insn.src <= syntax.MAX_REG or insn.code == isa.OPCODE_LD_IMM64))
        _need(insn.ref is None or insn.code == isa.OPCODE_LD_IMM64)
        return _BY_CLASS[isa.cls(insn.code)](insn, f)
    except _Invalid:
        return (f".invalid code=0x{insn.code:02x} dst={insn.dst} src={insn.src} "
                f"off={insn.off} imm={insn.imm}")


def format_insn(insn: isa.Insn, hex_imm: bool = True) -> str:
    """One instruction's text; jumps as relative `+N` / `-N` slots."""
    return _text(insn, _Fmt(hex_imm))


def _jump_targets(insns) -> dict[int, str]:
    """Slot -> label name for every jump/call target that starts an
    instruction (a target elsewhere stays numeric)."""
    starts, slot = set(), 0
    for insn in insns:
        starts.add(slot)
        slot += insn.slots
    targets, slot = {}, 0
    for insn in insns:
        klass, o = isa.cls(insn.code), isa.op(insn.code)
        distance = None
        if klass in (isa.JMP, isa.JMP32) and o not in (isa.CALL, isa.EXIT):
            distance = insn.imm if (klass == isa.JMP32 and o == isa.JA) else insn.off
        elif klass == isa.JMP and o == isa.CALL and insn.src == isa.CALL_LOCAL:
            distance = insn.imm
        if distance is not None and slot + 1 + distance in starts:
            targets[slot + 1 + distance] = f"L{slot + 1 + distance}"
        slot += insn.slots
    return targets


def _lines(insns, hex_imm: bool, labels: bool):
    """(slot, label or None, text) per instruction."""
    insns = list(insns)
    names = _jump_targets(insns) if labels else {}
    slot = 0
    for insn in insns:
        yield slot, names.get(slot), _text(insn, _Fmt(hex_imm, slot, names))
        slot += insn.slots


def disassemble(insns, labels: bool = False, hex_imm: bool = True) -> list[str]:
    """One line per instruction. With `labels`, jump targets are named
    `L<slot>` and the target line starts with `L<slot>: `, so the text
    re-assembles without counting slots."""
    return [f"{label}: {text}" if label else text
            for _, label, text in _lines(insns, hex_imm, labels)]


def listing(insns, annotate: bool = True, raw: bool = False,
            labels: bool = False, hex_imm: bool = True) -> list[str]:
    """Human-readable listing lines: slot index, the encoded bytes if `raw`,
    the text, and each instruction's source comment (`annotate`) -- slot
    numbers match the verifier log and `bpftool prog dump xlated`. With
    `labels`, each jump target gets its own `L<slot>:` line."""
    insns = list(insns)
    rows = list(_lines(insns, hex_imm, labels))
    width = min(max((len(t) for _, _, t in rows), default=0), 48)
    out = []
    for insn, (slot, label, text) in zip(insns, rows):
        if label:
            out.append(f"{label}:")
        line = f"{slot:5d}: "
        if raw:
            line += f"{isa.encode_one(insn).hex(' '):<47}  "
        notes = [insn.comment] if annotate and insn.comment else []
        if insn.ref is not None and insn.ref not in text:
            notes.append(f"map {insn.ref}")
        if insn.group is not None:
            notes.append(f"group {insn.group}: the node's bit, resolved at load")
        line += f"{text:<{width}}  # {'; '.join(notes)}" if notes else text
        out.append(line.rstrip())
    return out
