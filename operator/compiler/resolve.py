"""Policy resolution: from the cluster state to one pod's ProgramSpec.

Called by `tailor programs`, `tailor connectivity`, the lab and the operator.
Pure: reads the ClusterState, applies the policy semantics of
`tailor.operator.policy` (which policies select the pod, in which order),
and writes the spec the compiler turns into bytes.

What goes where:
- tiers and rules, in evaluation order (ANP by priority, then the
  NetworkPolicies isolating the pod, then the BANP) -> the program;
- ipBlocks and ANP networks -> CIDR compares in the program (they do not
  change with pod churn);
- selector peers (namespaces, pods, ANP nodes) -> a peer group
  (operator/groups.py): its id in the program, its members node data;
- named ports: for ingress the destination is the pod itself, so they
  resolve to numbers now; for egress the destination is the peer, so they
  become named-port groups, whose (address, port) pairs are node data.
"""
from __future__ import annotations

import dataclasses

from tailor.operator import groups
from tailor.operator.cluster.adminpolicy import AdminPeer, AdminPolicy, AdminRule, PeerKind
from tailor.operator.cluster.networkpolicy import NetworkPolicy, Peer as NpPeer
from tailor.operator.cluster.objects import Pod
from tailor.operator.cluster.ports import PROTOCOL_NUMBERS, PROTOCOLS, PortMatch
from tailor.operator.cluster.state import ClusterState
from tailor.operator.compiler import spec as S
from tailor.operator.policy import admin, netpol


class _Direction:
    """One direction's resolution: the group definitions its rules name."""

    def __init__(self, pod: Pod, direction: str):
        self.pod, self.direction = pod, direction
        self.definitions: dict[str, groups.Definition] = {}

    def group(self, definition: groups.Definition):
        gid = definition.id
        self.definitions.setdefault(gid, definition)
        return S.NamedPort(definition.protocol, definition.name) if isinstance(
            definition, groups.PortGroup) else S.Group(gid)


class Resolver:
    """resolve() for many pods of one state that does not change meanwhile
    (a full plan): pods alike in everything resolution reads — namespace,
    labels, declared ports, families — share one resolution, and each gets
    it under its own name and addresses."""

    def __init__(self, state: ClusterState):
        self.state = state
        self._memo: dict[tuple, S.ProgramSpec] = {}

    def resolve(self, pod: Pod) -> S.ProgramSpec:
        key = (pod.namespace, frozenset(pod.labels.items()), pod.ports, pod.families)
        spec = self._memo.get(key)
        if spec is None:
            spec = self._memo[key] = resolve(self.state, pod)
            return spec
        return dataclasses.replace(spec, pod=pod.ref, ipv4=pod.ip(4), ipv6=pod.ip(6))


def resolve(state: ClusterState, pod: Pod, *, mac: bytes = b"\0" * 6, ifindex: int = 0) -> S.ProgramSpec:
    """The pod's spec. Reads no group's members: those are node data
    (operator.groups.Memberships keeps them)."""
    built, definitions = {}, {}
    for direction in S.DIRECTIONS:
        acc = _Direction(pod, direction)
        built[direction] = S.Direction(tuple(_tiers(state, pod, acc)))
        definitions.update(acc.definitions)
    return S.ProgramSpec(pod.ref, pod.ip(4), pod.ip(6), mac, ifindex,
                         ingress=built[S.INGRESS], egress=built[S.EGRESS],
                         services=_services(state, pod, built[S.EGRESS]), definitions=definitions)


def _services(state: ClusterState, pod: Pod, egress: S.Direction) -> S.Services | None:
    """Service translation for the pod's families that have Service
    addresses — none for a pod whose egress allows nothing at all (every
    Service connection would be dropped, translated or not)."""
    families, protocols, affinity = state.service_use()
    families = tuple(f for f in pod.families if f in families)
    if not families or egress.enforced and not egress.rules:
        return None
    return S.Services(families, tuple(sorted(PROTOCOL_NUMBERS[p] for p in protocols)), affinity)


