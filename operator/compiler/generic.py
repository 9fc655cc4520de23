"""Generic mode: one program for every pod, every feature compiled in, all
policy in maps — what a datapath that does not specialise runs. It is the
baseline that shows what specialisation buys (benchmarks, `tailor programs
--generic`), and it is checked against the model like the specialised
programs.

Called by `tailor programs`, benchmarks and tests. Pure.

The generic program parses IPv4 and IPv6 always, translates Service
addresses always (every protocol, ClientIP affinity), checks connection
tracking always, and evaluates policy by walking a rule table in a bounded
loop. The
pod's specifics are all map data:
    gcfg     array[1]: the pod's addresses, families, which directions are
             enforced
    grules   array[MAX_RULES]: the tier ladder flattened into rules (ANP
             rules with their actions, NetworkPolicy allows, a deny-all
             sentinel closing the NetworkPolicy tier when the pod is
             isolated, BANP rules); default allow after the last
    peers4/6 hash: address -> u64 bitmap of selector peers
    cidr4/6  LPM trie: prefix -> u64 bitmap of ipBlock peers
    nports4/6 (address, port, protocol) -> bitmap of the pod's named ports,
             laid out as the node's ports4/6
Every map is the pod's own: a generic datapath holds each pod's peers.
Register plan as in `layout`, except r9 holds the peer bitmap value itself.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import struct

from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.builder import Builder, R0, R1, R2, R3, R5, R6, R7, R8, R9, R10
from tailor.datapath.ebpf.maps import F_NO_PREALLOC, MapSpec, MapType
from tailor.datapath import groups as node_groups
from tailor.datapath import layout
from tailor.operator.compiler import conntrack, forward, labels, parse, rules, services
from tailor.operator.compiler.program import CompileError, PodPrograms, Program
from tailor.operator.compiler.spec import (ANY_PEER, EGRESS, INGRESS, Action, Cidr, Group, NamedPort,
                                           PortRange, ProgramSpec, Services, TierKind)

# A generic datapath translates whatever Services a cluster has.
EVERY_SERVICE = Services((4, 6), (services.TCP, services.UDP, services.SCTP), affinity=True)
MAX_RULES = 64
PORTS_PER_RULE = 8
MAX_PEERS = 64

ACTION = {Action.ALLOW: 0, Action.DENY: 1, Action.PASS: 2}
ANY_PEER_FLAG, ANY_PORT_FLAG = 1, 2

# gcfg value: ip4 u32, ip6 16 bytes, has4 u8, has6 u8, enforced u8, record u8, nrules u32
CFG = struct.Struct("<4s16sBBBBI")
CFG_IP4, CFG_IP6, CFG_HAS4, CFG_HAS6, CFG_ENFORCED, CFG_RECORD, CFG_NRULES = 0, 4, 20, 21, 22, 23, 24
# grules value: action u8, flags u8, nports u8, pad, pass_to u32, peer_mask u64,
# named_mask u32, pad u32, then PORTS_PER_RULE x (lo u16, hi u16, proto u8, pad 3).
RULE_HEAD = struct.Struct("<BBBxIQI4x")
PORT = struct.Struct("<HHB3x")
RULE_SIZE = RULE_HEAD.size + PORTS_PER_RULE * PORT.size

GCFG = MapSpec("gcfg", MapType.ARRAY, 4, CFG.size, 1)
GRULES = MapSpec("grules", MapType.ARRAY, 4, RULE_SIZE, MAX_RULES)


def _cidr_map(family: int) -> MapSpec:
    return MapSpec(f"cidr{family}", MapType.LPM_TRIE, 4 + layout.addr_len(family), 8, 1024,
                   F_NO_PREALLOC)


def _peer_map(family: int) -> MapSpec:
    return MapSpec(f"peers{family}", MapType.HASH, layout.addr_len(family), 8,
                   layout.PEER_CAPACITY, F_NO_PREALLOC)


def _named_port_map(family: int) -> MapSpec:
    spec = layout.PORTS_MAPS[family]
    return dataclasses.replace(spec, name=f"nports{family}")


# Stack: the specialised frame, then the generic program's own slots.
FRAME = layout.Frame.plan()
LOOP_I = FRAME.end - 8
SKIP_TO = LOOP_I - 8
CFG_PTR = SKIP_TO - 8
LPM_KEY = CFG_PTR - 24
RULE_KEY = LPM_KEY - 8


def compile_generic(direction: str) -> Program:
    """The one generic program for `direction`; the same bytes for every pod."""
    b = Builder()
    b.mov64(R6, R1)
    with b.annotate("generic: load the pod's configuration"):
        b.store(4, R10, RULE_KEY, 0)
        b.map_lookup("gcfg", RULE_KEY)
        b.jeq(R0, 0, labels.DROP)
        b.store(8, R10, CFG_PTR, R0)
    parse.ethertype(b, (4, 6), arp=labels.ARP, drop=labels.DROP)
    for family in (4, 6):
        _family(b, family, direction)
    forward.footer(b, FRAME)
    insns = b.assemble()
    specs = {s.name: s for s in (GCFG, GRULES, layout.STATS, *layout.NODE_MAPS.values(),
                                 _peer_map(4), _peer_map(6),
                                 _cidr_map(4), _cidr_map(6), _named_port_map(4),
                                 _named_port_map(6))}
    features = frozenset({"ipv4", "ipv6", "conntrack", f"{direction}-policy", "anp", "banp",
                          "selectors", "ipblock", "ports", "named-ports", "generic", "services"}
                         | ({"session-affinity"} if direction == EGRESS else set())
                         | ({"anti-spoof", "redirect"} if direction == EGRESS else {"host-path"}))
    return Program(direction, tuple(insns), tuple(specs[n] for n in isa.map_refs(insns)),
                   features, b.jumps)


def programs(spec: ProgramSpec, members):
    """(PodPrograms, map entries) running `spec` on the generic programs;
    `members(group id)` gives a group's members (operator.groups)."""
    ingress, egress = _cached(INGRESS), _cached(EGRESS)
    pod = PodPrograms(spec.pod, ingress, egress, tuple(sorted(ingress.features | egress.features)))
    return pod, {d: entries(spec, d, members) for d in (INGRESS, EGRESS)}


