"""The per-pod compiler: ProgramSpec -> the pod's two programs.

Called by `tailor programs`, `tailor connectivity`, the lab and the operator.
Pure and deterministic: the same spec gives the same bytes and hash.

A pod gets two sched_cls programs on its host-side interface:
- `egress`: what the pod sends (tcx ingress of the host-side veth);
- `ingress`: what the pod receives (tcx egress of the host-side veth).

Each reads as the pipeline below; a part the pod does not need is not
emitted at all:

    header      r6 = ctx
    ethertype   ARP passes; each of the pod's families to its parser; else drop
    per family  parse -> anti-spoof, Service translation (egress) | Service reply
                translated back, host path? (ingress) -> reply? (conntrack)
                -> peer lookup -> own node? (ingress) -> named-port lookup
                -> tiers -> record (conntrack)
    footer      allow: TC_ACT_OK; drop: TC_ACT_SHOT
"""
from __future__ import annotations

import collections.abc
import dataclasses
import functools
import hashlib
import ipaddress
import struct

from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.builder import Builder, R0, R1, R6, R9, R10
from tailor.datapath.ebpf.maps import MapSpec
from tailor.datapath import groups as node_groups
from tailor.datapath import layout
from tailor.operator.compiler import conntrack, forward, labels, parse, rules, services
from tailor.operator.compiler.spec import (EGRESS, INGRESS, Cidr, Direction, Group, NamedPort,
                                           ProgramSpec, TierKind)


class CompileError(ValueError):
    """The spec asks for something the compiler cannot build; the message
    names the pod and the limit."""


@dataclasses.dataclass(frozen=True)
class Program:
    """One attach point's program. `maps` are the maps its instructions
    name, by their local names (Insn.ref); the datapath decides which kernel
    object each name is (node-wide ct4/ct6, the pod's own peers4, ...)."""
    direction: str
    insns: tuple[isa.Insn, ...]
    maps: tuple[MapSpec, ...]
    features: frozenset[str]
    jumps: int

    @functools.cached_property
    def instructions(self) -> int:
        return isa.slot_count(self.insns)

    @functools.cached_property
    def encoded(self) -> bytes:
        """The instructions as the wire carries them (map fds 0, group bits unresolved)."""
        return isa.encode(self.insns)

    @functools.cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.encoded + _names(self.relocations, self.maps)).hexdigest()

    @functools.cached_property
    def relocations(self) -> tuple:
        """(slot, map, pseudo, group) per map reference and group test."""
        out, slot = [], 0
        for insn in self.insns:
            if insn.ref is not None:
                out.append((slot, insn.ref, insn.src, None))
            if insn.group is not None:
                out.append((slot, None, 0, insn.group))
            slot += insn.slots
        return tuple(out)

    @functools.cached_property
    def annotations(self) -> tuple[str, ...]:
        """An annotation per instruction ("" if none)."""
        renamed = self.__dict__.get("_renamed")
        if renamed is not None:                   # an instance of a template
            template, sources = renamed
            return tuple(sources.get(a, a) for a in template.annotations)
        return tuple(i.comment or "" for i in self.insns)

    @property
    def wire_parts(self) -> tuple[tuple, tuple[str, ...]]:
        """What the wire carries besides the bytes."""
        return self.relocations, self.annotations

    @functools.cached_property
    def slot_of(self) -> tuple[int, ...]:
        out, slot = [], 0
        for insn in self.insns:
            out.append(slot)
            slot += insn.slots
        return tuple(out)

    @property
    def groups(self) -> frozenset[str]:
        return frozenset(g for _, _, _, g in self.relocations if g)

    def instance(self, sites: dict[int, int], groups: dict[str, str],
                 sources: dict[str, str]) -> "Program":
        """This template with the immediates at `sites` ({instruction index:
        imm}) replaced and its placeholder group ids and annotations renamed
        (compiler/template.py). Bytes, relocations and hash are made by
        patching this one's; the instructions only when read."""
        code = bytearray(self.encoded)
        slot_of = self.slot_of
        for i, imm in sites.items():
            struct.pack_into("<i", code, 8 * slot_of[i] + 4, imm - (1 << 32) if imm >= 1 << 31 else imm)
        relocations = tuple((slot, ref, pseudo, groups.get(g, g) if g else g)
                            for slot, ref, pseudo, g in self.relocations)
        template = self

        def materialise() -> tuple[isa.Insn, ...]:
            out = []
            for i, insn in enumerate(template.insns):
                changes = {}
                if i in sites:
                    changes["imm"] = sites[i]
                if insn.group is not None:
                    changes["group"] = groups.get(insn.group, insn.group)
                if insn.comment is not None and insn.comment in sources:
                    changes["comment"] = sources[insn.comment]
                out.append(dataclasses.replace(insn, **changes) if changes else insn)
            return tuple(out)

        out = Program(self.direction, LazyInsns(materialise, len(self.insns)), self.maps,
                      self.features, self.jumps)
        seeded = out.__dict__
        seeded["encoded"] = bytes(code)
        seeded["relocations"] = relocations
        seeded["_renamed"] = (self, sources)        # annotations, made when read
        seeded["instructions"] = self.instructions
        seeded["digest"] = hashlib.sha256(seeded["encoded"] + _names(relocations, self.maps)).hexdigest()
        return out


