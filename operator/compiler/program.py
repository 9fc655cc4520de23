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
    per family  parse -> anti-spoof (egress) -> reply? (conntrack)
                -> peer lookup -> named-port lookup -> tiers -> record (conntrack)
    footer      allow: TC_ACT_OK; drop: TC_ACT_SHOT
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress

from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.builder import Builder, R0, R1, R6, R9, R10
from tailor.datapath.ebpf.maps import MapSpec
from tailor.datapath import layout
from tailor.operator.compiler import conntrack, forward, labels, parse, rules
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

    @property
    def instructions(self) -> int:
        return isa.slot_count(self.insns)

    @functools.cached_property
    def digest(self) -> str:
        h = hashlib.sha256(isa.encode(self.insns))
        for insn in self.insns:
            if insn.ref:
                h.update(insn.ref.encode())
        for spec in self.maps:
            h.update(repr(spec).encode())
        return h.hexdigest()


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
    if d.enforced:
        out.add(f"{direction}-policy")
    if d.enforced or other.enforced:
        out.add("conntrack")
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


def group_count(d: Direction) -> int:
    return max((p.index + 1 for r in d.rules for p in r.peers if isinstance(p, Group)), default=0)


def compile_direction(spec: ProgramSpec, direction: str) -> Program:
    d = spec.direction(direction)
    other = spec.direction(conntrack.OPPOSITE[direction])
    features = features_of(spec, direction)
    groups = group_count(d)
    words = layout.words_for(groups)
    named = "named-ports" in features
    if named and max(p.slot for r in d.rules for p in r.ports or () if isinstance(p, NamedPort)) \
            >= layout.NAMED_PORT_SLOTS:
        raise CompileError(f"pod {spec.pod}: more than {layout.NAMED_PORT_SLOTS} named ports "
                           f"in {direction} rules")
    if words > layout.MAX_GROUP_WORDS:
        raise CompileError(f"pod {spec.pod}: {groups} peer groups in {direction} rules; "
                           f"at most {32 * layout.MAX_GROUP_WORDS} fit the program's stack")
    frame = layout.Frame.plan(words)
    maps: dict[str, MapSpec] = {}

    # Ports and protocol matter only to policy and connection tracking.
    l4 = d.enforced or other.enforced
    b = Builder()
    b.mov64(R6, R1)
    parse.ethertype(b, spec.families, arp=labels.ARP, drop=labels.DROP)
    for family in spec.families:
        remote = frame.key + layout.key_fields(family)["daddr" if direction == EGRESS else "saddr"]
        # Where an allowed packet goes: egress delivers it, ingress lets it in.
        passed = labels.family_forward(family) if direction == EGRESS else labels.ALLOW
        with b.annotate(f"parse IPv{family}" + ("" if l4 else " addresses")):
            if family == 4:
                parse.ipv4(b, frame.key, labels.DROP, l4=l4)
            else:
                parse.ipv6(b, frame.key, labels.DROP, nd_allow=labels.ALLOW, l4=l4)
        if direction == EGRESS:
            with b.annotate("anti-spoof: the pod sends only from its own address"):
                _anti_spoof(b, spec, family, frame)
        if d.enforced:
            maps[layout.CT_MAPS[family].name] = layout.CT_MAPS[family]
            conntrack.reply_check(b, family, frame, direction, passed)
            if groups:
                maps[f"peers{family}"] = layout.peer_map(family, words)
                with b.annotate("peers: the remote address's selector groups"):
                    _peer_lookup(b, family, frame, remote, words)
            if named:
                maps[f"nports{family}"] = layout.named_port_map(family)
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


def _peer_lookup(b: Builder, family: int, frame: layout.Frame, remote: int, words: int) -> None:
    found = labels.lookup_done(family, "peers")
    b.map_lookup(f"peers{family}", remote)
    b.jne(R0, 0, found)
    for off in range(frame.zero, frame.zero + 4 * words, 8):
        b.store(8, R10, off, 0)
    b.mov64(R0, R10)
    b.add64(R0, frame.zero)
    b.label(found)
    b.mov64(R9, R0)