def _tiers(state: ClusterState, pod: Pod, acc: _Direction) -> list[S.Tier]:
    admins, baselines = admin.applying(state, pod)
    tiers = []
    admin_rules = [r for p in admins for r in _admin_rules(state, p, acc)]
    if admin_rules:
        tiers.append(S.Tier(S.TierKind.ADMIN, tuple(admin_rules)))
    isolating = netpol.isolating(state, pod, acc.direction)
    if isolating:
        tiers.append(S.Tier(S.TierKind.NETWORK,
                            tuple(r for p in isolating for r in _np_rules(state, p, acc))))
    baseline = [r for p in baselines for r in _admin_rules(state, p, acc)]
    if baseline:
        tiers.append(S.Tier(S.TierKind.BASELINE, tuple(baseline)))
    return tiers


# --- NetworkPolicy ------------------------------------------------------------
def _np_rules(state: ClusterState, policy: NetworkPolicy, acc: _Direction) -> list[S.Rule]:
    rules = policy.ingress if acc.direction == S.INGRESS else policy.egress
    out = []
    for i, rule in enumerate(rules):
        peers = tuple(_np_peer(state, policy, p, acc) for p in rule.peers) or (S.ANY_PEER,)
        out.append(S.Rule(S.Action.ALLOW, peers, _ports(rule.ports or None, acc),
                          f"NetworkPolicy {policy.ref} spec.{acc.direction}[{i}]"))
    return out


def _np_peer(state: ClusterState, policy: NetworkPolicy, peer: NpPeer, acc: _Direction):
    if peer.ip_block is not None:
        return S.Cidr(str(peer.ip_block.cidr), tuple(str(e) for e in peer.ip_block.except_))
    # A podSelector alone means the policy's own namespace.
    namespace = policy.namespace if peer.namespace_selector is None else None
    return acc.group(groups.PodGroup(namespace, peer.namespace_selector, peer.pod_selector))


# --- AdminNetworkPolicy / BaselineAdminNetworkPolicy ----------------------------
def _admin_rules(state: ClusterState, policy: AdminPolicy, acc: _Direction) -> list[S.Rule]:
    rules: tuple[AdminRule, ...] = policy.ingress if acc.direction == S.INGRESS else policy.egress
    out = []
    for i, rule in enumerate(rules):
        peers = tuple(p for peer in rule.peers for p in _admin_peers(state, peer, acc))
        name = f" ({rule.name})" if rule.name else ""
        out.append(S.Rule(S.Action(rule.action), peers, _ports(rule.ports, acc),
                          f"{policy.kind} {policy.name} spec.{acc.direction}[{i}]{name}"))
    return out


def _admin_peers(state: ClusterState, peer: AdminPeer, acc: _Direction):
    if peer.kind is PeerKind.NETWORKS:
        return [S.Cidr(str(net)) for net in peer.networks]
    if peer.kind is PeerKind.NODES:
        return [acc.group(groups.NodeGroup(peer.node_selector))]
    return [acc.group(groups.PodGroup(None, peer.namespace_selector, peer.pod_selector))]


# --- shared -------------------------------------------------------------------------
def _ports(matches: tuple[PortMatch, ...] | None, acc: _Direction):
    """None: every port and protocol. Otherwise PortRanges and, for egress
    named ports, NamedPort slots; an empty tuple matches nothing."""
    if matches is None:
        return None
    out: list = []
    for m in matches:
        if m.name is None:
            out.append(S.PortRange(PROTOCOL_NUMBERS[m.protocol], m.start, m.end))
        elif acc.direction == S.INGRESS:
            # The destination is this pod: resolve the name against its ports now.
            out.extend(S.PortRange(PROTOCOL_NUMBERS[p], lo, hi) for p, lo, hi in m.resolve(acc.pod.ports))
        else:
            for protocol in ([m.protocol] if m.protocol else PROTOCOLS):
                out.append(acc.group(groups.PortGroup(PROTOCOL_NUMBERS[protocol], m.name)))
    return tuple(sorted(set(out), key=lambda p: (type(p).__name__, p)))
