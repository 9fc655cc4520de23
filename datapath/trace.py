"""Tracing flows through compiled pod programs: one node's programs and maps
held by an engine (the userspace VM, or the kernel through
BPF_PROG_TEST_RUN), and a packet walked through them the way the datapath
would walk it.

Called by `tailor connectivity --datapath emulated|kernel`, by the emulated
backend's Trace, and by the tests that check compiled programs against the
model. It never consults the policy model: the answer is what the programs
return.

A connection from pod S to pod D is allowed when four program runs pass:
S's egress program and D's ingress program on the first packet, then D's
egress and S's ingress on the reply — the reply passes only through the
connection state the first two runs left in the node-wide maps.
"""
from __future__ import annotations

import dataclasses
import ipaddress

from tailor.datapath import packets as pk
from tailor.datapath.ebpf.helper_ids import TcAct
from tailor.operator.compiler import layout, mapdata
from tailor.operator.compiler.program import PodPrograms
from tailor.operator.compiler.spec import EGRESS, INGRESS, ProgramSpec

PASSING = (TcAct.OK, TcAct.REDIRECT)
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

    def run(self, loaded, packet: bytes) -> tuple[int, bytes]:
        result = loaded.run(packet, ktime_ns=1)
        return result.retval, result.packet

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

    def run(self, loaded, packet: bytes) -> tuple[int, bytes]:
        result = loaded.test_run(packet)
        return result.retval, result.data

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


@dataclasses.dataclass
class Trace:
    flow: pk.Flow
    steps: list[Step]

    @property
    def allowed(self) -> bool:
        return len(self.steps) == 4 and all(s.passed for s in self.steps)


@dataclasses.dataclass
class _Pod:
    spec: ProgramSpec
    programs: PodPrograms
    loaded: dict[str, object]
    maps: list[object]
    mac: bytes


class Node:
    """One node's worth of pods: their programs loaded in `engine` against
    the node-wide connection-tracking maps and their own peer maps."""

    def __init__(self, engine):
        self.engine = engine
        self.shared = {name: engine.create_map(spec) for name, spec in layout.NODE_MAPS.items()}
        self.ct = {f: self.shared[spec.name] for f, spec in layout.CT_MAPS.items()}
        self.pods: dict[str, _Pod] = {}

    def add(self, spec: ProgramSpec, programs: PodPrograms, entries=None) -> None:
        """Load a pod's two programs with its own maps filled from `entries`
        ({direction: {map name: {key: value}}}; default: the specialised
        programs' map data)."""
        if entries is None:
            entries = mapdata.entries(spec)
        loaded, owned = {}, []
        try:
            for direction in (INGRESS, EGRESS):
                program = programs.program(direction)
                maps = {}
                for mspec in program.maps:
                    if mspec.name in self.shared:
                        maps[mspec.name] = self.shared[mspec.name]
                        continue
                    m = self.engine.create_map(mspec)
                    owned.append(m)
                    for key, value in entries[direction].get(mspec.name, {}).items():
                        m.update(key, value)
                    maps[mspec.name] = m
                loaded[direction] = self.engine.load(program.insns, maps,
                                                     f"{direction[:2]}_{len(self.pods)}")
                owned.append(loaded[direction])
        except BaseException:
            for obj in owned:
                self.engine.close(obj)
            raise
        n = len(self.pods)
        mac = bytes([0x02, 0, 0, 0, n >> 8 & 0xFF, n & 0xFF])
        # Listed as a local endpoint, so same-node traffic takes the redirect path.
        host_mac, ifindex = bytes([0x02, 0xFE, 0, 0, n >> 8 & 0xFF, n & 0xFF]), 1000 + n
        for address in (spec.ipv4, spec.ipv6):
            if address:
                family = ipaddress.ip_address(address).version
                self.shared[layout.ENDPOINT_MAPS[family].name].update(
                    layout.pack_addr(address), layout.pack_endpoint(ifindex, mac, host_mac))
        self.pods[spec.pod] = _Pod(spec, programs, loaded, owned, mac)

    def reset_conntrack(self) -> None:
        for m in self.ct.values():
            for key in list(m.keys()):
                m.delete(key)

    def _run(self, pod: _Pod, direction: str, frame: bytes) -> tuple[Step, bytes]:
        retval, out = self.engine.run(pod.loaded[direction], frame)
        return Step(pod.spec.pod, direction, retval), out

    def trace(self, src: str, dst: str, flow: pk.Flow) -> Trace:
        """Walk a connection's first packet and its reply through the programs."""
        s, d = self.pods[src], self.pods[dst]

        def run(key: str, direction: str, frame: bytes) -> tuple[int, bytes]:
            return self.engine.run(self.pods[key].loaded[direction], frame)

        _, steps = walk(run, (src, s.mac), (dst, d.mac), flow)
        return Trace(flow, steps)

    def close(self) -> None:
        for pod in self.pods.values():
            for obj in pod.maps:
                self.engine.close(obj)
        for m in self.shared.values():
            self.engine.close(m)
        self.pods.clear()


def walk(run, src: tuple[str | None, bytes], dst: tuple[str | None, bytes],
         flow: pk.Flow) -> tuple[bool, list[Step]]:
    """The datapath's walk, for every tracer (this module's Node and the
    agent backends' Trace): src's egress and dst's ingress on the first
    packet, then dst's egress and src's ingress on the reply. An end is
    (pod key, MAC); a key of None is no local pod and runs no program.
    Allowed when every program run passes. `run(key, direction, frame) ->
    (retval, frame after)`."""
    (skey, smac), (dkey, dmac) = src, dst
    steps: list[Step] = []
    first = pk.frame(flow, tcp_flags=pk.TCP_SYN, src_mac=smac, dst_mac=dmac)
    reply = pk.frame(flow.reply(), tcp_flags=pk.TCP_SYN | pk.TCP_ACK, src_mac=dmac, dst_mac=smac)
    for frame, hops in ((first, ((skey, EGRESS), (dkey, INGRESS))),
                        (reply, ((dkey, EGRESS), (skey, INGRESS)))):
        for key, direction in hops:
            if key is None:
                continue
            retval, frame = run(key, direction, frame)
            steps.append(Step(key, direction, retval))
            if retval not in PASSING:
                return False, steps
    return True, steps


def flow_between(src: ProgramSpec, dst: ProgramSpec, protocol: str, port: int) -> pk.Flow | None:
    """The flow a client in `src` opens to `dst`: over IPv4 when both have it,
    else IPv6; None when they share no family."""
    for a, b in ((src.ipv4, dst.ipv4), (src.ipv6, dst.ipv6)):
        if a and b:
            return pk.Flow(a, b, protocol, CLIENT_PORT, port)
    return None

