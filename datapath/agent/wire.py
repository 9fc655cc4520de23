"""The agent API's messages <-> the values both sides use: every conversion
of a program, a pod's map contents or its counters to or from protobuf is
here, and nowhere else.

Called by the program sources (the operator, the lab's control plane) to
send, by the agent's server and backends to receive and to persist (the
kernel backend writes the PodProgram in force back as a message), and by
the operator to read counters. A program travels as raw instruction bytes
with map fds 0 plus a relocation table, so the receiver resolves map names
to its own map objects exactly as the compiler named them; group tests
travel the same way (a relocation naming the group), resolved by the agent
to its own numbering (datapath/groups.py).

Map contents everywhere are `{direction: {map name: {key: value}}}` (bytes
keys and values, in the layouts of datapath/layout.py).
"""
from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping

from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath import groups as G
from tailor.datapath.services import ServiceEntry
from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.maps import MapSpec, MapType
from tailor.datapath.layout import DIRECTIONS

Entries = Mapping[str, Mapping[str, Mapping[bytes, bytes]]]
# Packets per outcome, in the order of layout.STAT_NAMES: (allowed, dropped, redirected).
Totals = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Received:
    """A PodProgram as the agent uses it."""
    namespace: str
    name: str
    uid: str
    addresses: tuple[str, ...]
    hash: str
    features: tuple[str, ...]
    insns: dict[str, list[isa.Insn]]                  # direction -> instructions with refs
    maps: dict[str, list[MapSpec]]                     # direction -> maps its insns name
    entries: dict[str, dict[str, dict[bytes, bytes]]]  # direction -> map -> key -> value
    direction_features: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    groups: tuple[G.GroupChange, ...] = ()             # members to apply before loading

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def instructions(self) -> dict[str, int]:
        """Per direction, counted as the compiler counts them: in 8-byte
        slots (a 64-bit load is two)."""
        return {d: isa.slot_count(self.insns[d]) for d in DIRECTIONS}


# -- programs ----------------------------------------------------------------------

def _program(direction: str, insns: Iterable[isa.Insn], maps: Iterable[MapSpec],
             features: Iterable[str]) -> pb.Program:
    insns = list(insns)
    relocations, slot = [], 0
    for insn in insns:
        if insn.ref is not None:
            relocations.append(pb.Relocation(slot=slot, map=insn.ref, pseudo=insn.src))
        if insn.group is not None:
            relocations.append(pb.Relocation(slot=slot, group=insn.group))
        slot += insn.slots
    return pb.Program(
        direction=direction, insns=isa.encode(insns), relocations=relocations,
        maps=[_map_spec(m) for m in maps],
        features=sorted(features), instructions=slot,
        annotations=[i.comment or "" for i in insns])


