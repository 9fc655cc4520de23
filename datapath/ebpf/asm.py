"""Text assembler for eBPF in LLVM's BPF syntax: what `llvm-mc -triple=bpf
-mcpu=v4` accepts and `llvm-objdump -d` prints (`r0 = 1`, `if w3 s> 7 goto
out`, `lock *(u64 *)(r1 + 0) += r2`, ...).

Used by tests and tools that write programs by hand, and to re-assemble what
`disasm` prints: `assemble("\\n".join(disassemble(insns)))` gives the same
bytes back. The text <-> encoding tables live in `syntax`, shared with
`disasm` (the two are sibling layers and may not import each other).

Lexical rules (as llvm-mc): `#` and `//` start a comment, `/* */` comments
may span lines, `;` separates statements (it is NOT a comment), numbers are
decimal, 0x hex, 0b binary or 0-prefixed octal, optionally negative. Where
llvm-mc is lenient we are strict: out-of-range immediates are errors (llvm-mc
truncates them), registers stop at r10 (llvm-mc takes r11).

`r1 = NAME ll` is a map reference: src PSEUDO_MAP_FD and `ref` NAME for the
loader to resolve (llvm-mc leaves src 0 and emits a relocation instead).

Extensions beyond llvm-mc, all so that every valid instruction has a text:
  call pc+N / call pc-N      bpf-to-bpf call by offset (the kernel log's form)
  call kfunc ID[, OFF]       kernel-function call (src 2)
  ld_pseudo rD, SRC, IMM[, NEXT]   NEXT is the second slot's imm (map value
                              offset); IMM may be a map name (a `ref`)
  r0 = *(u16 *)skb[r1 + 4]   LD_IND with a non-zero imm
  gotol +N with a 32-bit N   (llvm-mc only takes 16-bit numbers there)
`.invalid ...` lines, which the disassembler prints for bytes outside the
instruction set, are rejected with a message saying so.
"""
from __future__ import annotations

import collections
import dataclasses
import re

from . import isa
from .errors import AssemblyError
from .syntax import (ALU_OPERATORS, ATOMIC_OPERATORS, CMPXCHG_NAMES, CONDITION_OPS,
                     MAX_REG, MEM_TYPES, MOVSX_BITS, SIGNED_MEM_TYPES, SWAPS, XCHG_NAMES)

# --- the grammar: one regex per statement form --------------------------------

_NUM = r"[-+]?\s*(?:0[xX][0-9a-fA-F]+|0[bB][01]+|\d+)"
_IDENT = r"[A-Za-z_.$][\w.$]*"


def _alt(options) -> str:
    # Longest first so `s>>` is not read as `s>` + `>`.
    return "|".join(re.escape(o) for o in sorted(options, key=len, reverse=True))


_PIECES = {
    "dst": r"(?P<dst>[rw]\d+)", "src": r"(?P<src>[rw]\d+)",
    "base": r"(?P<base>[rw]\d+)", "old": r"(?P<old>[rw]\d+)",
    "operand": rf"(?P<operand>[rw]\d+|{_NUM}|{_IDENT})",
    "imm": rf"(?P<imm>{_NUM})", "off": rf"(?P<off>[-+]\s*{_NUM})",
    "target": rf"(?P<target>{_NUM}|{_IDENT})",
    "value": rf"(?P<value>{_NUM}|{_IDENT})", "next": rf"(?P<next>{_NUM})",
    "aop": f"(?P<aop>{_alt(ALU_OPERATORS)})", "cond": f"(?P<cond>{_alt(CONDITION_OPS)})",
    "lop": f"(?P<lop>{_alt(ATOMIC_OPERATORS)})",
    "fop": f"(?P<fop>{_alt(ATOMIC_OPERATORS.values())})",
    "type": r"(?P<type>[us]\d+)", "swap": f"(?P<swap>{_alt(SWAPS)})",
    "xname": r"(?P<xname>\w+)", "sx": r"(?P<sx>\d+)", "rest": r"(?P<rest>.*)",
}


def _compile(template: str) -> re.Pattern:
    """`{piece}` placeholders become the regexes above; a space in the
    template allows any whitespace, so `*(u64*)(r1+8)` parses too."""
    out = []
    for i, part in enumerate(re.split(r"\{(\w+)\}", template)):
        if i % 2:
            out.append(_PIECES[part])
        else:
            out.append(r"\s*".join(re.escape(w) for w in part.split(" ")))
    return re.compile(r"\s*" + "".join(out) + r"\s*$")