def _names(relocations, maps) -> bytes:
    """What the hash covers besides the bytes: the maps and groups the
    instructions name, in order, and the maps' shapes."""
    out = bytearray()
    for _, ref, _, group in relocations:
        if ref:
            out += ref.encode()
        if group:
            out += b"group " + group.encode()
    for spec in maps:
        out += repr(spec).encode()
    return bytes(out)


class LazyInsns(collections.abc.Sequence):
    """A templated program's instructions, made on first read."""

    def __init__(self, make, length: int):
        self._make, self._length, self._insns = make, length, None

    def _all(self) -> tuple:
        if self._insns is None:
            self._insns = self._make()
        return self._insns

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i):
        return self._all()[i]

    def __iter__(self):
        return iter(self._all())

    def __eq__(self, other) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (tuple, list, LazyInsns)) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._all())


@dataclasses.dataclass(frozen=True)
class PodPrograms:
    pod: str
    ingress: Program
    egress: Program
    features: tuple[str, ...]

    @property
    def instructions(self) -> int:
        return self.ingress.instructions + self.egress.instructions

    @functools.cached_property
    def groups(self) -> frozenset[str]:
        """The node-wide groups the instructions test whose members the
        program source keeps (a tier the compiler left out names none; the
        agent keeps HOST itself)."""
        return (self.ingress.groups | self.egress.groups) - {node_groups.HOST}

    @functools.cached_property
    def hash(self) -> str:
        return hashlib.sha256((self.ingress.digest + self.egress.digest).encode()).hexdigest()[:16]

    def program(self, direction: str) -> Program:
        return self.ingress if direction == INGRESS else self.egress


def compile_pod(spec: ProgramSpec) -> PodPrograms:
    if not spec.families:
        raise CompileError(f"pod {spec.pod} has no IP address: nothing to compile")
    ingress = compile_direction(spec, INGRESS)
    egress = compile_direction(spec, EGRESS)
    return PodPrograms(spec.pod, ingress, egress, tuple(sorted(ingress.features | egress.features)))


def features_of(spec: ProgramSpec, direction: str) -> set[str]:
    d = spec.direction(direction)
    other = spec.direction(conntrack.OPPOSITE[direction])
    out = {f"ipv{f}" for f in spec.families}
    if direction == EGRESS:
        out.update(("anti-spoof", "redirect"))
    else:
        out.add("host-path")
    if d.enforced:
        out.add(f"{direction}-policy")
        if direction == INGRESS:
            out.add("node-allow")
    if d.enforced or other.enforced:
        out.add("conntrack")
    if any(spec.translates(f) for f in spec.families):
        out.add("services")
        if spec.services.affinity and direction == EGRESS:
            out.add("session-affinity")
    kinds = {t.kind for t in d.tiers}
    if TierKind.ADMIN in kinds:
        out.add("anp")
    if TierKind.BASELINE in kinds:
        out.add("banp")
    for rule in d.rules:
        if any(isinstance(p, Group) for p in rule.peers):
            out.add("selectors")
        if any(isinstance(p, Cidr) for p in rule.peers):
            out.add("ipblock")
        for port in rule.ports or ():
            out.add("named-ports" if isinstance(port, NamedPort) else "ports")
    return out


