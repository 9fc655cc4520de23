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
        from tailor.datapath.ebpf import vm
        self._vm = vm

    def create_map(self, spec):
        return self._vm.VmMap.create(spec)

    def load(self, insns, maps, name: str):
        return self._vm.Program(list(insns), maps)

    def run(self, loaded, packet: bytes, mark: int = 0) -> tuple[int, bytes, int]:
        """(retval, the packet after, skb->mark after)."""
        ctx = self._vm.SkbContext.from_packet(packet, mark=mark) if mark else None
        result = loaded.run(packet, ctx=ctx, ktime_ns=1)
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