@dataclasses.dataclass
class _Stmt:
    """One statement on its way to an Insn; `fixup` names a label whose
    relative slot distance goes into off or imm once all labels are known."""
    insn: isa.Insn
    line: int
    text: str
    fixup: tuple[str, str] | None = None   # (field, label)


class _Line:
    """Parsing context of one statement: its line number and text, for
    errors, and the operand checks every form shares."""

    def __init__(self, number: int, text: str):
        self.number, self.text = number, text
        self.fixup: tuple[str, str] | None = None

    def error(self, message: str) -> AssemblyError:
        return AssemblyError(message, self.number, self.text)

    def number_of(self, text: str, lo: int, hi: int, what: str) -> int:
        value = parse_number(text)
        if value is None:
            raise self.error(f"expected a number for the {what}, got {text.strip()!r}")
        if not lo <= value <= hi:
            raise self.error(f"{what} {text.strip()} out of range [{lo}, {hi}]")
        return value

    def imm32(self, text: str) -> int:
        # Either signed or unsigned 32-bit spelling, as llvm-mc; stored signed.
        value = self.number_of(text, -2**31, 2**32 - 1, "immediate")
        return value - 2**32 if value >= 2**31 else value

    def off16(self, text: str, what: str = "offset") -> int:
        return self.number_of(text, -2**15, 2**15 - 1, what)

    def reg(self, text: str, want: str | None = None) -> tuple[int, str]:
        """Register number and its prefix (`r` or `w`); `want` demands one."""
        kind, n = text[0], int(text[1:])
        if n > MAX_REG:
            raise self.error(f"bad register {text}: registers are r0-r10")
        if want and kind != want:
            raise self.error(f"register {text} must be {want}{n} here")
        return n, kind

    def same_kind(self, *texts: str) -> str:
        kinds = {t[0] for t in texts}
        if len(kinds) > 1:
            raise self.error("w and r registers mixed in one instruction: " + ", ".join(texts))
        return kinds.pop()

    def target(self, text: str, field: str) -> int:
        """Numeric jump distance, or 0 and a fixup to patch when it is a label."""
        if re.fullmatch(_IDENT, text):
            self.fixup = (field, text)
            return 0
        if field == "off":
            return self.off16(text, "jump offset")
        return self.number_of(text, -2**31, 2**31 - 1, "jump offset")

    def mem_size(self, text: str, signed_ok: bool = False) -> int:
        if text in MEM_TYPES:
            return MEM_TYPES[text]
        if signed_ok and text in SIGNED_MEM_TYPES:
            return SIGNED_MEM_TYPES[text]
        raise self.error(f"bad memory type {text}: expected u8/u16/u32/u64"
                         + (" or s8/s16/s32" if signed_ok else ""))


def parse_number(text: str) -> int | None:
    """llvm-mc's integer literals; None when `text` is not one."""
    t = re.sub(r"\s+", "", text)
    sign = -1 if t.startswith("-") else 1
    t = t.lstrip("+-")
    try:
        if t[:2] in ("0x", "0X", "0b", "0B"):
            return sign * int(t, 0)
        if len(t) > 1 and t.startswith("0"):
            return sign * int(t, 8)       # C octal, as llvm-mc: 010 == 8
        return sign * int(t, 10)
    except ValueError:
        return None


# --- statement forms -----------------------------------------------------------
# Each handler gets the match and the line context and returns an Insn.

def _alu(m, ln: _Line) -> isa.Insn:
    """`rD OP= rS` / `rD OP= IMM`: the class follows the register kind."""
    aop, off = ALU_OPERATORS[m["aop"]]
    return _binary(ln, aop, off, m["dst"], m["operand"])


def _mov(m, ln: _Line) -> isa.Insn:
    return _binary(ln, isa.MOV, 0, m["dst"], m["operand"])


def _binary(ln: _Line, aop: int, off: int, dst: str, operand: str) -> isa.Insn:
    d, kind = ln.reg(dst)
    klass = isa.ALU if kind == "w" else isa.ALU64
    if operand[0] in "rw" and operand[1:].isdigit():
        ln.same_kind(dst, operand)
        return isa.Insn(klass | aop | isa.X, d, ln.reg(operand)[0], off)
    return isa.Insn(klass | aop | isa.K, d, 0, off, ln.imm32(operand))


def _neg(m, ln: _Line) -> isa.Insn:
    if m["dst"] != m["src"]:
        raise ln.error(f"negation is in place: write {m['dst']} = -{m['dst']}")
    d, kind = ln.reg(m["dst"])
    return isa.Insn((isa.ALU if kind == "w" else isa.ALU64) | isa.NEG, d)