def compile_direction(spec: ProgramSpec, direction: str) -> Program:
    d = spec.direction(direction)
    other = spec.direction(conntrack.OPPOSITE[direction])
    features = features_of(spec, direction)
    # Ingress policy lets the pod's own node in, which is a group test.
    groups = "selectors" in features or "node-allow" in features
    named = "named-ports" in features
    frame = layout.Frame.plan()
    maps: dict[str, MapSpec] = {}

    # Ports and protocol matter only to policy, connection tracking and Services.
    stateful = d.enforced or other.enforced
    b = Builder()
    b.mov64(R6, R1)
    parse.ethertype(b, spec.families, arp=labels.ARP, drop=labels.DROP)
    for family in spec.families:
        remote = frame.key + layout.key_fields(family)["daddr" if direction == EGRESS else "saddr"]
        # Where an allowed packet goes: egress delivers it, ingress lets it in.
        passed = labels.family_forward(family) if direction == EGRESS else labels.ALLOW
        translates = spec.translates(family)
        l4 = stateful or translates
        with b.annotate(f"parse IPv{family}" + ("" if l4 else " addresses")):
            if family == 4:
                parse.ipv4(b, frame.key, labels.DROP, l4=l4)
            else:
                parse.ipv6(b, frame.key, labels.DROP, nd_allow=labels.ALLOW, l4=l4)
        if direction == EGRESS:
            with b.annotate("anti-spoof: the pod sends only from its own address"):
                _anti_spoof(b, spec, family, frame)
            if translates:
                services.translate(b, family, frame, spec.services, labels.DROP)
        else:
            if translates:
                services.untranslate(b, family, frame, spec.services, labels.DROP)
            forward.host_path_record(b, family, frame)
        if d.enforced:
            maps[layout.CT_MAPS[family].name] = layout.CT_MAPS[family]
            conntrack.reply_check(b, family, frame, direction, passed)
            if groups:
                with b.annotate("peers: the remote address's groups on this node"):
                    _peer_lookup(b, family, remote)
            if direction == INGRESS:
                with b.annotate("node: the pod's own node is always let in (kubelet probes)"):
                    rules.group_test(b, node_groups.HOST, labels.family_allow(family),
                                     labels.not_node(family))
                    b.label(labels.not_node(family))
            if named:
                with b.annotate("named ports: which the remote pod exposes at this port"):
                    rules.named_port_lookup(b, family, frame, remote)
            rules.emit(b, d, family, remote=remote, np_bits=frame.np_bits)
        else:
            b.jump(labels.family_allow(family))
        b.label(labels.family_allow(family))
        if other.enforced:
            maps[layout.CT_MAPS[family].name] = layout.CT_MAPS[family]
            conntrack.record(b, family, frame, direction, passed)
        b.jump(passed)
        if direction == EGRESS:
            b.label(passed)
            forward.deliver(b, family, frame)
    forward.footer(b, frame)
    insns = b.assemble()
    used = isa.map_refs(insns)
    maps.update(layout.NODE_MAPS)
    maps[layout.STATS.name] = layout.STATS
    return Program(direction, tuple(insns), tuple(maps[name] for name in used),
                   frozenset(features), b.jumps)


def _anti_spoof(b: Builder, spec: ProgramSpec, family: int, frame: layout.Frame) -> None:
    saddr = frame.key + layout.key_fields(family)["saddr"]
    own = ipaddress.ip_address(spec.ipv4 if family == 4 else spec.ipv6).packed
    ok = labels.spoof_ok(family)
    if family == 6:
        # Link-local fe80::/10 sources are how IPv6 finds its neighbours.
        b.load(2, R1, R10, saddr)
        b.and32(R1, 0xC0FF)
        b.jump_if("jeq", R1, 0x80FE, ok, wide=False)
    for off in range(0, len(own), 4):
        b.load(4, R1, R10, saddr + off)
        b.jump_if("jne", R1, int.from_bytes(own[off:off + 4], "little"), labels.DROP, wide=False)
    b.label(ok)


def _peer_lookup(b: Builder, family: int, remote: int) -> None:
    """r9 = the remote address's group bitmap in the node's identity map,
    or 0: every group test checks r9 first, so an address in no group
    costs one lookup and no stores."""
    b.map_lookup(layout.IDS_MAPS[family].name, remote)
    b.mov64(R9, R0)
