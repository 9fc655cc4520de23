"""Compiled pods traced as one node would run them: every pod's two
programs loaded in a trace engine (datapath/trace.py: the VM, or the kernel
through BPF_PROG_TEST_RUN) against shared connection-tracking and endpoint
maps, and a connection walked through them.

Called by `tailor connectivity --datapath emulated|kernel`, by the
benchmarks and by the tests that check compiled programs against the model.
It never consults the policy model: the answer is what the programs return.
It sits in the operator, above the compiler whose ProgramSpecs and programs
it loads; the datapath below knows only programs, maps and packets.
"""
from __future__ import annotations

import dataclasses
import ipaddress

from tailor.datapath import groups as node_groups
from tailor.datapath import layout
from tailor.datapath import packets as pk
from tailor.datapath import services as node_services
from tailor.datapath import trace
from tailor.datapath.layout import EGRESS, INGRESS
from tailor.operator import groups
from tailor.operator.cluster.state import ClusterState
from tailor.operator.compiler.program import PodPrograms
from tailor.operator.compiler.spec import ProgramSpec

CLIENT_PORT = trace.CLIENT_PORT


@dataclasses.dataclass
class Trace:
    flow: pk.Flow
    steps: list[trace.Step]
    ends: int = 2                  # how many ends are pods of the node (their programs run)

    @property
    def allowed(self) -> bool:
        return len(self.steps) == 2 * self.ends and all(s.passed for s in self.steps)


@dataclasses.dataclass
class ServiceTrace:
    """A connection to a Service address walked through the programs:
    `backend` the flow its client's program made of it (None: left
    untranslated), `answered` the flow the client finally received."""
    flow: pk.Flow
    backend: pk.Flow | None
    steps: list[trace.Step]
    answered: pk.Flow | None = None
    checksums: bool = True         # every frame the programs rewrote had valid checksums

    @property
    def allowed(self) -> bool:
        return (self.backend is not None and len(self.steps) == 4 and all(s.passed for s in self.steps)
                and self.answered == self.flow.reply())


@dataclasses.dataclass
class _Pod:
    spec: ProgramSpec
    programs: PodPrograms
    loaded: dict[str, object]
    maps: list[object]
    mac: bytes


