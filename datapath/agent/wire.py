"""Programs on the wire: compiled pod programs <-> the agent API's messages.

Called by the program sources (the lab's controller, the operator) to send,
and by the agent to receive. A program travels as raw instruction bytes
with map fds 0 plus a relocation table, so the receiver resolves map names
to its own map objects exactly as the compiler named them.
"""
from __future__ import annotations

import dataclasses

from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.maps import MapSpec, MapType

DIRECTIONS = ("ingress", "egress")


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

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def program_to_proto(program) -> pb.Program:
    """A compiler Program (operator.compiler.program.Program) -> message."""
    insns = list(program.insns)
    relocations, slot = [], 0
    for insn in insns:
        if insn.ref is not None:
            relocations.append(pb.Relocation(slot=slot, map=insn.ref, pseudo=insn.src))
        slot += insn.slots
    return pb.Program(
        direction=program.direction, insns=isa.encode(insns), relocations=relocations,
        maps=[pb.MapSpec(name=m.name, type=int(m.type), key_size=m.key_size, value_size=m.value_size,
                         max_entries=m.max_entries, flags=m.flags) for m in program.maps],
        features=sorted(program.features), instructions=program.instructions,
        annotations=[i.comment or "" for i in insns])


def to_proto(namespace: str, name: str, uid: str, programs, entries,
             addresses: tuple[str, ...] = ()) -> pb.PodProgram:
    """PodPrograms + map entries ({direction: {map: {key: value}}}) -> message."""
    contents = [pb.MapContents(direction=d, map=m,
                               entries=[pb.MapEntry(key=k, value=v) for k, v in sorted(table.items())])
                for d in DIRECTIONS for m, table in sorted(entries.get(d, {}).items())]
    return pb.PodProgram(
        pod=pb.PodRef(namespace=namespace, name=name, uid=uid), addresses=list(addresses),
        hash=programs.hash, features=list(programs.features),
        ingress=program_to_proto(programs.ingress), egress=program_to_proto(programs.egress),
        maps=contents)


def program_from_proto(msg: pb.Program) -> tuple[list[isa.Insn], list[MapSpec]]:
    """Message -> (instructions with map refs and annotations, map specs).
    Raises ValueError naming the problem for a malformed message."""
    insns = isa.decode(msg.insns)
    by_slot, slot = {}, 0
    for i, insn in enumerate(insns):
        by_slot[slot] = i
        slot += insn.slots
    specs = {m.name: MapSpec(m.name, MapType(m.type), m.key_size, m.value_size, m.max_entries, m.flags)
             for m in msg.maps}
    for rel in msg.relocations:
        i = by_slot.get(rel.slot)
        if i is None or not insns[i].is_wide:
            raise ValueError(f"{msg.direction} program: relocation at slot {rel.slot} is not a 64-bit load")
        if rel.map not in specs:
            raise ValueError(f"{msg.direction} program: relocation names map {rel.map!r}, "
                             "which the program does not declare")
        insns[i] = dataclasses.replace(insns[i], ref=rel.map)
    if msg.annotations:
        if len(msg.annotations) != len(insns):
            raise ValueError(f"{msg.direction} program: {len(msg.annotations)} annotations "
                             f"for {len(insns)} instructions")
        insns = [dataclasses.replace(i, comment=c or None) for i, c in zip(insns, msg.annotations)]
    return insns, list(specs.values())


def from_proto(msg: pb.PodProgram) -> Received:
    insns, maps = {}, {}
    for d in DIRECTIONS:
        part = getattr(msg, d)
        if part.direction != d:
            raise ValueError(f"pod {msg.pod.namespace}/{msg.pod.name}: the {d} program is missing "
                             f"or labelled {part.direction!r}")
        insns[d], maps[d] = program_from_proto(part)
    entries: dict[str, dict[str, dict[bytes, bytes]]] = {d: {} for d in DIRECTIONS}
    for contents in msg.maps:
        entries.setdefault(contents.direction, {})[contents.map] = {e.key: e.value for e in contents.entries}
    return Received(msg.pod.namespace, msg.pod.name, msg.pod.uid, tuple(msg.addresses), msg.hash,
                    tuple(msg.features), insns, maps, entries)