_CACHE: dict[str, Program] = {}


def _cached(direction: str) -> Program:
    if direction not in _CACHE:
        _CACHE[direction] = compile_generic(direction)
    return _CACHE[direction]


def _cfg(b: Builder, reg, size: int, off: int) -> None:
    b.load(8, reg, R10, CFG_PTR)
    b.load(size, reg, reg, off)


def _family(b: Builder, family: int, direction: str) -> None:
    key = FRAME.key
    f = layout.key_fields(family)
    remote = key + f["daddr" if direction == EGRESS else "saddr"]
    with b.annotate(f"parse IPv{family}"):
        if family == 4:
            parse.ipv4(b, key, labels.DROP)
        else:
            parse.ipv6(b, key, labels.DROP, nd_allow=labels.ALLOW)
    with b.annotate("generic: the pod has this family?"):
        _cfg(b, R1, 1, CFG_HAS4 if family == 4 else CFG_HAS6)
        b.jeq(R1, 0, labels.DROP)
    if direction == INGRESS:
        services.untranslate(b, family, FRAME, EVERY_SERVICE, labels.DROP)
        forward.host_path_record(b, family, FRAME)
    if direction == EGRESS:
        with b.annotate("anti-spoof from the configuration"):
            for off in range(0, layout.addr_len(family), 4):
                _cfg(b, R2, 4, (CFG_IP4 if family == 4 else CFG_IP6) + off)
                b.load(4, R1, R10, key + f["saddr"] + off)
                b.jne(R1, R2, labels.DROP)
        services.translate(b, family, FRAME, EVERY_SERVICE, labels.DROP)
    passed = labels.family_forward(family) if direction == EGRESS else labels.ALLOW
    _cfg(b, R1, 1, CFG_ENFORCED)
    b.jeq(R1, 0, labels.family_allow(family))
    conntrack.reply_check(b, family, FRAME, direction, passed)
    with b.annotate("generic: peer bitmap = selector groups | ipBlocks"):
        b.mov64(R9, 0)
        b.map_lookup(f"peers{family}", remote)
        b.jeq(R0, 0, labels.generic(family, "no_group"))
        b.load(8, R9, R0, 0)
        b.label(labels.generic(family, "no_group"))
        b.store(4, R10, LPM_KEY, 8 * layout.addr_len(family))
        for off in range(0, layout.addr_len(family), 4):
            b.load(4, R1, R10, remote + off)
            b.store(4, R10, LPM_KEY + 4 + off, R1)
        b.map_lookup(f"cidr{family}", LPM_KEY)
        b.jeq(R0, 0, labels.generic(family, "no_cidr"))
        b.load(8, R1, R0, 0)
        b.or64(R9, R1)
        b.label(labels.generic(family, "no_cidr"))
    with b.annotate("generic: named ports of the remote"):
        rules.named_port_lookup(b, family, FRAME, remote, f"nports{family}")
    _rule_loop(b, family)
    b.label(labels.family_allow(family))
    _cfg(b, R1, 1, CFG_RECORD)
    b.jeq(R1, 0, passed)
    conntrack.record(b, family, FRAME, direction, passed)
    if direction == EGRESS:
        b.label(passed)
        forward.deliver(b, family, FRAME)


