"""Tracing packets through pod programs: the engines that hold programs and
maps (the userspace VM, or the kernel through BPF_PROG_TEST_RUN), and the
walk a connection takes through them, the way the datapath would walk it.

Called by both agent backends' Trace (backends/base.py) and by the
operator's tracer of compiled clusters (operator/tracing.py, behind
`tailor connectivity --datapath emulated|kernel` and the tests). It never
consults the policy model: the answer is what the programs return.

A connection from pod S to pod D is allowed when four program runs pass:
S's egress program and D's ingress program on the first packet, then D's
egress and S's ingress on the reply — the reply passes only through the
connection state the first two runs left in the node-wide maps.
"""
from __future__ import annotations

import dataclasses

from tailor.datapath import packets as pk
from tailor.datapath.ebpf.helper_ids import TcAct
from tailor.datapath.layout import EGRESS, INGRESS

# TC_ACT_* values a program may return that let the packet go on.
PASSING = (TcAct.OK, TcAct.REDIRECT)
# The client's port of a traced connection when the caller names none.
CLIENT_PORT = 40000


class VmEngine:
    """Programs run in the userspace VM."""
    name = "emulated"

    def __init__(self):
        import random

        from tailor.datapath.ebpf import vm
        self._vm = vm
        # Each run its own bpf_get_prandom_u32 sequence (a Service's backend
        # is a random pick), reproducible from one engine to the next.
        self._seeds = random.Random(0)

    def create_map(self, spec):
        return self._vm.VmMap.create(spec)

    def load(self, insns, maps, name: str):
        return self._vm.Program(list(insns), maps)

    def run(self, loaded, packet: bytes, mark: int = 0) -> tuple[int, bytes, int]:
        """(retval, the packet after, skb->mark after)."""
        ctx = self._vm.SkbContext.from_packet(packet, mark=mark) if mark else None
        result = loaded.run(packet, ctx=ctx, ktime_ns=1, prandom_seed=self._seeds.getrandbits(32))
        return result.retval, result.packet, result.ctx.mark

    def close(self, obj) -> None:
        pass


class KernelEngine:
    """Programs loaded into the kernel, run with BPF_PROG_TEST_RUN."""
    name = "kernel"

    def __init__(self):
        from tailor.datapath.ebpf import kernel
        self._kernel = kernel

    def create_map(self, spec):
        return self._kernel.KernelMap.create(spec)

    def load(self, insns, maps, name: str):
        return self._kernel.KernelProgram.load(list(insns), maps, name=name)

    def run(self, loaded, packet: bytes, mark: int = 0) -> tuple[int, bytes, int]:
        """(retval, the packet after, skb->mark after)."""
        result = loaded.test_run(packet, ctx=self._kernel.SkbCtx(mark=mark) if mark else None)
        return result.retval, result.data, result.skb.mark

    def close(self, obj) -> None:
        obj.close()


def engine(name: str):
    if name == "emulated":
        return VmEngine()
    if name == "kernel":
        return KernelEngine()
    raise ValueError(f"unknown datapath engine {name!r}: emulated or kernel")


@dataclasses.dataclass
class Step:
    pod: str
    direction: str
    retval: int

    @property
    def passed(self) -> bool:
        return self.retval in PASSING


def walk(run, src: tuple[str | None, bytes], dst: tuple[str | None, bytes],
         flow: pk.Flow) -> tuple[bool, list[Step]]:
    """The datapath's walk, for every tracer (this module's Node and the
    agent backends' Trace): src's egress and dst's ingress on the first
    packet, then dst's egress and src's ingress on the reply. An end is
    (pod key, MAC); a key of None is no local pod and runs no program.
    Allowed when every program run passes. `run(key, direction, frame,
    mark) -> (retval, frame after, mark after)`: skb->mark goes along with a
    redirected packet only (the node scrubs it when it forwards)."""
    (skey, smac), (dkey, dmac) = src, dst
    steps: list[Step] = []
    first = pk.frame(flow, tcp_flags=pk.TCP_SYN, src_mac=smac, dst_mac=dmac)
    reply = pk.frame(flow.reply(), tcp_flags=pk.TCP_SYN | pk.TCP_ACK, src_mac=dmac, dst_mac=smac)
    for frame, hops in ((first, ((skey, EGRESS), (dkey, INGRESS))),
                        (reply, ((dkey, EGRESS), (skey, INGRESS)))):
        mark = 0
        for key, direction in hops:
            if key is None:
                mark = 0
                continue
            retval, frame, out = run(key, direction, frame, mark)
            mark = out if retval == TcAct.REDIRECT else 0
            steps.append(Step(key, direction, retval))
            if retval not in PASSING:
                return False, steps
    return True, steps


@dataclasses.dataclass
class Followed:
    """A connection walked to whoever holds the address its first packet
    left with: `sent` that packet's flow (another destination than asked:
    a Service translated), `answered` the flow src finally received (None
    when a program stopped it), `frames` every frame a program returned."""
    flow: pk.Flow
    steps: list[Step]
    sent: pk.Flow
    answered: pk.Flow | None = None
    frames: list[bytes] = dataclasses.field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.answered is not None

    @property
    def translated(self) -> bool:
        return (self.sent.dst, self.sent.dport) != (self.flow.dst, self.flow.dport)


def follow(run, src: tuple[str, bytes], flow: pk.Flow, locate) -> Followed:
    """The walk of a connection from pod `src` (key, MAC) to an address its
    program may translate (a Service): src's egress on the first packet;
    then the pod of this node holding the address the packet left with
    (`locate(address) -> (key, MAC)`, key None when no pod of this node
    does) judges it with its ingress and answers through its egress; src's
    ingress gets the reply and must give it the address src asked for.
    Allowed when every program run passes and the answer is the reply to
    `flow`."""
    skey, smac = src
    out_steps: list[Step] = []

    def hop(key: str, direction: str, frame: bytes, mark: int) -> tuple[bool, bytes, int]:
        retval, frame, out = run(key, direction, frame, mark)
        out_steps.append(Step(key, direction, retval))
        result.frames.append(frame)
        return retval in PASSING, frame, out if retval == TcAct.REDIRECT else 0

    first = pk.frame(flow, tcp_flags=pk.TCP_SYN, src_mac=smac)
    result = Followed(flow, out_steps, flow)
    ok, frame, mark = hop(skey, EGRESS, first, 0)
    result.sent = sent = pk.flow_of(frame)
    if not ok:
        return result
    dkey, dmac = locate(sent.dst)
    reply = pk.frame(sent.reply(), tcp_flags=pk.TCP_SYN | pk.TCP_ACK, src_mac=dmac, dst_mac=smac)
    mark_back = 0
    if dkey is not None:
        ok, _, _ = hop(dkey, INGRESS, frame, mark)
        if not ok:
            return result
        ok, reply, mark_back = hop(dkey, EGRESS, reply, 0)
        if not ok:
            return result
    ok, back, _ = hop(skey, INGRESS, reply, mark_back)
    answered = pk.flow_of(back)
    if ok and answered == flow.reply():
        result.answered = answered
    return result
