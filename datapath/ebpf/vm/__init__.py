"""The userspace eBPF VM: runs tailor's tc programs on packets the way
BPF_PROG_TEST_RUN runs them in the kernel.

Used by the emulated datapath (as its engine) and by the differential tests
(as the kernel's twin: same return value, same output packet, same map side
effects).

    maps = {"policy": VmMap.create(spec)}
    res = run(insns, packet, maps=maps)          # one-off
    prog = Program(insns, maps); prog.run(pkt)   # compile once, run many

Modules:
    machine        the interpreter: compile to one closure per instruction, run the loop
    state          the mutable state of a run (registers, memory, packet, ctx)
    alu            ALU / ALU64 instructions
    load_store     LD / LDX / ST / STX: loads, stores, atomics, LD_IMM64, LD_ABS/IND
    control_flow   JMP / JMP32: jumps, EXIT, local calls, helper calls
    memory         regions and pointers
    skb            the __sk_buff context
    maps           map semantics
    helpers        helper functions by id
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

from .. import isa
from ..errors import VmError
from ..helper_ids import TcAct
from . import machine as _machine
from . import state as _state
from .maps import MapError, VmMap, possible_cpus
from .skb import SkbContext

__all__ = ["run", "Program", "Result", "Redirect", "VmMap", "MapError", "SkbContext",
           "VmError", "possible_cpus"]


class Redirect(NamedTuple):
    """The target in force when a program returned TC_ACT_REDIRECT."""
    ifindex: int
    flags: int
    peer: bool


@dataclasses.dataclass
class Result:
    retval: int                 # low 32 bits of r0, unsigned, as test_run reports it
    packet: bytes               # the packet after the program
    ctx: SkbContext             # every __sk_buff field after the run
    redirect: Redirect | None   # set only when retval is TC_ACT_REDIRECT
    steps: int                  # instructions executed


class Program:
    """A program compiled for the VM against a fixed set of maps. Compile
    once, run on many packets; not reentrant (one run at a time)."""

    def __init__(self, insns: list[isa.Insn], maps: dict[str, VmMap] | None = None):
        self.insns = [isa.canonical(i) for i in insns]
        self.maps = dict(maps or {})
        self._slot_of = []
        slot = 0
        for insn in self.insns:
            self._slot_of.append(slot)
            slot += insn.slots
        if not self.insns:
            raise VmError("empty program")
        self._run = _state.Run(self.maps)
        self._code = _machine.compile_program(self.insns, self._run)

    def run(self, packet: bytes, *, ctx: SkbContext | None = None,
            max_steps: int = 1_000_000, ktime_ns=None, prandom_seed: int = 0) -> Result:
        """Run on one packet. ctx None is SkbContext.from_packet(packet):
        what test_run builds when given a zeroed ctx_in or asked for ctx_out
        (kernel.KernelProgram.test_run always asks; only with neither would
        wire_len read 0). Otherwise ctx is the whole initial __sk_buff (build
        it with SkbContext.from_packet to match test_run with that ctx_in);
        its len is always the packet's. ktime_ns: a constant, a callable, or
        None for the host's monotonic clock."""
        packet = bytes(packet)
        if ctx is None:
            ctx = SkbContext.from_packet(packet)
        else:
            ctx = dataclasses.replace(ctx, len=len(packet))
        st = self._run
        st.reset(packet, ctx, ktime_ns, prandom_seed)
        steps = _machine.execute(self._code, self.insns, self._slot_of, st, max_steps)
        retval = st.r[0] & 0xFFFFFFFF
        redirect = None
        if retval == TcAct.REDIRECT and st.redirect is not None:
            redirect = Redirect(*st.redirect)
        return Result(retval, bytes(st.pkt), SkbContext.from_image(st.ctx_image),
                      redirect, steps)


def run(insns: list[isa.Insn], packet: bytes, *, maps: dict[str, VmMap] | None = None,
        ctx: SkbContext | None = None, max_steps: int = 1_000_000, ktime_ns=None,
        prandom_seed: int = 0) -> Result:
    """Compile and run once. See Program.run."""
    return Program(insns, maps).run(packet, ctx=ctx, max_steps=max_steps,
                                    ktime_ns=ktime_ns, prandom_seed=prandom_seed)
