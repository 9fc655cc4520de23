"""The text assembler and disassembler, checked against LLVM 19: every
instruction form assembles to the bytes llvm-mc makes, disassembles to the
text llvm-objdump prints, and round-trips text -> bytes -> text -> bytes."""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile

import pytest
from hypothesis import assume, given, settings, strategies as st

from tailor.datapath.ebpf import asm, disasm, isa, syntax
from tailor.datapath.ebpf.errors import AssemblyError
from tailor.datapath.ebpf.isa import Insn

LLVM_BIN = "/usr/lib/llvm-19/bin"


# --- LLVM 19 tools -------------------------------------------------------------

def _llvm(tool: str) -> str:
    """Path of an LLVM 19 tool. Missing: skip with the reason, or fail under
    CI=true so CI cannot pass by skipping the comparison."""
    path = os.path.join(LLVM_BIN, tool)
    if not shutil.which(path):
        reason = f"{path} not found (apt-get install llvm-19)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


def llvm_object(text: str, directory: str) -> str:
    """Assemble with llvm-mc into an ELF object; returns its path."""
    src, obj = os.path.join(directory, "prog.s"), os.path.join(directory, "prog.o")
    with open(src, "w") as f:
        f.write(text + "\n")
    subprocess.run([_llvm("llvm-mc"), "-triple=bpf", "-mcpu=v4", "-filetype=obj", src, "-o", obj],
                   check=True, capture_output=True, text=True)
    return obj


