"""Compile once per program shape; patch each pod's own constants.

Among thousands of pods there are few distinct programs once what is the
pod's own is set aside: its addresses (the anti-spoof compares), and the
names its rules carry — which policy a rule came from (the annotations)
and which node-wide groups it tests (relocations, like map names). Pods of
one Deployment under one policy differ in nothing else, and neither do the
pods of two namespaces under the same per-namespace policy. So a shape is
the spec with those names replaced by placeholders; its first pod is
compiled twice, with two placeholder addresses, and the instructions that
differ are the sites of the pod's address. Every later pod of that shape is
the template with its address written into those immediates and its names
put back in the relocations and annotations (Cilium's ELF templating, done
on bytecode). The bytes and hash are computed from the patched template,
so the hash still names exactly what runs; the instruction objects are made
only when something reads them (a trace, a disassembly). The result equals
a direct compile — the property tests check it.

A shape whose placeholder compiles differ in anything but such immediates
is not templated: its pods are compiled one by one. Pure.
"""
from __future__ import annotations

import dataclasses
import ipaddress

from tailor.operator.compiler import program
from tailor.operator.compiler.spec import (EGRESS, INGRESS, Direction, Group, NamedPort,
                                           ProgramSpec, Tier)

# A word that were the same in both would not show up as a site.
_PLACEHOLDERS = {4: ("198.51.100.1", "203.0.113.2"),
                 6: ("2001:db8:1:2:3:4:5:6", "3fff:1:a:b:c:d:e:f")}
_MARK = "\x00tpl"          # no policy, group or port name holds a NUL


def _words(address: str) -> list[int]:
    packed = ipaddress.ip_address(address).packed
    return [int.from_bytes(packed[i:i + 4], "little") for i in range(0, len(packed), 4)]


assert all(x != y for a, b in _PLACEHOLDERS.values() for x, y in zip(_words(a), _words(b)))


@dataclasses.dataclass(frozen=True)
class _Template:
    programs: program.PodPrograms
    # direction -> [(instruction index, family, word index)]
    sites: dict[str, list[tuple[int, int, int]]]


@dataclasses.dataclass
class _Names:
    """The pod's own names, in the order the canonical shape numbered them."""
    groups: dict[str, str] = dataclasses.field(default_factory=dict)     # placeholder id -> id
    sources: dict[str, str] = dataclasses.field(default_factory=dict)    # placeholder -> source
    _ports: dict[str, str] = dataclasses.field(default_factory=dict)     # name -> placeholder

    def group(self, gid: str) -> str:
        for placeholder, real in self.groups.items():
            if real == gid:
                return placeholder
        placeholder = f"{gid.split(':', 1)[0]}:{_MARK}{len(self.groups)}"
        self.groups[placeholder] = gid
        return placeholder

    def port(self, p: NamedPort) -> NamedPort:
        name = self._ports.setdefault(p.name, f"{_MARK}{len(self._ports)}")
        canonical = NamedPort(p.protocol, name)
        self.groups[canonical.id] = p.id
        return canonical

    def source(self, text: str) -> str:
        placeholder = f"{_MARK}rule{len(self.sources)}"
        self.sources[placeholder] = text
        return placeholder