def _movsx(m, ln: _Line) -> isa.Insn:
    d, kind = ln.reg(m["dst"])
    ln.same_kind(m["dst"], m["src"])
    klass = isa.ALU if kind == "w" else isa.ALU64
    bits = int(m["sx"])
    if bits not in MOVSX_BITS[klass]:
        raise ln.error(f"sign extension from s{bits} is not allowed into {m['dst']}")
    return isa.Insn(klass | isa.MOV | isa.X, d, ln.reg(m["src"])[0], bits)


def _swap(m, ln: _Line) -> isa.Insn:
    if m["dst"] != m["src"]:
        raise ln.error(f"byte swap is in place: write {m['dst']} = {m['swap']} {m['dst']}")
    code, bits = SWAPS[m["swap"]]
    return isa.Insn(code, ln.reg(m["dst"], "r")[0], 0, 0, bits)


def _load(m, ln: _Line) -> isa.Insn:
    size = ln.mem_size(m["type"], signed_ok=True)
    d, kind = ln.reg(m["dst"])
    signed = m["type"] in SIGNED_MEM_TYPES
    if kind == "w" and (signed or size == isa.DW):
        raise ln.error(f"a {m['type']} load needs an r register, not {m['dst']}")
    mode = isa.MEMSX if signed else isa.MEM
    return isa.Insn(isa.LDX | mode | size, d, ln.reg(m["base"], "r")[0],
                    ln.off16(m["off"]))


def _store(m, ln: _Line) -> isa.Insn:
    size = ln.mem_size(m["type"])
    base = ln.reg(m["base"], "r")[0]
    off = ln.off16(m["off"])
    operand = m["operand"]
    if operand[0] in "rw" and operand[1:].isdigit():
        s, kind = ln.reg(operand)
        if kind == "w" and size == isa.DW:
            raise ln.error(f"a u64 store needs an r register, not {operand}")
        return isa.Insn(isa.STX | isa.MEM | size, base, s, off)
    return isa.Insn(isa.ST | isa.MEM | size, base, 0, off, ln.imm32(operand))


def _atomic_size(ln: _Line, type_: str, *regs: str) -> int:
    size = ln.mem_size(type_)
    if size not in (isa.W, isa.DW):
        raise ln.error(f"atomic operations are u32 or u64, not {type_}")
    for r in regs:
        if size == isa.DW and r[0] == "w":
            raise ln.error(f"a u64 atomic needs r registers, not {r}")
    return size


def _atomic(ln: _Line, size: int, base: str, off: str, src: str, imm: int) -> isa.Insn:
    return isa.Insn(isa.STX | isa.ATOMIC | size, ln.reg(base, "r")[0],
                    ln.reg(src)[0], ln.off16(off), imm)


def _lock(m, ln: _Line) -> isa.Insn:
    size = _atomic_size(ln, m["type"], m["src"])
    imm = isa.ATOMIC_OPS[ATOMIC_OPERATORS[m["lop"]]]
    return _atomic(ln, size, m["base"], m["off"], m["src"], imm)


def _fetch(m, ln: _Line) -> isa.Insn:
    size = _atomic_size(ln, m["type"], m["dst"], m["src"])
    if m["dst"] != m["src"]:
        raise ln.error(f"atomic_fetch_{m['fop']} returns into its operand: "
                       f"write {m['src']} = atomic_fetch_{m['fop']}(..., {m['src']})")
    imm = isa.ATOMIC_OPS[m["fop"]] | isa.FETCH
    return _atomic(ln, size, m["base"], m["off"], m["src"], imm)


def _width_of(ln: _Line, names: dict[int, str], name: str, *regs: str) -> int:
    for size, known in names.items():
        if name == known:
            kind = "r" if size == isa.DW else "w"
            for r in regs:
                ln.reg(r, kind)
            return size
    raise ln.error(f"unknown mnemonic {name!r} (expected one of {', '.join(names.values())})")


def _xchg(m, ln: _Line) -> isa.Insn:
    size = _width_of(ln, XCHG_NAMES, m["xname"], m["dst"], m["src"])
    if m["dst"] != m["src"]:
        raise ln.error(f"{m['xname']} returns into its operand: write {m['src']} = ...")
    return _atomic(ln, size, m["base"], m["off"], m["src"], isa.ATOMIC_OPS["xchg"])


def _cmpxchg(m, ln: _Line) -> isa.Insn:
    size = _width_of(ln, CMPXCHG_NAMES, m["xname"], m["dst"], m["old"], m["src"])
    if ln.reg(m["dst"])[0] != 0 or ln.reg(m["old"])[0] != 0:
        raise ln.error("cmpxchg compares with and returns into r0/w0")
    return _atomic(ln, size, m["base"], m["off"], m["src"], isa.ATOMIC_OPS["cmpxchg"])


