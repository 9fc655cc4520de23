"""The userspace VM's memory rules: the stack, direct and LD_ABS/LD_IND
packet access, the __sk_buff context, and atomics. Programs are
hand-assembled with vm_asm so these tests need nothing else."""
from __future__ import annotations

import pytest

from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.errors import VmError
from tailor.datapath.ebpf.vm import SkbContext, run

from vm_asm import (EXIT, I, M32, M64, PKT, alu, atomic, jmp, ld64, ldx, mov64, movr, r0_of,
                    st, stx)


# --- stack and pointers ------------------------------------------------------------

def test_stack_roundtrip_and_memsx():
    body = [st(isa.DW, 10, -8, -2),
            ldx(isa.B, 1, 10, -8, sx=True), ldx(isa.H, 2, 10, -8, sx=True),
            ldx(isa.W, 0, 10, -8, sx=True), alu(isa.ADD, 0, src=1), alu(isa.ADD, 0, src=2)]
    assert r0_of(*body) == (-6) & M64
    assert r0_of(st(isa.B, 10, -1, 0x80), ldx(isa.B, 0, 10, -1)) == 0x80


def test_uninitialised_stack_read_is_an_error():
    with pytest.raises(VmError, match="invalid read from stack"):
        run([st(isa.W, 10, -8, 1), ldx(isa.DW, 0, 10, -8), EXIT], PKT)


def test_stack_out_of_bounds():
    with pytest.raises(VmError, match="pc 0"):
        run([st(isa.DW, 10, 0, 1), mov64(0, 0), EXIT], PKT)
    with pytest.raises(VmError):
        run([st(isa.DW, 10, -520, 1), mov64(0, 0), EXIT], PKT)


def test_null_and_scalar_dereference():
    with pytest.raises(VmError, match="null"):
        run([mov64(1, 0), ldx(isa.W, 0, 1, 0), EXIT], PKT)
    with pytest.raises(VmError, match="scalar"):
        run([mov64(1, 1234), ldx(isa.W, 0, 1, 0), EXIT], PKT)


# --- packet access -----------------------------------------------------------------

def pkt_prog(*body):
    """r2 = data, r3 = data_end, then body."""
    return [ldx(isa.W, 2, 1, 76), ldx(isa.W, 3, 1, 80), *body]


def test_direct_packet_read_write():
    prog = pkt_prog(movr(4, 2), alu(isa.ADD, 4, imm=14), jmp(isa.JGT, 4, 3, src=3),
                    ldx(isa.H, 0, 2, 12), st(isa.B, 2, 0, 0xAA), EXIT,
                    mov64(0, 99), EXIT)
    res = run(prog, PKT)
    assert res.retval == 0x0D0C          # bytes 12,13 little-endian
    assert res.packet == b"\xAA" + PKT[1:]
    assert run(prog, PKT[:12] + b"\0\0").retval == 0  # exactly 14 bytes: in bounds


def test_packet_out_of_bounds_is_vm_error():
    with pytest.raises(VmError, match="packet"):
        run(pkt_prog(ldx(isa.W, 0, 2, 62), EXIT), PKT)
    with pytest.raises(VmError):
        run(pkt_prog(ldx(isa.B, 0, 3, 0), EXIT), PKT)     # data_end itself
    with pytest.raises(VmError):
        run(pkt_prog(ldx(isa.B, 0, 2, -1), EXIT), PKT)


def test_ld_abs_ind_big_endian_and_out_of_bounds_returns_zero():
    prog = [movr(6, 1), I(isa.LD | isa.ABS | isa.H, 0, 0, 0, 12), EXIT]
    assert run(prog, PKT).retval == 0x0C0D
    prog = [movr(6, 1), mov64(7, 4), I(isa.LD | isa.IND | isa.W, 0, 7, 0, 10), EXIT]
    assert run(prog, PKT).retval == 0x0E0F1011
    prog = [movr(6, 1), I(isa.LD | isa.ABS | isa.W, 0, 0, 0, 62), mov64(0, 5), EXIT]
    assert run(prog, PKT).retval == 0
    with pytest.raises(VmError, match="R1 !read_ok"):   # LD_ABS clobbers r1-r5
        run([movr(6, 1), I(isa.LD | isa.ABS | isa.B, 0, 0, 0, 0), movr(0, 1), EXIT], PKT)


# --- context -----------------------------------------------------------------------

IPV4 = bytes(6) + b"\x02" * 6 + b"\x08\x00" + bytes(40)


@pytest.mark.parametrize("off,want", [
    (0, len(IPV4)), (4, 0), (16, 0x0008), (40, 1), (36, 0), (68, 0), (160, len(IPV4))])
def test_ctx_defaults_like_test_run(off, want):
    assert run([ldx(isa.W, 0, 1, off), EXIT], IPV4).retval == want


def test_from_packet_pkt_type_and_protocol():
    assert SkbContext.from_packet(b"\xff" * 6 + bytes(6) + b"\x86\xdd" + bytes(40)).pkt_type == 2
    assert SkbContext.from_packet(b"\x02" * 12 + b"\x08\x06").pkt_type == 3
    assert SkbContext.from_packet(b"\x02" * 12 + b"\x08\x06").protocol == 0x0608
    assert SkbContext.from_packet(b"\x02" * 12 + b"\x00\x40\xff\xff").protocol == 0x0100
    assert SkbContext.from_packet(b"\x02" * 12 + b"\x00\x40\x00\x00").protocol == 0x0400
    assert SkbContext.from_packet(IPV4).wire_len == len(IPV4)
    with pytest.raises(ValueError):
        SkbContext.from_packet(bytes(13))
    with pytest.raises(ValueError):
        SkbContext.from_packet(bytes(12) + b"\x86\xdd" + bytes(39))