def program_to_proto(program) -> pb.Program:
    """A compiler Program (operator.compiler.program.Program: direction,
    insns, maps, features; its encoded bytes and wire_parts when it has
    them, which a templated program has without making its instructions)
    -> message."""
    parts = getattr(program, "wire_parts", None)
    if parts is None:
        return _program(program.direction, program.insns, program.maps, program.features)
    relocations, annotations = parts
    return pb.Program(
        direction=program.direction, insns=program.encoded,
        relocations=[pb.Relocation(slot=slot, map=ref, pseudo=pseudo) if ref
                     else pb.Relocation(slot=slot, group=group) for slot, ref, pseudo, group in relocations],
        maps=[_map_spec(m) for m in program.maps], features=sorted(program.features),
        instructions=len(program.encoded) // isa.SLOT, annotations=list(annotations))


def _map_spec(m: MapSpec) -> pb.MapSpec:
    return pb.MapSpec(name=m.name, type=int(m.type), key_size=m.key_size, value_size=m.value_size,
                      max_entries=m.max_entries, flags=m.flags)


def program_from_proto(msg: pb.Program) -> tuple[list[isa.Insn], list[MapSpec]]:
    """Message -> (instructions with map refs and annotations, map specs).
    Raises ValueError naming the problem for a malformed message."""
    try:
        insns = isa.decode(msg.insns, list(msg.annotations) if msg.annotations else None)
    except ValueError as e:
        raise ValueError(f"{msg.direction} program: {e}") from None
    by_slot, slot = {}, 0
    for i, insn in enumerate(insns):
        by_slot[slot] = i
        slot += insn.slots
    specs = {m.name: MapSpec(m.name, MapType(m.type), m.key_size, m.value_size, m.max_entries, m.flags)
             for m in msg.maps}
    for rel in msg.relocations:
        i = by_slot.get(rel.slot)
        if rel.group:
            _group_relocation(msg.direction, insns, i, rel)
            continue
        if i is None or not insns[i].is_wide:
            raise ValueError(f"{msg.direction} program: relocation at slot {rel.slot} is not a 64-bit load")
        if rel.map not in specs:
            raise ValueError(f"{msg.direction} program: relocation names map {rel.map!r}, "
                             "which the program does not declare")
        insns[i] = dataclasses.replace(insns[i], ref=rel.map)
    return insns, list(specs.values())


def _group_relocation(direction: str, insns: list[isa.Insn], i: int | None, rel) -> None:
    try:
        G.kind_of(rel.group)
    except ValueError as e:
        raise ValueError(f"{direction} program: relocation at slot {rel.slot}: {e}") from None
    klass = insns[i].code & 0x07 if i is not None else None
    if klass not in (isa.LDX, isa.JMP, isa.JMP32):
        raise ValueError(f"{direction} program: group relocation at slot {rel.slot} "
                         "is neither a load nor a jump")
    insns[i] = dataclasses.replace(insns[i], group=rel.group)


# -- groups -------------------------------------------------------------------------

def group_changes_to_proto(changes: Iterable[G.GroupChange]) -> list[pb.GroupChange]:
    out = []
    for c in changes:
        msg = pb.GroupChange(group=c.group, replace=c.replace, drop=c.drop, seq=c.seq)
        if G.kind_of(c.group) == G.PEER:
            msg.add.extend(sorted(c.add))
            msg.remove.extend(sorted(c.remove))
        else:
            msg.add_endpoints.extend(pb.NamedEndpoint(address=a, port=p) for a, p in sorted(c.add))
            msg.remove_endpoints.extend(pb.NamedEndpoint(address=a, port=p) for a, p in sorted(c.remove))
        out.append(msg)
    return out


def group_changes_from_proto(msgs: Iterable[pb.GroupChange]) -> tuple[G.GroupChange, ...]:
    """Messages -> changes. Raises ValueError naming the group for a malformed one."""
    out = []
    for m in msgs:
        if G.kind_of(m.group) == G.PEER:
            add, remove = tuple(m.add), tuple(m.remove)
            if m.add_endpoints or m.remove_endpoints:
                raise ValueError(f"group {m.group}: a peer group's members are addresses, not endpoints")
        else:
            add = tuple((e.address, e.port) for e in m.add_endpoints)
            remove = tuple((e.address, e.port) for e in m.remove_endpoints)
            if m.add or m.remove:
                raise ValueError(f"group {m.group}: a named port's members are endpoints, not addresses")
        out.append(G.GroupChange(m.group, add, remove, m.replace, m.drop, m.seq))
    return tuple(out)


# -- Services -----------------------------------------------------------------------

def services_to_proto(entries) -> list[pb.ServiceEntry]:
    return [pb.ServiceEntry(address=e.address, port=e.port, protocol=e.protocol,
                            backends=[pb.ServiceBackend(address=a, port=p) for a, p in e.backends],
                            affinity_seconds=e.affinity_seconds, service=e.service) for e in entries]


def services_from_proto(msgs) -> list[ServiceEntry]:
    """Messages -> entries. Raises ValueError naming the Service for a bad one:
    an address that is not one, a port or protocol out of range, a backend
    of another family."""
    out = []
    for m in msgs:
        name = f"Service {m.service or '?'} ({m.address} port {m.port})"
        try:
            family = ipaddress.ip_address(m.address).version
            backends = tuple((str(ipaddress.ip_address(b.address)), b.port) for b in m.backends)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        if not 1 <= m.port <= 65535 or any(not 1 <= p <= 65535 for _, p in backends):
            raise ValueError(f"{name}: a port is outside 1-65535")
        if m.protocol not in (6, 17, 132):
            raise ValueError(f"{name}: protocol {m.protocol} is not TCP (6), UDP (17) or SCTP (132)")
        if any(ipaddress.ip_address(a).version != family for a, _ in backends):
            raise ValueError(f"{name}: a backend is not IPv{family}")
        out.append(ServiceEntry(str(ipaddress.ip_address(m.address)), m.port, m.protocol, backends,
                                m.affinity_seconds, m.service))
    return out


# -- map contents -------------------------------------------------------------------

def map_contents(entries: Entries) -> list[pb.MapContents]:
    """Map contents -> messages, one per (direction, map), in a stable order."""
    return [pb.MapContents(direction=d, map=m,
                           entries=[pb.MapEntry(key=k, value=v) for k, v in sorted(table.items())])
            for d in DIRECTIONS for m, table in sorted(entries.get(d, {}).items())]


def map_contents_from(contents: Iterable[pb.MapContents]) -> dict[str, dict[str, dict[bytes, bytes]]]:
    """Messages -> map contents. Raises ValueError for a direction that is
    neither ingress nor egress."""
    out: dict[str, dict[str, dict[bytes, bytes]]] = {}
    for c in contents:
        if c.direction not in DIRECTIONS:
            raise ValueError(f"map {c.map!r}: direction {c.direction!r} is not ingress or egress")
        out.setdefault(c.direction, {})[c.map] = {e.key: e.value for e in c.entries}
    return out


# -- pod programs -------------------------------------------------------------------

def to_proto(namespace: str, name: str, uid: str, programs, entries: Entries,
             addresses: tuple[str, ...] = (), groups: Iterable[G.GroupChange] = ()) -> pb.PodProgram:
    """Compiled PodPrograms (operator.compiler.program.PodPrograms) + their
    map contents and the group members to send along -> message."""
    return pb.PodProgram(
        pod=pb.PodRef(namespace=namespace, name=name, uid=uid), addresses=list(addresses),
        hash=programs.hash, features=list(programs.features),
        ingress=program_to_proto(programs.ingress), egress=program_to_proto(programs.egress),
        maps=map_contents(entries), groups=group_changes_to_proto(groups))


def from_proto(msg: pb.PodProgram) -> Received:
    """Message -> Received. Raises ValueError naming the pod and the problem."""
    insns, maps, features = {}, {}, {}
    for d in DIRECTIONS:
        part = getattr(msg, d)
        if part.direction != d:
            raise ValueError(f"pod {msg.pod.namespace}/{msg.pod.name}: the {d} program is missing "
                             f"or labelled {part.direction!r}")
        insns[d], maps[d] = program_from_proto(part)
        features[d] = tuple(part.features)
    entries: dict[str, dict[str, dict[bytes, bytes]]] = {d: {} for d in DIRECTIONS}
    try:
        entries.update(map_contents_from(msg.maps))
        groups = group_changes_from_proto(msg.groups)
    except ValueError as e:
        raise ValueError(f"pod {msg.pod.namespace}/{msg.pod.name}: {e}") from None
    return Received(msg.pod.namespace, msg.pod.name, msg.pod.uid, tuple(msg.addresses), msg.hash,
                    tuple(msg.features), insns, maps, entries, features, groups)


def received_to_proto(received: Received) -> pb.PodProgram:
    """A Received back into its message (the kernel backend persists the
    program in force this way); from_proto of it gives `received` again."""
    return pb.PodProgram(
        pod=pb.PodRef(namespace=received.namespace, name=received.name, uid=received.uid),
        addresses=list(received.addresses), hash=received.hash, features=list(received.features),
        maps=map_contents(received.entries),
        **{d: _program(d, received.insns[d], received.maps[d], received.direction_features.get(d, ()))
           for d in DIRECTIONS})


# -- counters -----------------------------------------------------------------------

def counters_to_proto(namespace: str, name: str, uid: str,
                      totals: Mapping[str, Totals]) -> pb.CountersResponse:
    """{direction: (allowed, dropped, redirected)} -> message."""
    return pb.CountersResponse(
        pod=pb.PodRef(namespace=namespace, name=name, uid=uid),
        **{d: pb.DirectionCounters(allowed=t[0], dropped=t[1], redirected=t[2])
           for d, t in totals.items()})