def llvm_bytes(text: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        obj = llvm_object(text, d)
        out = os.path.join(d, "prog.bin")
        subprocess.run([_llvm("llvm-objcopy"), "-O", "binary", "--only-section=.text", obj, out],
                       check=True)
        with open(out, "rb") as f:
            return f.read()


_OBJDUMP_LINE = re.compile(r"^\s*\d+:\t[0-9a-f ]+\t(.*)$")


def llvm_objdump(text: str, hex_imm: bool = True) -> list[str]:
    """llvm-objdump's text for each instruction, whitespace collapsed and the
    `<sym+off>` target annotation dropped."""
    with tempfile.TemporaryDirectory() as d:
        obj = llvm_object(text, d)
        out = subprocess.run([_llvm("llvm-objdump"), "-d", "--mcpu=v4",
                              "--print-imm-hex" if hex_imm else "--no-print-imm-hex", obj],
                             check=True, capture_output=True, text=True).stdout
    lines = []
    for line in out.splitlines():
        m = _OBJDUMP_LINE.match(line)
        if m:
            lines.append(normalise(re.sub(r"\s*<[^<>]*>$", "", m.group(1))))
    return lines


def normalise(text: str) -> str:
    return " ".join(text.split())


# --- the corpus: every form in the syntax llvm-mc 19 accepts --------------------

IMMS = ["0", "1", "-1", "0x7fffffff", "-2147483648", "0xffffffff", "42"]
MEM_OFFS = ["+ 0", "+ 8", "- 8", "+ 32767", "- 32768"]
JUMPS = ["+0", "+1", "-1", "+32767", "-32768"]


def corpus() -> list[str]:
    lines = []
    for p in "wr":
        for text in syntax.ALU_OPERATORS:
            lines.append(f"{p}1 {text}= {p}2")
            lines += [f"{p}3 {text}= {imm}" for imm in IMMS]
        lines += [f"{p}4 = {p}9", f"{p}0 = -{p}0", f"{p}5 = -{p}5"]
        lines += [f"{p}6 = {imm}" for imm in IMMS]
        for cond in isa.CONDITIONS.values():
            lines.append(f"if {p}1 {cond} {p}2 goto +3")
            lines += [f"if {p}7 {cond} {imm} goto {j}" for imm in IMMS[:4] for j in JUMPS[:3]]
            lines += [f"if {p}0 {cond} {p}10 goto {j}" for j in JUMPS]
    klass_bits = {"w": (8, 16), "r": (8, 16, 32)}
    lines += [f"{p}1 = (s{b}){p}2" for p, bits in klass_bits.items() for b in bits]
    lines += [f"r{n} = {name} r{n}" for name in syntax.SWAPS for n in (0, 6)]
    for t in syntax.MEM_TYPES:
        p = "r" if t == "u64" else "w"
        for off in MEM_OFFS:
            lines += [f"{p}2 = *({t} *)(r1 {off})", f"r2 = *({t} *)(r10 {off})",
                      f"*({t} *)(r10 {off}) = {p}3", f"*({t} *)(r1 {off}) = -5",
                      f"*({t} *)(r1 {off}) = 0x7fffffff"]
    lines += [f"r3 = *({t} *)(r4 {off})" for t in syntax.SIGNED_MEM_TYPES for off in MEM_OFFS]
    for t, p in (("u32", "w"), ("u64", "r")):
        for op, name in syntax.ATOMIC_OPERATORS.items():
            lines += [f"lock *({t} *)(r1 + 8) {op}= {p}2",
                      f"{p}3 = atomic_fetch_{name}(({t} *)(r10 - 16), {p}3)"]
    lines += ["r2 = xchg_64(r1 + 0, r2)", "w2 = xchg32_32(r1 - 4, w2)",
              "r0 = cmpxchg_64(r1 + 0, r0, r2)", "w0 = cmpxchg32_32(r3 + 12, w0, w5)"]
    lines += [f"r{n} = {v} ll" for n in (0, 9) for v in
              ("0", "1", "-1", "0x1122334455667788", "0xffffffff", "0x100000000",
               "-9223372036854775808", "0x7fffffffffffffff")]
    lines += [f"ld_pseudo r1, {src}, {imm}" for src in range(1, 7) for imm in ("0", "5", "-1")]
    for t in ("u8", "u16", "u32"):
        lines += [f"r0 = *({t} *)skb[{imm}]" for imm in ("0", "23", "-1")]
        lines += [f"r0 = *({t} *)skb[r{n}]" for n in (1, 7)]
    lines += [f"goto {j}" for j in JUMPS] + [f"gotol {j}" for j in JUMPS]
    lines += ["call 1", "call 26", "call 0x7fffffff", "call -1", "callx r3", "exit"]
    return lines


# A program with labels: forward and backward jumps of every kind.
LABELLED = """
start:
    r0 = 0
loop:   if r1 > r2 goto out        # forward
    r1 += 1
    if w1 s< 7 goto loop           // backward
    gotol start
    r2 = 0x1122334455667788 ll     ; goto loop
    call sub
out:
    exit
sub: r0 = 1
    exit
"""


@pytest.fixture(scope="module")
def corpus_bytes() -> tuple[list[str], bytes]:
    lines = corpus()
    return lines, llvm_bytes("\n".join(lines))


def test_corpus_is_large():
    assert len(corpus()) > 500


def test_assembles_like_llvm_mc(corpus_bytes):
    lines, want = corpus_bytes
    got = asm.assemble_bytes("\n".join(lines))
    pos = 0
    for line in lines:
        one = asm.assemble_bytes(line)
        assert one == want[pos:pos + len(one)], f"{line!r}: {one.hex()} != {want[pos:pos + len(one)].hex()}"
        pos += len(one)
    assert got == want


def test_labels_assemble_like_llvm_mc():
    assert asm.assemble_bytes(LABELLED) == llvm_bytes(LABELLED)


@pytest.mark.parametrize("hex_imm", [True, False], ids=["hex", "decimal"])
def test_disassembles_like_llvm_objdump(corpus_bytes, hex_imm):
    lines, data = corpus_bytes
    want = llvm_objdump("\n".join(lines), hex_imm=hex_imm)
    got = [normalise(t) for t in disasm.disassemble(isa.decode(data), hex_imm=hex_imm)]
    assert len(got) == len(want)
    for g, w, src in zip(got, want, lines):
        assert g == w, f"from {src!r}"


@pytest.mark.parametrize("labels", [False, True])
@pytest.mark.parametrize("hex_imm", [True, False])
def test_disassembly_reassembles(corpus_bytes, labels, hex_imm):
    _, data = corpus_bytes
    for source in (data, asm.assemble_bytes(LABELLED)):
        text = "\n".join(disasm.disassemble(isa.decode(source), labels=labels, hex_imm=hex_imm))
        assert asm.assemble_bytes(text) == source


def test_label_disassembly():
    insns = asm.assemble(LABELLED)
    assert disasm.disassemble(insns, labels=True) == [
        "L0: r0 = 0x0", "L1: if r1 > r2 goto L9", "r1 += 0x1", "if w1 s< 0x7 goto L1",
        "gotol L0", "r2 = 0x1122334455667788 ll", "goto L1",   # `;` separates, as in llvm-mc
        "call L10", "L9: exit", "L10: r0 = 0x1", "exit"]
    assert disasm.disassemble(insns)[7] == "call pc+0x1"


# --- tailor's own forms and extensions ---------------------------------------------

@pytest.mark.parametrize("text, insn", [
    ("r1 = counters ll", Insn(0x18, 1, isa.PSEUDO_MAP_FD, ref="counters")),
    ("ld_pseudo r1, 2, counters, 8", Insn(0x18, 1, isa.PSEUDO_MAP_VALUE, 0, 8 << 32, ref="counters")),
    ("ld_pseudo r2, 0x2, 0x5, 0x10", Insn(0x18, 2, 2, 0, (16 << 32) | 5)),
    ("call pc-3", Insn(0x85, 0, isa.CALL_LOCAL, 0, -3)),
    ("call kfunc 0x1234", Insn(0x85, 0, isa.CALL_KFUNC, 0, 0x1234)),
    ("call kfunc 7, 2", Insn(0x85, 0, isa.CALL_KFUNC, 2, 7)),
    ("r0 = *(u16 *)skb[r1 + 4]", Insn(0x48, 0, 1, 0, 4)),
    ("r0 = *(u32 *)skb[r1 - 0x4]", Insn(0x40, 0, 1, 0, -4)),
    ("gotol +100000", Insn(0x06, imm=100000)),
    ("r0 = 010", Insn(0xB7, imm=8)),          # octal, as llvm-mc
    ("r0 = 0b101", Insn(0xB7, imm=5)),
    ("r0 = 0xffffffff", Insn(0xB7, imm=-1)),  # stored signed, as decode gives it
    ("*(u64*)(r10-8)=r1", Insn(0x7B, 10, 1, -8)),
])
def test_extensions_round_trip(text, insn):
    assert asm.assemble(text) == [insn]
    again = disasm.format_insn(insn)
    assert asm.assemble(again) == [insn]


def test_comments_separators_and_blank_lines():
    text = """
    # full-line comment
    r0 = 1   # trailing
    r1 = 2   // trailing
    /* block
       comment */ r2 = 3 ; r3 = 4
    ;
    """
    assert [i.imm for i in asm.assemble(text)] == [1, 2, 3, 4]


def test_listing_shows_slots_bytes_and_comments():
    insns = [Insn(0xB7, 0, 0, 0, 2, comment="allow: default"),
             Insn(0x18, 1, isa.PSEUDO_MAP_FD, 0, 7, ref="policy"),
             Insn(0x05, off=-4), Insn(0x95)]
    out = disasm.listing(insns, raw=True, labels=True)
    assert out[0] == "L0:"
    assert out[1].startswith("    0: b7 00 00 00 02 00 00 00")
    assert re.search(r"  r0 = 0x2 +# allow: default$", out[1])
    assert "ld_pseudo r1, 0x1, 0x7" in out[2] and out[2].endswith("# map policy")
    assert out[3].startswith("    3: ") and "goto L0" in out[3]
    plain = disasm.listing(insns, annotate=False)
    assert plain[0] == "    0: r0 = 0x2"


@pytest.mark.parametrize("insn", [
    Insn(0xFF), Insn(0x07, 0, 3), Insn(0x95, src=1), Insn(0x05, imm=1),
    Insn(0xB7, 11), Insn(0xBF, 1, 12), Insn(0xBC, 1, 2, 32), Insn(0xD4, 1, imm=8),
    Insn(0xD7, 1, imm=3), Insn(0x38, imm=1), Insn(0x99, 1, 2), Insn(0xC3, 1, 2, 0, 0x10),
    Insn(0x18, 1, 7, 0, 0), Insn(0xE5, off=1), Insn(0x86), Insn(0x3F, 1, 2, 2),
])
def test_invalid_instructions_disassemble_to_invalid(insn):
    text = disasm.format_insn(insn)
    assert text.startswith(f".invalid code=0x{insn.code:02x}")
    with pytest.raises(AssemblyError, match="cannot be assembled"):
        asm.assemble(text)


# --- property tests -------------------------------------------------------------------

def _regs(lo=0):
    return st.integers(lo, isa.R10)


_s32 = st.integers(-2**31, 2**31 - 1)
_s16 = st.integers(-2**15, 2**15 - 1)


def _valid_insns():
    """Every valid encoding shape, fields drawn from the isa tables."""
    alu_class = st.sampled_from([isa.ALU, isa.ALU64])
    alu_ops = st.sampled_from([o for o in isa.ALU_OPS.values()
                               if o not in (isa.NEG, isa.END, isa.MOV)])
    jmp_class = st.sampled_from([isa.JMP, isa.JMP32])
    conds = st.sampled_from([isa.JMP_OPS[n] for n in isa.CONDITIONS])
    sizes = st.sampled_from(list(isa.SIZE_BYTES))
    narrow = st.sampled_from([isa.B, isa.H, isa.W])
    atomic_imm = st.sampled_from(sorted(disasm.LOCK_TEXT) + sorted(disasm.FETCH_TEXT)
                                 + [isa.ATOMIC_OPS["xchg"], isa.ATOMIC_OPS["cmpxchg"]])

    def signed_off(o):
        return st.sampled_from([0, 1]) if o in (isa.DIV, isa.MOD) else st.just(0)

    return st.one_of(
        alu_ops.flatmap(lambda o: st.builds(
            lambda c, d, s, off, k, imm: (Insn(c | o | isa.X, d, s, off) if k
                                          else Insn(c | o | isa.K, d, 0, off, imm)),
            alu_class, _regs(), _regs(), signed_off(o), st.booleans(), _s32)),
        st.builds(lambda c, d, imm: Insn(c | isa.MOV | isa.K, d, 0, 0, imm), alu_class, _regs(), _s32),
        st.builds(lambda c, d, s, off: Insn(c | isa.MOV | isa.X, d, s,
                                            off if c == isa.ALU64 or off != 32 else 0),
                  alu_class, _regs(), _regs(), st.sampled_from([0, 8, 16, 32])),
        st.builds(lambda c, d: Insn(c | isa.NEG, d), alu_class, _regs()),
        st.builds(lambda code_bits, d: Insn(code_bits[0], d, imm=code_bits[1]),
                  st.sampled_from(sorted(syntax.SWAPS.values())), _regs()),
        st.builds(lambda c, o, d, s, off, imm, k: (Insn(c | o | isa.X, d, s, off) if k
                                                   else Insn(c | o | isa.K, d, 0, off, imm)),
                  jmp_class, conds, _regs(), _regs(), _s16, _s32, st.booleans()),
        st.builds(lambda off: Insn(isa.JMP | isa.JA, off=off), _s16),
        st.builds(lambda imm: Insn(isa.JMP32 | isa.JA, imm=imm), _s32),
        st.builds(lambda imm: Insn(isa.JMP | isa.CALL, imm=imm), _s32),
        st.builds(lambda imm: Insn(isa.JMP | isa.CALL, src=isa.CALL_LOCAL, imm=imm), _s32),
        st.builds(lambda imm, off: Insn(isa.JMP | isa.CALL, src=isa.CALL_KFUNC, off=off, imm=imm),
                  _s32, _s16),
        st.builds(lambda d: Insn(isa.JMP | isa.CALL | isa.X, d), _regs()),
        st.just(Insn(isa.JMP | isa.EXIT)),
        st.builds(lambda d, s, imm: Insn(isa.OPCODE_LD_IMM64, d, s, 0, imm),
                  _regs(), st.integers(0, isa.PSEUDO_MAP_IDX_VALUE), st.integers(0, 2**64 - 1)),
        st.builds(lambda d, s, hi, name: Insn(isa.OPCODE_LD_IMM64, d, s, 0, hi << 32, ref=name),
                  _regs(), st.sampled_from([isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE]),
                  st.integers(0, 2**32 - 1), st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)),
        st.builds(lambda sz, imm: Insn(isa.LD | isa.ABS | sz, imm=imm), narrow, _s32),
        st.builds(lambda sz, s, imm: Insn(isa.LD | isa.IND | sz, 0, s, 0, imm), narrow, _regs(), _s32),
        st.builds(lambda sz, d, s, off: Insn(isa.LDX | isa.MEM | sz, d, s, off), sizes, _regs(), _regs(), _s16),
        st.builds(lambda sz, d, s, off: Insn(isa.LDX | isa.MEMSX | sz, d, s, off), narrow, _regs(), _regs(), _s16),
        st.builds(lambda sz, d, off, imm: Insn(isa.ST | isa.MEM | sz, d, 0, off, imm), sizes, _regs(), _s16, _s32),
        st.builds(lambda sz, d, s, off: Insn(isa.STX | isa.MEM | sz, d, s, off), sizes, _regs(), _regs(), _s16),
        st.builds(lambda sz, d, s, off, imm: Insn(isa.STX | isa.ATOMIC | sz, d, s, off, imm),
                  st.sampled_from([isa.W, isa.DW]), _regs(), _regs(), _s16, atomic_imm),
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(_valid_insns(), min_size=1, max_size=8), st.booleans(), st.booleans())
def test_valid_insns_round_trip(insns, labels, hex_imm):
    text = disasm.disassemble(insns, labels=labels, hex_imm=hex_imm)
    assert not any(".invalid" in t for t in text), text
    assert asm.assemble("\n".join(text)) == insns