class Templates:
    """A cache of templates by shape. `compile(spec)` equals
    program.compile_pod(spec): bytes, annotations, relocations and hash."""

    def __init__(self, limit: int = 4096):
        self._cache: dict[ProgramSpec, _Template | None] = {}
        self.limit = limit
        self.compiled = 0          # placeholder compiles (two per shape)
        self.patched = 0
        # Pods resolved alike share their Direction objects (resolve.Resolver):
        # their canonical form is made once. Keyed by identity, the objects held.
        self._canonical: dict[tuple[int, int], tuple] = {}

    def compile(self, spec: ProgramSpec) -> program.PodPrograms:
        if not spec.families:
            return program.compile_pod(spec)       # raises the CompileError naming the pod
        shape, names = self._shape(spec)
        if shape not in self._cache:
            if len(self._cache) >= self.limit:
                self._cache.clear()                # bounded: a shape that comes back is made again
            try:
                self._cache[shape] = self._make(spec, shape)
            except program.CompileError:
                return program.compile_pod(spec)   # the error, naming this pod
        template = self._cache[shape]
        if template is None:
            return program.compile_pod(spec)
        self.patched += 1
        own = {4: _words(spec.ipv4) if spec.ipv4 else [], 6: _words(spec.ipv6) if spec.ipv6 else []}
        out = {}
        for d in (INGRESS, EGRESS):
            sites = {i: own[family][word] for i, family, word in template.sites[d]}
            out[d] = template.programs.program(d).instance(sites, names.groups, names.sources)
        return program.PodPrograms(spec.pod, out[INGRESS], out[EGRESS], template.programs.features)

    def _shape(self, spec: ProgramSpec) -> tuple[ProgramSpec, _Names]:
        key = (id(spec.ingress), id(spec.egress))
        hit = self._canonical.get(key)
        if hit is None or hit[0] is not spec.ingress or hit[1] is not spec.egress:
            if len(self._canonical) >= 4 * self.limit:
                self._canonical.clear()
            names = _Names()
            hit = self._canonical[key] = (spec.ingress, spec.egress, _shape(spec, names, 0), names)
        _, _, shape, names = hit
        return _with_address(dataclasses.replace(shape, ipv4=spec.ipv4, ipv6=spec.ipv6,
                                                 services=spec.services), 0), names

    def _make(self, spec: ProgramSpec, shape: ProgramSpec) -> _Template | None:
        a = program.compile_pod(_with_address(shape, 0))
        b = program.compile_pod(_with_address(shape, 1))
        self.compiled += 2
        words = {n: {f: _words(_PLACEHOLDERS[f][n]) for f in (4, 6)} for n in (0, 1)}
        sites: dict[str, list] = {}
        for d in (INGRESS, EGRESS):
            pa, pb = a.program(d), b.program(d)
            if len(pa.insns) != len(pb.insns) or pa.maps != pb.maps or pa.features != pb.features:
                return None
            sites[d] = []
            for i, (x, y) in enumerate(zip(pa.insns, pb.insns)):
                if x == y:
                    continue
                if dataclasses.replace(x, imm=y.imm) != y or x.is_wide:
                    return None
                found = [(f, w) for f in spec.families for w in range(len(words[0][f]))
                         if _s32(words[0][f][w]) == _s32(x.imm) and _s32(words[1][f][w]) == _s32(y.imm)]
                if len(found) != 1:
                    return None
                sites[d].append((i, *found[0]))
        return _Template(a, sites)


def _s32(v: int) -> int:
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _shape(spec: ProgramSpec, names: _Names, n: int) -> ProgramSpec:
    """The spec with its own names replaced by placeholders (recorded in
    `names`) and its own addresses by placeholder `n`."""
    def direction(d: Direction) -> Direction:
        return Direction(tuple(Tier(t.kind, tuple(
            dataclasses.replace(
                r, source=names.source(r.source),
                peers=tuple(Group(names.group(p.id)) if isinstance(p, Group) else p for p in r.peers),
                ports=None if r.ports is None else tuple(
                    names.port(p) if isinstance(p, NamedPort) else p for p in r.ports))
            for r in t.rules)) for t in d.tiers))

    return _with_address(dataclasses.replace(spec, pod="", mac=b"\0" * 6, ifindex=0, definitions={},
                                             ingress=direction(spec.ingress),
                                             egress=direction(spec.egress)), n)


def _with_address(spec: ProgramSpec, n: int) -> ProgramSpec:
    return dataclasses.replace(spec, ipv4=_PLACEHOLDERS[4][n] if spec.ipv4 else None,
                               ipv6=_PLACEHOLDERS[6][n] if spec.ipv6 else None)