def _ld_imm64(m, ln: _Line) -> isa.Insn:
    d = ln.reg(m["dst"], "r")[0]
    value = m["value"]
    if re.fullmatch(_IDENT, value):
        return isa.Insn(isa.OPCODE_LD_IMM64, d, isa.PSEUDO_MAP_FD, ref=value)
    imm = ln.number_of(value, -2**63, 2**64 - 1, "64-bit immediate")
    return isa.Insn(isa.OPCODE_LD_IMM64, d, 0, 0, imm & (2**64 - 1))


def _ld_pseudo(m, ln: _Line) -> isa.Insn:
    d = ln.reg(m["dst"], "r")[0]
    src = ln.number_of(m["imm"], 0, 15, "pseudo source")
    hi = ln.number_of(m["next"], -2**31, 2**32 - 1, "second immediate") if m["next"] else 0
    hi = (hi & 0xFFFFFFFF) << 32
    value, ref = m["value"], None
    if re.fullmatch(_IDENT, value):
        lo, ref = 0, value
    else:
        lo = ln.number_of(value, -2**31, 2**32 - 1, "immediate") & 0xFFFFFFFF
    return isa.Insn(isa.OPCODE_LD_IMM64, d, src, 0, hi | lo, ref=ref)


def _ld_abs(m, ln: _Line) -> isa.Insn:
    ln.reg(m["dst"], "r")
    if m["dst"] != "r0":
        raise ln.error("packet loads (skb[...]) always load into r0")
    size = ln.mem_size(m["type"])
    if size == isa.DW:
        raise ln.error("packet loads are u8, u16 or u32")
    if m["src"]:
        imm = ln.imm32(m["off"]) if m["off"] else 0
        return isa.Insn(isa.LD | isa.IND | size, 0, ln.reg(m["src"], "r")[0], 0, imm)
    return isa.Insn(isa.LD | isa.ABS | size, 0, 0, 0, ln.imm32(m["imm"]))


def _jcond(m, ln: _Line) -> isa.Insn:
    d, kind = ln.reg(m["dst"])
    klass = isa.JMP32 if kind == "w" else isa.JMP
    code = klass | CONDITION_OPS[m["cond"]]
    off = ln.target(m["target"], "off")
    operand = m["operand"]
    if operand[0] in "rw" and operand[1:].isdigit():
        ln.same_kind(m["dst"], operand)
        return isa.Insn(code | isa.X, d, ln.reg(operand)[0], off)
    return isa.Insn(code | isa.K, d, 0, off, ln.imm32(operand))


def _goto(m, ln: _Line) -> isa.Insn:
    return isa.Insn(isa.JMP | isa.JA, off=ln.target(m["target"], "off"))


def _gotol(m, ln: _Line) -> isa.Insn:
    return isa.Insn(isa.JMP32 | isa.JA, imm=ln.target(m["target"], "imm"))


def _call(m, ln: _Line) -> isa.Insn:
    """`call N` is a helper; `call label` a bpf-to-bpf call, as llvm-mc."""
    target = m["target"]
    if re.fullmatch(_IDENT, target):
        return isa.Insn(isa.JMP | isa.CALL, 0, isa.CALL_LOCAL, 0, ln.target(target, "imm"))
    return isa.Insn(isa.JMP | isa.CALL, 0, isa.CALL_HELPER, 0, ln.imm32(target))


def _call_pc(m, ln: _Line) -> isa.Insn:
    return isa.Insn(isa.JMP | isa.CALL, 0, isa.CALL_LOCAL, 0,
                    ln.number_of(m["off"], -2**31, 2**31 - 1, "call offset"))


def _call_kfunc(m, ln: _Line) -> isa.Insn:
    off = ln.off16(m["next"]) if m["next"] else 0
    return isa.Insn(isa.JMP | isa.CALL, 0, isa.CALL_KFUNC, off, ln.imm32(m["imm"]))


def _callx(m, ln: _Line) -> isa.Insn:
    return isa.Insn(isa.JMP | isa.CALL | isa.X, ln.reg(m["dst"], "r")[0])


def _exit(m, ln: _Line) -> isa.Insn:
    return isa.Insn(isa.JMP | isa.EXIT)


def _invalid(m, ln: _Line) -> isa.Insn:
    raise ln.error("'.invalid' marks bytes the disassembler found outside the "
                   "instruction set; it cannot be assembled")