_FIELDS = {"code": st.integers(0, 255), "dst": st.integers(0, 15), "src": st.integers(0, 15),
           "off": st.one_of(st.sampled_from([0, 1, 8, 16, 32, -1]), _s16),
           "imm": st.one_of(st.sampled_from([0, 1, 16, 32, 64, 0xE1, 0xF1, 0x41]), _s32)}


@st.composite
def _near_valid_insns(draw):
    """A valid instruction with one field set to anything: mostly invalid
    encodings right next to valid ones, where reserved-field checks matter."""
    insn = draw(_valid_insns())
    field = draw(st.sampled_from(sorted(_FIELDS)))
    insn = dataclasses.replace(insn, **{field: draw(_FIELDS[field])})
    try:
        data = isa.encode_one(insn)
    except ValueError:          # a 64-bit imm moved onto a one-slot opcode
        assume(False)
    if len(data) != 8 * insn.slots:
        data = data.ljust(16, b"\0")
    return dataclasses.replace(isa.decode(data)[0], ref=insn.ref)


@settings(max_examples=300, deadline=None)
@given(_near_valid_insns())
def test_any_encoding_disassembles_to_reassemblable_or_invalid(insn):
    text = disasm.format_insn(insn)
    if text.startswith(".invalid"):
        with pytest.raises(AssemblyError):
            asm.assemble(text)
    else:
        assert asm.assemble_bytes(text) == isa.encode_one(insn), text
        # A resolved map reference (fd in imm) prints as a number: ref dropped.
        if insn.ref is None or insn.imm & 0xFFFFFFFF == 0:
            assert asm.assemble(text) == [insn], text