def test_ctx_read_write_fields():
    ctx = SkbContext.from_packet(IPV4, mark=7, priority=3, cb=(1, 2, 3, 4, 5))
    prog = [ldx(isa.W, 2, 1, 8), alu(isa.ADD, 2, imm=1), stx(isa.W, 1, 2, 8),
            st(isa.W, 1, 32, 9), st(isa.DW, 1, 48, -1), st(isa.W, 1, 44, 0x12345),
            st(isa.W, 1, 12, 0xFFFF), st(isa.W, 1, 72, 0x10002),
            ldx(isa.B, 0, 1, 64), EXIT]       # narrow load of cb[4]
    res = run(prog, IPV4, ctx=ctx)
    assert res.retval == 5
    assert (res.ctx.mark, res.ctx.priority) == (8, 9)
    assert res.ctx.cb == (M32, M32, 3, 4, 5)
    assert res.ctx.tc_index == 0x2345 and res.ctx.tc_classid == 2
    assert res.ctx.queue_mapping == 0        # >= 0xffff is ignored
    out = res.ctx.ctx_out()
    assert out.mark == 8 and out.tc_index == 0 and out.len == 0


@pytest.mark.parametrize("insn", [
    st(isa.W, 1, 0, 1),            # len is read-only
    st(isa.B, 1, 8, 1),            # narrow write of mark
    ldx(isa.H, 0, 1, 76),          # narrow load of data
    ldx(isa.W, 0, 1, 88),          # family: not for tc
    ldx(isa.H, 0, 1, 9),           # misaligned
    ldx(isa.W, 0, 1, 152),         # tstamp is 8 bytes
])
def test_ctx_invalid_access(insn):
    with pytest.raises(VmError, match="bpf_context access"):
        run([mov64(0, 0), insn, mov64(0, 0), EXIT], IPV4)


def test_ctx_image_only_carries_accepted_fields():
    ctx = SkbContext.from_packet(IPV4, mark=1, priority=2, ingress_ifindex=3, cb=(4,),
                                 tstamp=5, gso_segs=6, gso_size=7, hwtstamp=8)
    img = ctx.to_bytes()
    assert len(img) == 192
    nonzero = sorted({i // 4 * 4 for i, b in enumerate(img) if b})
    assert nonzero == [8, 32, 36, 40, 48, 152, 160, 164, 176, 184]
    back = SkbContext.from_bytes(img)
    assert (back.mark, back.wire_len, back.ifindex, back.cb[0], back.hwtstamp) == \
        (1, len(IPV4), 1, 4, 8)
    assert back.protocol == 0 and back.len == 0


# --- atomics ---------------------------------------------------------------------

@pytest.mark.parametrize("name,init,operand,mem_after,fetched", [
    ("add", 5, 3, 8, 5), ("or", 5, 2, 7, 5), ("and", 6, 3, 2, 6), ("xor", 6, 3, 5, 6),
    ("xchg", 6, 3, 3, 6),
])
@pytest.mark.parametrize("size", [isa.W, isa.DW])
def test_atomics(name, init, operand, mem_after, fetched, size):
    opcode = isa.ATOMIC_OPS[name]
    for fetch in ({True} if name == "xchg" else {False, True}):
        op = opcode | (isa.FETCH if fetch else 0)
        mem, reg = r0_of(ld64(2, init), stx(isa.DW, 10, 2, -8), mov64(1, operand),
                         atomic(size, op, 10, 1, -8), ldx(isa.DW, 0, 10, -8)), \
            r0_of(ld64(2, init), stx(isa.DW, 10, 2, -8), mov64(1, operand),
                  atomic(size, op, 10, 1, -8), movr(0, 1))
        assert mem == mem_after
        assert reg == (fetched if fetch else operand)


def test_atomic_32_wraps_within_the_word():
    got = r0_of(ld64(2, 0x1_FFFFFFFF), stx(isa.DW, 10, 2, -8), mov64(1, 1),
                atomic(isa.W, isa.ATOMIC_OPS["add"], 10, 1, -8), ldx(isa.DW, 0, 10, -8))
    assert got == 0x1_00000000


def test_cmpxchg():
    base = [st(isa.DW, 10, -8, 10), mov64(1, 20)]
    cx = atomic(isa.DW, isa.ATOMIC_OPS["cmpxchg"], 10, 1, -8)
    assert r0_of(*base, mov64(0, 10), cx, ldx(isa.DW, 0, 10, -8)) == 20
    assert r0_of(*base, mov64(0, 11), cx, ldx(isa.DW, 0, 10, -8)) == 10
    assert r0_of(*base, mov64(0, 11), cx) == 10     # r0 = old value either way


def test_atomic_on_packet_rejected():
    with pytest.raises(VmError, match="atomic"):
        run(pkt_prog(mov64(1, 1), atomic(isa.W, 0, 2, 1, 0), mov64(0, 0), EXIT), PKT)
