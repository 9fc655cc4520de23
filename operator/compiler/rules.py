"""Emits one direction's policy for one address family: the tier ladder
ANP -> NetworkPolicy -> BANP -> default allow, each rule as peer compares
then port compares. Called by `compiler.program`.

Expects the register plan of `layout`: r7 protocol, r8 destination port,
r9 the remote address's group bitmap in the node's identity map (or 0).
Every rule becomes straight-line compares: a rule naming two ports costs two
port compares (and one protocol compare), a /24 ipBlock two instructions, a
selector peer a null check, one load and one bit test. Nothing is looked up that the rules do not use.
"""
from __future__ import annotations

import ipaddress
import itertools

from tailor.datapath.ebpf.builder import Builder, R0, R1, R7, R8, R9, R10
from tailor.datapath import layout
from tailor.operator.compiler import labels
from tailor.operator.compiler.spec import (ANY_PEER, Action, Cidr, Direction, Group, NamedPort,
                                           PortRange, Rule, TierKind)


def emit(b: Builder, direction: Direction, family: int, *, remote: int, np_bits: int) -> None:
    """`remote` is the stack offset of the remote address (network order);
    `np_bits` the stack offset of the named-port bitmap (egress only)."""
    allow, deny = labels.family_allow(family), labels.DROP
    tiers = direction.tiers
    for ti, tier in enumerate(tiers):
        b.label(labels.tier(family, ti))
        after = labels.tier(family, ti + 1)
        targets = {Action.ALLOW: allow, Action.DENY: deny, Action.PASS: after}
        for ri, rule in enumerate(tier.rules):
            with b.annotate(rule.source):
                _rule(b, rule, family, ti, ri, targets[rule.action], remote, np_bits)
        if tier.kind is TierKind.NETWORK:
            # Isolated by NetworkPolicy and no rule allowed it.
            with b.annotate("NetworkPolicy: isolated, no rule allows"):
                b.jump(deny)
    b.label(labels.tier(family, len(tiers)))
    with b.annotate("no tier decided: allow"):
        b.jump(allow)


def applicable_peers(rule: Rule, family: int) -> list:
    """The rule's peers that can match an address of `family`."""
    return [p for p in rule.peers
            if not isinstance(p, Cidr) or ipaddress.ip_network(p.cidr).version == family]


def _rule(b: Builder, rule: Rule, family: int, ti: int, ri: int, target: str,
          remote: int, np_bits: int) -> None:
    peers = applicable_peers(rule, family)
    if not peers or (rule.ports is not None and not rule.ports):
        return                                   # cannot match in this family
    ports_label = labels.rule(family, ti, ri, "ports")
    next_rule = labels.rule(family, ti, ri, "next")
    if ANY_PEER not in peers:
        for pi, peer in enumerate(peers):
            miss = labels.alternative(family, ti, ri, "peer", pi)
            if isinstance(peer, Group):
                group_test(b, peer.id, ports_label, miss)
            else:
                _cidr(b, peer, remote, miss, ports_label,
                      lambda ei: labels.alternative(family, ti, ri, f"peer{pi}_except", ei))
            b.label(miss)
        b.jump(next_rule)
    b.label(ports_label)
    if rule.ports is None:
        b.jump(target)
    else:
        _ports(b, rule.ports, family, ti, ri, target, np_bits)
    b.label(next_rule)


def group_test(b: Builder, group: str, hit: str, miss: str) -> None:
    """To `hit` when the remote address (r9: its bitmap in the identity map,
    or 0) is in `group`, else to `miss`. The node numbers its groups: the
    loader fills in the word offset and the bit (isa.Insn.group)."""
    b.jeq(R9, 0, miss)
    b.load(4, R1, R9, 0, group=group)
    b.jump_if("jset", R1, 1, hit, wide=False, group=group)


def _ports(b: Builder, ports, family: int, ti: int, ri: int, target: str, np_bits: int) -> None:
    """One protocol compare per protocol, then one compare per single port
    and two per range."""
    ordered = sorted(ports, key=lambda p: (p.protocol, isinstance(p, NamedPort)))
    for gi, (protocol, group) in enumerate(itertools.groupby(ordered, key=lambda p: p.protocol)):
        other = labels.alternative(family, ti, ri, "proto", gi)
        b.jne(R7, protocol, other)
        for pi, port in enumerate(group):
            if isinstance(port, PortRange):
                if port.lo == port.hi:
                    b.jeq(R8, port.lo, target)
                elif port.lo == 1 and port.hi == 65535:
                    b.jump(target)             # the protocol with every port
                else:
                    miss = labels.alternative(family, ti, ri, f"p{gi}_", pi)
                    b.jlt(R8, port.lo, miss)
                    b.jle(R8, port.hi, target)
                    b.label(miss)
            else:
                b.load(4, R1, R10, np_bits, group=port.id)
                b.jump_if("jset", R1, 1, target, wide=False, group=port.id)
        b.label(other)


def _words(network) -> list[tuple[int, int, int]]:
    """(byte offset, mask, value) per 32-bit word the prefix constrains, as
    little-endian loads of network-order bytes see them."""
    out = []
    net, mask = network.network_address.packed, network.netmask.packed
    for off in range(0, len(net), 4):
        m = int.from_bytes(mask[off:off + 4], "little")
        if m:
            out.append((off, m, int.from_bytes(net[off:off + 4], "little")))
    return out


def _compare(b: Builder, words, remote: int, miss: str) -> None:
    """Fall through when every constrained word matches, else go to miss."""
    for off, mask, value in words:
        b.load(4, R1, R10, remote + off)
        if mask != 0xFFFFFFFF:
            b.and32(R1, mask)
        b.jump_if("jne", R1, value, miss, wide=False)


def _cidr(b: Builder, peer: Cidr, remote: int, miss: str, hit: str, except_label) -> None:
    _compare(b, _words(ipaddress.ip_network(peer.cidr)), remote, miss)
    for ei, excluded in enumerate(peer.excepts):
        not_this = except_label(ei)
        words = _words(ipaddress.ip_network(excluded))
        if not words:                              # except 0.0.0.0/0: nothing left
            b.jump(miss)
            b.label(not_this)
            continue
        _compare(b, words, remote, not_this)
        b.jump(miss)
        b.label(not_this)
    b.jump(hit)


def named_port_lookup(b: Builder, family: int, frame: layout.Frame, remote: int,
                      map_name: str | None = None) -> None:
    """np_bits = the node's named ports the remote pod exposes at this
    packet's (port, protocol): one lookup, whatever the number of names.
    `map_name`: another map of the same layout (the generic program's own)."""
    f = layout.key_fields(family)
    a = layout.addr_len(family)
    found = labels.lookup_found(family, "nports")
    done = labels.lookup_done(family, "nports")
    for off in range(0, a, 4):
        b.load(4, R1, R10, remote + off)
        b.store(4, R10, frame.np_key + off, R1)
    b.load(2, R1, R10, frame.key + f["dport"])
    b.store(2, R10, frame.np_key + a, R1)
    b.load(1, R1, R10, frame.key + f["proto"])
    b.store(1, R10, frame.np_key + a + 2, R1)
    b.store(1, R10, frame.np_key + a + 3, 0)
    b.map_lookup(map_name or layout.PORTS_MAPS[family].name, frame.np_key)
    b.jne(R0, 0, found)
    b.store(8, R10, frame.np_bits, 0)
    b.jump(done)
    b.label(found)
    for w in range(layout.PORT_WORDS):
        b.load(4, R1, R0, 4 * w)
        b.store(4, R10, frame.np_bits + 4 * w, R1)
    b.label(done)