def _rule_loop(b: Builder, family: int) -> None:
    loop, nxt, matched = (labels.generic(family, p) for p in ("loop", "next", "matched"))
    allow = labels.family_allow(family)
    b.store(8, R10, LOOP_I, 0)
    b.store(8, R10, SKIP_TO, 0)
    b.label(loop)
    with b.annotate("generic: next rule"):
        b.load(8, R1, R10, LOOP_I)
        b.jge(R1, MAX_RULES, allow)
        _cfg(b, R2, 4, CFG_NRULES)
        b.jge(R1, R2, allow)
        b.load(8, R2, R10, SKIP_TO)
        b.jlt(R1, R2, nxt)                       # skipped by a Pass
        b.store(4, R10, RULE_KEY, R1)
        b.map_lookup("grules", RULE_KEY)
        b.jeq(R0, 0, allow)
        b.mov64(R5, R0)
    with b.annotate("generic: peers"):
        b.load(1, R1, R5, 1)
        b.jset(R1, ANY_PEER_FLAG, labels.generic(family, "peers_ok"))
        b.load(8, R2, R5, 8)
        b.and64(R2, R9)
        b.jeq(R2, 0, nxt)
        b.label(labels.generic(family, "peers_ok"))
    with b.annotate("generic: ports"):
        b.jset(R1, ANY_PORT_FLAG, matched)
        b.load(4, R2, R5, 16)
        b.load(4, R3, R10, FRAME.np_bits)
        b.and64(R2, R3)
        b.jne(R2, 0, matched)
        b.load(1, R3, R5, 2)
        for j in range(PORTS_PER_RULE):
            base = RULE_HEAD.size + j * PORT.size
            miss = labels.generic(family, f"port{j}_miss")
            b.jle(R3, j, nxt)
            b.load(1, R2, R5, base + 4)
            b.jne(R2, R7, miss)
            b.load(2, R2, R5, base)
            b.jlt(R8, R2, miss)
            b.load(2, R2, R5, base + 2)
            b.jle(R8, R2, matched)
            b.label(miss)
        b.jump(nxt)
    b.label(matched)
    with b.annotate("generic: the rule's action"):
        b.load(1, R1, R5, 0)
        b.jeq(R1, ACTION[Action.ALLOW], allow)
        b.jeq(R1, ACTION[Action.DENY], labels.DROP)
        b.load(4, R1, R5, 4)
        b.store(8, R10, SKIP_TO, R1)
    b.label(nxt)
    b.load(8, R1, R10, LOOP_I)
    b.add64(R1, 1)
    b.store(8, R10, LOOP_I, R1)
    b.jump(loop)


# --- map contents -----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _FlatRule:
    action: Action
    flags: int
    peer_mask: int
    named_mask: int
    ports: tuple[PortRange, ...]
    pass_to: int = 0


def entries(spec: ProgramSpec, direction: str, members) -> dict[str, dict[bytes, bytes]]:
    """The generic program's maps for one pod and direction."""
    d = spec.direction(direction)
    groups = sorted({p.id for r in d.rules for p in r.peers if isinstance(p, Group)})
    # Ingress policy lets the pod's own node in: the first rule, on its own peer.
    node = direction == INGRESS and d.enforced
    if node:
        groups = [node_groups.HOST] + [g for g in groups if g != node_groups.HOST]
    names = sorted({p for r in d.rules for p in r.ports or () if isinstance(p, NamedPort)})
    if len(names) > 32:
        raise CompileError(f"pod {spec.pod}: generic mode holds 32 named "
                           f"ports per direction, {direction} rules have {len(names)}")
    slot = {n: i for i, n in enumerate(names)}
    cidrs = sorted({p for r in d.rules for p in r.peers if isinstance(p, Cidr)})
    peer_id = {("g", g): i for i, g in enumerate(groups)}
    peer_id.update({("c", c): len(groups) + i for i, c in enumerate(cidrs)})
    if len(peer_id) > MAX_PEERS:
        raise CompileError(f"pod {spec.pod}: generic mode holds {MAX_PEERS} peers per direction, "
                           f"{direction} rules have {len(peer_id)}")
    rules = _flatten(spec, d, peer_id, slot)
    if node:
        rules = [_FlatRule(Action.ALLOW, ANY_PORT_FLAG, 1 << peer_id[("g", node_groups.HOST)], 0, ())] \
            + [dataclasses.replace(r, pass_to=r.pass_to + 1 if r.pass_to else 0) for r in rules]
        if len(rules) > MAX_RULES:
            raise CompileError(f"pod {spec.pod}: generic mode holds {MAX_RULES} rules per direction, "
                               f"this pod needs {len(rules)}")
    out: dict[str, dict[bytes, bytes]] = {
        "gcfg": {struct.pack("<I", 0): CFG.pack(
            ipaddress.ip_address(spec.ipv4 or "0.0.0.0").packed,
            ipaddress.ip_address(spec.ipv6 or "::").packed,
            1 if spec.ipv4 else 0, 1 if spec.ipv6 else 0, 1 if d.enforced else 0,
            1 if spec.direction(conntrack.OPPOSITE[direction]).enforced else 0, len(rules))},
        "grules": {struct.pack("<I", i): _pack_rule(r) for i, r in enumerate(rules)},
    }
    for g in groups:
        bit = 1 << peer_id[("g", g)]
        for address in members(g):
            family = ipaddress.ip_address(address).version
            if family not in spec.families:
                continue
            key = layout.pack_addr(address)
            table = out.setdefault(f"peers{family}", {})
            old = struct.unpack("<Q", table.get(key, bytes(8)))[0]
            table[key] = struct.pack("<Q", old | bit)
    for family in (4, 6):
        lpm = _lpm_entries([(peer_id[("c", c)], c) for c in cidrs
                            if ipaddress.ip_network(c.cidr).version == family])
        if lpm:
            out[f"cidr{family}"] = lpm
    held: dict[bytes, set[int]] = {}
    for n in names:
        for address, port in members(n.id):
            family = ipaddress.ip_address(address).version
            if family in spec.families:
                held.setdefault(layout.pack_named_port_key(address, port, n.protocol), set()).add(slot[n])
    for key, bits in held.items():
        family = 4 if len(key) == 8 else 6
        out.setdefault(f"nports{family}", {})[key] = layout.pack_bitmap(bits, layout.PORT_WORDS)
    return out


