"""The builder: labels, offsets, dropped dead code, errors reported together."""
import pytest

from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.builder import Builder, R0, R1, R2
from tailor.datapath.ebpf.errors import AssemblyError


def test_forward_and_backward_jumps_count_slots_of_wide_loads():
    b = Builder()
    b.label("top")
    b.ld_imm64(R1, 1 << 40)           # two slots
    b.jeq(R1, 0, "out")               # slot 2
    b.add64(R1, -1)                   # slot 3
    b.jump("top")                     # slot 4 -> top is slot 0: off -5
    b.label("out")
    b.ret(0)
    insns = b.assemble()
    assert insns[1].off == 2          # from slot 2 to slot 5
    assert insns[3].off == -5
    assert b.jumps == 1
    assert isa.slot_count(insns) == 7


def test_register_and_immediate_operands_differ_by_type():
    b = Builder()
    b.add64(R1, R2)
    b.add64(R1, 2)
    a, c = b.assemble()
    assert (a.code, a.src, a.imm) == (isa.ALU64 | isa.ADD | isa.X, 2, 0)
    assert (c.code, c.src, c.imm) == (isa.ALU64 | isa.ADD | isa.K, 0, 2)


def test_code_after_exit_is_dropped_until_a_label_that_is_jumped_to():
    b = Builder()
    b.jeq(R1, 0, "next")
    b.ret(1)
    b.mov64(R0, 7)                    # unreachable: dropped as added
    b.label("next")
    b.ret(2)
    b.label("orphan")                 # nothing jumps here: pruned at assembly
    b.ret(3)
    insns = b.assemble()
    assert [i.imm for i in insns if i.code == isa.ALU64 | isa.MOV] == [1, 2]
    assert insns[0].off == 2


def test_every_error_is_reported_at_once():
    b = Builder()
    b.jeq(R1, 0, "nowhere")
    b.load(3, R0, R1, 0)
    b.add64(R1, 1 << 40)
    b.label("x")
    b.label("x")
    with pytest.raises(AssemblyError) as e:
        b.assemble()
    text = str(e.value)
    for part in ("undefined label 'nowhere'", "access size 3", "does not fit 32 bits",
                 "label 'x' defined twice"):
        assert part in text


def _far_jump(long: bool) -> Builder:
    b = Builder()
    b.jeq(R1, 0, "pad")
    (b.jump_long if long else b.jump)("far")
    b.label("pad")
    for _ in range(0x8001):
        b.mov64(R0, 0)
    b.label("far")
    b.exit()
    return b


def test_jump_beyond_16_bits_is_an_error_but_gotol_reaches():
    with pytest.raises(AssemblyError, match="beyond a 16-bit offset"):
        _far_jump(long=False).assemble()
    assert _far_jump(long=True).assemble()[1].imm == 0x8001


def test_annotations_tag_instructions_and_encoding_ignores_them():
    b = Builder()
    with b.annotate("rule 1: tcp/80"):
        b.mov64(R0, 1)
    b.exit()
    first, last = b.assemble()
    assert first.comment == "rule 1: tcp/80" and last.comment is None
    assert isa.encode([first]) == isa.encode([isa.Insn(first.code, 0, 0, 0, 1)])


def test_map_references_resolve_to_fds():
    b = Builder()
    b.ld_map(R1, "ct")
    b.ld_map_value(R2, "cfg", 8)
    b.ret(0)
    insns = isa.resolve_maps(b.assemble(), {"ct": 5, "cfg": 6})
    assert (insns[0].src, insns[0].imm) == (isa.PSEUDO_MAP_FD, 5)
    assert (insns[1].src, insns[1].imm) == (isa.PSEUDO_MAP_VALUE, (8 << 32) | 6)
    assert isa.decode(isa.encode(insns))[:2] == [
        isa.Insn(isa.OPCODE_LD_IMM64, 1, 1, 0, 5), isa.Insn(isa.OPCODE_LD_IMM64, 2, 2, 0, (8 << 32) | 6)]