_MEM = "({base} {off})"
FORMS = [(_compile(t), h) for t, h in [
    ("exit", _exit),
    ("goto {target}", _goto),
    ("gotol {target}", _gotol),
    ("call pc{off}", _call_pc),
    ("call kfunc {imm}", _call_kfunc),
    ("call kfunc {imm} , {next}", _call_kfunc),
    ("call {target}", _call),
    ("callx {dst}", _callx),
    ("if {dst} {cond} {operand} goto {target}", _jcond),
    ("{dst} {aop}= {operand}", _alu),
    ("{dst} = -{src}", _neg),
    ("{dst} = ( s{sx} ) {src}", _movsx),
    ("{dst} = {swap} {src}", _swap),
    ("{dst} = {value} ll", _ld_imm64),
    ("ld_pseudo {dst} , {imm} , {value}", _ld_pseudo),
    ("ld_pseudo {dst} , {imm} , {value} , {next}", _ld_pseudo),
    ("{dst} = *( {type} * )skb[ {imm} ]", _ld_abs),
    ("{dst} = *( {type} * )skb[ {src} ]", _ld_abs),
    ("{dst} = *( {type} * )skb[ {src} {off} ]", _ld_abs),
    ("{dst} = *( {type} * )" + _MEM, _load),
    ("*( {type} * )" + _MEM + " = {operand}", _store),
    ("lock *( {type} * )" + _MEM + " {lop}= {src}", _lock),
    ("{dst} = atomic_fetch_{fop}( ( {type} * )" + _MEM + " , {src} )", _fetch),
    ("{dst} = {xname} ( {base} {off} , {src} )", _xchg),
    ("{dst} = {xname} ( {base} {off} , {old} , {src} )", _cmpxchg),
    ("{dst} = {operand}", _mov),
    (".invalid {rest}", _invalid),
]]

_MNEMONICS = {"exit", "goto", "gotol", "call", "callx", "if", "lock", "ld_pseudo"}
_LABEL = re.compile(rf"\s*({_IDENT})\s*:")


def _parse(number: int, text: str) -> tuple[isa.Insn, tuple[str, str] | None]:
    ln = _Line(number, text)
    for pattern, handler in FORMS:
        m = pattern.match(text)
        if m:
            # Handlers read optional pieces as None rather than checking which
            # of several templates matched.
            groups = collections.defaultdict(lambda: None, m.groupdict())
            return handler(groups, ln), ln.fixup
    word = re.match(r"\s*([^\s=(*]+)", text)
    head = word.group(1) if word else text.strip()
    if re.fullmatch(_IDENT, head) and head not in _MNEMONICS and not re.fullmatch(r"[rw]\d+", head):
        raise ln.error(f"unknown mnemonic {head!r}")
    raise ln.error("cannot parse instruction (not in LLVM's BPF syntax)")


def _statements(text: str):
    """(line number, label, statement) for every label and non-empty
    statement (one of the two is None), with comments removed."""
    # Block comments may span lines; keep their newlines so numbers stay right.
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group().count("\n") + " ", text, flags=re.S)
    for number, line in enumerate(text.splitlines(), 1):
        line = re.split(r"#|//", line, maxsplit=1)[0]
        for stmt in line.split(";"):
            while (m := _LABEL.match(stmt)):
                yield number, m.group(1), None
                stmt = stmt[m.end():]
            if stmt.strip():
                yield number, None, stmt


def assemble(text: str) -> list[isa.Insn]:
    """Assemble LLVM-syntax BPF text into instructions. Raises AssemblyError
    with the 1-based line number on the first problem."""
    labels: dict[str, int] = {}
    stmts: list[_Stmt] = []
    slot = 0
    for number, label, stmt in _statements(text):
        if label is not None:
            if label in labels:
                raise AssemblyError(f"duplicate label {label!r}", number, label + ":")
            labels[label] = slot
            continue
        insn, fixup = _parse(number, stmt)
        stmts.append(_Stmt(insn, number, stmt, fixup))
        slot += insn.slots
    out, slot = [], 0
    for s in stmts:
        slot += s.insn.slots
        if s.fixup:
            field, name = s.fixup
            if name not in labels:
                raise AssemblyError(f"undefined label {name!r}", s.line, s.text)
            # Jumps count from the slot after the jump.
            distance = labels[name] - slot
            if field == "off" and not -2**15 <= distance < 2**15:
                raise AssemblyError(f"jump to {name!r} is {distance} slots away, beyond the "
                                    "16-bit offset range; use gotol", s.line, s.text)
            s.insn = dataclasses.replace(s.insn, **{field: distance})
        out.append(s.insn)
    return out


def assemble_bytes(text: str) -> bytes:
    return isa.encode(assemble(text))
