"""A tiny assembler for the VM tests: one function per instruction shape,
built straight from isa.Insn so the tests need neither the builder nor the
kernel, and r0_of to read back a full 64-bit r0.

Imported by test_vm.py, test_vm_memory.py and test_vm_maps_helpers.py;
test_vm_vs_kernel.py still takes these names from test_vm."""
from __future__ import annotations

import struct

from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.vm import run

I = isa.Insn
M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


def mov64(dst, imm):
    return I(isa.ALU64 | isa.MOV | isa.K, dst, 0, 0, imm)


def movr(dst, src, wide=True, off=0):
    return I((isa.ALU64 if wide else isa.ALU) | isa.MOV | isa.X, dst, src, off)


def ld64(dst, value, src=0, ref=None):
    return I(isa.OPCODE_LD_IMM64, dst, src, 0, value, ref=ref)


def alu(op, dst, *, imm=0, src=None, wide=True, off=0):
    cls = isa.ALU64 if wide else isa.ALU
    if src is None:
        return I(cls | op | isa.K, dst, 0, off, imm)
    return I(cls | op | isa.X, dst, src, off)


def jmp(op, dst, off, *, imm=0, src=None, wide=True):
    cls = isa.JMP if wide else isa.JMP32
    if src is None:
        return I(cls | op | isa.K, dst, 0, off, imm)
    return I(cls | op | isa.X, dst, src, off)


def ldx(size, dst, src, off, sx=False):
    return I(isa.LDX | (isa.MEMSX if sx else isa.MEM) | size, dst, src, off)


def stx(size, dst, src, off):
    return I(isa.STX | isa.MEM | size, dst, src, off)


def st(size, dst, off, imm):
    return I(isa.ST | isa.MEM | size, dst, 0, off, imm)


def call(helper):
    return I(isa.JMP | isa.CALL, 0, 0, 0, int(helper))


EXIT = I(isa.JMP | isa.EXIT)
PKT = bytes(range(64))


def r0_of(*body, packet=PKT, maps=None):
    """Full 64-bit r0 after `body`: stored into the packet's first 8 bytes."""
    prog = [movr(9, 1), *body,
            ldx(isa.W, 8, 9, 76),          # r8 = skb->data
            stx(isa.DW, 8, 0, 0),
            mov64(0, 0), EXIT]
    res = run(prog, packet, maps=maps)
    return struct.unpack_from("<Q", res.packet)[0]


def atomic(size, op, dst, src, off):
    return I(isa.STX | isa.ATOMIC | size, dst, src, off, op)