class Node:
    """One node's worth of pods: their programs loaded in `engine` against
    the node-wide maps (connection tracking, endpoints, and the identity
    maps holding the members of the groups their rules test, taken from
    `state`) and their own maps."""

    def __init__(self, engine, state: ClusterState, addresses: tuple[str, ...] = ()):
        """`addresses`: the node's own (groups.HOST), as its agent holds them."""
        self.engine = engine
        self.memberships = groups.Memberships(state)
        self.groups = node_groups.NodeGroups()
        self.shared = {name: engine.create_map(spec) for name, spec in layout.NODE_MAPS.items()}
        self.ct = {f: self.shared[spec.name] for f, spec in layout.CT_MAPS.items()}
        self.pods: dict[str, _Pod] = {}
        self.addresses = tuple(addresses)
        self.services = node_services.ServiceTable()
        self._write(self.groups.set_local(node_groups.HOST, self.addresses))

    def members(self, gid: str) -> frozenset:
        if gid == node_groups.HOST:
            return frozenset(self.addresses)
        return self.memberships.members(gid)

    def _write(self, writes) -> None:
        for name, table in writes.items():
            for key, value in table.items():
                if value is None:
                    self.shared[name].delete(key)
                else:
                    self.shared[name].update(key, value)

    def set_services(self, entries) -> None:
        """Hold this Service table (datapath.services.ServiceEntry), as an
        agent does after SetServices."""
        for name, key, value in self.services.set(entries):
            if value is None:
                self.shared[name].delete(key)
            else:
                self.shared[name].update(key, value)

    def add_generic(self, spec: ProgramSpec) -> None:
        """Load the pod on the generic programs (compiler.generic), its
        peers in its own maps."""
        from tailor.operator.compiler import generic

        self.memberships.define(spec.definitions.values())
        self.add(spec, *generic.programs(spec, self.members))

    def add(self, spec: ProgramSpec, programs: PodPrograms, entries=None) -> None:
        """Load a pod's two programs with its own maps filled from `entries`
        ({direction: {map name: {key: value}}}; the specialised programs
        have none but counters) and the members of the groups it tests in
        the node's identity maps."""
        entries = entries or {}
        self.memberships.define(spec.definitions.values())
        wanted = [node_groups.GroupChange(g, tuple(self.members(g)), replace=True)
                  for g in sorted(spec.definitions) if g not in self.groups.groups()]
        self._write(self.groups.update(wanted))
        insns, held = self.groups.resolve({d: list(programs.program(d).insns) for d in (INGRESS, EGRESS)})
        self.groups.hold(spec.pod, held)
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
                    for key, value in entries.get(direction, {}).get(mspec.name, {}).items():
                        m.update(key, value)
                    maps[mspec.name] = m
                loaded[direction] = self.engine.load(insns[direction], maps,
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
        """Forget every connection (and Service translation and affinity)."""
        names = [*layout.CT_MAPS.values(), *layout.NAT_MAPS.values(), *layout.AFFINITY_MAPS.values()]
        for m in (self.shared[spec.name] for spec in names):
            for key in list(m.keys()):
                m.delete(key)

    def trace(self, src: str, dst: str, flow: pk.Flow) -> Trace:
        """Walk a connection's first packet and its reply through the
        programs. An end that is no pod of this node (the node itself, an
        address elsewhere) runs no program."""
        ends = []
        for ref in (src, dst):
            pod = self.pods.get(ref)
            ends.append((ref, pod.mac) if pod is not None else (None, pk.DEFAULT_SRC_MAC))

        def run(key: str, direction: str, frame: bytes, mark: int) -> tuple[int, bytes, int]:
            return self.engine.run(self.pods[key].loaded[direction], frame, mark)

        _, steps = trace.walk(run, ends[0], ends[1], flow)
        return Trace(flow, steps, sum(1 for key, _ in ends if key is not None))

    def pod_at(self, address: str) -> str | None:
        return next((ref for ref, p in self.pods.items() if address in (p.spec.ipv4, p.spec.ipv6)), None)

    def trace_service(self, src: str, flow: pk.Flow) -> ServiceTrace:
        """Walk a connection from pod `src` to a Service address
        (trace.follow): src's egress translates it; the backend, if a pod
        of this node, judges it and answers; src's ingress must give the
        reply the Service's address back."""
        def run(key: str, direction: str, frame: bytes, mark: int) -> tuple[int, bytes, int]:
            return self.engine.run(self.pods[key].loaded[direction], frame, mark)

        def locate(address: str):
            ref = self.pod_at(address)
            return (ref, self.pods[ref].mac) if ref else (None, pk.DEFAULT_SRC_MAC)

        walked = trace.follow(run, (src, self.pods[src].mac), flow, locate)
        return ServiceTrace(flow, walked.sent if walked.translated else None, walked.steps,
                            walked.answered, all(pk.checksums_valid(f) for f in walked.frames))

    def close(self) -> None:
        for pod in self.pods.values():
            for obj in pod.maps:
                self.engine.close(obj)
        for m in self.shared.values():
            self.engine.close(m)
        self.pods.clear()


def flow_between(src: ProgramSpec, dst: ProgramSpec, protocol: str, port: int) -> pk.Flow | None:
    """The flow a client in `src` opens to `dst`: over IPv4 when both have it,
    else IPv6; None when they share no family."""
    for a, b in ((src.ipv4, dst.ipv4), (src.ipv6, dst.ipv6)):
        if a and b:
            return pk.Flow(a, b, protocol, CLIENT_PORT, port)
    return None

