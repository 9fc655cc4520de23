"""The mutable state of one program run, and the two signals the
instruction closures give the loop.

A Run is created by vm.Program (one per Program, reset for every packet).
Every closure built by alu.py, load_store.py and control_flow.py is bound to
it, helpers.py receives it as `st`, and machine.execute reads it to diagnose
a failure.

Register model: `r` is a list of 11 Python ints (unsigned 64-bit) or None
for "never written" (the verifier's NOT_INIT). Reading a None register makes
the operation raise, and the loop turns that into VmError "R2 !read_ok" by
looking at which register the faulting instruction read. Helper calls set
r1-r5 back to None (clobbered); a local call gives the callee fresh r0 and
r6-r9 and restores the caller's r6-r9 and r10 on return.
"""
from __future__ import annotations

import random
import time

from .. import isa
from . import skb as _skb
from .memory import CTX, MAP_HANDLE, PACKET, STACK, Memory

STACK_SIZE = isa.STACK_SIZE

# A closure returns the index of the next instruction; this one ends the run.
EXIT = -1


class Uninit(Exception):
    """Raised by a closure that finds the register it reads never written
    (where the plain Python error would not say which one)."""

    def __init__(self, reg: int):
        self.reg = reg


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