def _flatten(spec: ProgramSpec, d, peer_id, slot) -> list[_FlatRule]:
    """The tier ladder as one rule list; a rule with more ports than a table
    row holds becomes several rows (matching any of them is the same)."""
    rules: list[_FlatRule] = []
    passes: list[int] = []
    for tier in d.tiers:
        if tier.kind is not TierKind.ADMIN:
            for i in passes:
                rules[i] = dataclasses.replace(rules[i], pass_to=len(rules))
            passes = []
        for rule in tier.rules:
            peers = rule.peers
            flags = (ANY_PEER_FLAG if ANY_PEER in peers else 0) | (ANY_PORT_FLAG if rule.ports is None else 0)
            mask = sum(1 << peer_id[("g", p.id)] if isinstance(p, Group) else 1 << peer_id[("c", p)]
                       for p in peers if p is not ANY_PEER)
            ranges = tuple(p for p in rule.ports or () if isinstance(p, PortRange))
            named = sum(1 << slot[p] for p in rule.ports or () if isinstance(p, NamedPort))
            chunks = [ranges[i:i + PORTS_PER_RULE] for i in range(0, len(ranges), PORTS_PER_RULE)] or [()]
            for chunk in chunks:
                if rule.action is Action.PASS:
                    passes.append(len(rules))
                rules.append(_FlatRule(rule.action, flags, mask, named, chunk))
        if tier.kind is TierKind.NETWORK:
            rules.append(_FlatRule(Action.DENY, ANY_PEER_FLAG | ANY_PORT_FLAG, 0, 0, ()))
    for i in passes:
        rules[i] = dataclasses.replace(rules[i], pass_to=len(rules))
    if len(rules) > MAX_RULES:
        raise CompileError(f"pod {spec.pod}: generic mode holds {MAX_RULES} rules per direction, "
                           f"this pod needs {len(rules)}")
    return rules


def _pack_rule(rule: _FlatRule) -> bytes:
    head = RULE_HEAD.pack(ACTION[rule.action], rule.flags, len(rule.ports), rule.pass_to,
                          rule.peer_mask, rule.named_mask)
    ports = b"".join(PORT.pack(p.lo, p.hi, p.protocol) for p in rule.ports)
    return head + ports + bytes(RULE_SIZE - len(head) - len(ports))


def _lpm_entries(peers: list[tuple[int, Cidr]]) -> dict[bytes, bytes]:
    """Each prefix named by a cidr or an except maps to the peers that
    contain it and do not exclude it. For an address, the longest matching
    prefix then yields exactly the ipBlocks that hold it: every cidr holding
    the address contains that prefix, and an except holding it would itself
    be that prefix or a longer one."""
    nets = {(j, ipaddress.ip_network(c.cidr), tuple(ipaddress.ip_network(e) for e in c.excepts))
            for j, c in peers}
    prefixes = {n for _, n, _ in nets} | {e for _, _, ex in nets for e in ex}
    out = {}
    for prefix in sorted(prefixes, key=lambda n: (n.version, n.prefixlen, n.network_address)):
        bits = 0
        for j, net, excepts in nets:
            if prefix.subnet_of(net) and not any(prefix.subnet_of(e) for e in excepts):
                bits |= 1 << j
        out[struct.pack("<I", prefix.prefixlen) + prefix.network_address.packed] = struct.pack("<Q", bits)
    return out