# --- errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, line, message", [
    ("r0 = 1\nfrob r1, r2", 2, "unknown mnemonic 'frob'"),
    ("goto nowhere", 1, "undefined label 'nowhere'"),
    ("a:\nr0 = 0\na: exit", 3, "duplicate label 'a'"),
    ("goto +32768", 1, "jump offset +32768 out of range"),
    ("r0 = *(u64 *)(r1 + 40000)", 1, "offset + 40000 out of range"),
    ("r0 = 0x100000000", 1, "immediate 0x100000000 out of range"),
    ("r0 = -2147483649", 1, "immediate -2147483649 out of range"),
    ("r1 = 0x10000000000000000 ll", 1, "64-bit immediate"),
    ("r11 = 1", 1, "bad register r11"),
    ("\n\nr1 += w2", 3, "w and r registers mixed"),
    ("if w1 == r2 goto +1", 1, "w and r registers mixed"),
    ("w0 = *(u64 *)(r1 + 0)", 1, "u64 load needs an r register"),
    ("r0 = *(u32 *)(w1 + 0)", 1, "register w1 must be r1"),
    ("w1 = 1 ll", 1, "register w1 must be r1"),
    ("w1 = (s32)w2", 1, "sign extension from s32"),
    ("r1 = -r2", 1, "negation is in place"),
    ("r1 = be16 r2", 1, "byte swap is in place"),
    ("r2 = xchg_64(r1 + 0, r3)", 1, "returns into its operand"),
    ("r3 = cmpxchg_64(r1 + 0, r0, r2)", 1, "r0/w0"),
    ("lock *(u16 *)(r1 + 0) += w2", 1, "atomic operations are u32 or u64"),
    ("r0 = *(u64 *)skb[4]", 1, "packet loads are u8, u16 or u32"),
    ("r0 = *(u128 *)(r1 + 0)", 1, "bad memory type u128"),
    ("r0 = 1 ; oops", 1, "unknown mnemonic 'oops'"),
    ("r0 == 1", 1, "cannot parse"),
])
def test_errors_name_line_and_problem(text, line, message):
    with pytest.raises(AssemblyError) as err:
        asm.assemble(text)
    assert err.value.line == line
    assert message in str(err.value)


def test_label_beyond_16_bit_jump_range():
    text = "x:\n" + "r0 = 0\n" * 40000 + "goto x\ngotol x"
    with pytest.raises(AssemblyError, match="beyond the 16-bit offset range; use gotol") as err:
        asm.assemble(text)
    assert err.value.line == 40002
    assert asm.assemble(text.replace("goto x\n", ""))[-1].imm == -40001
