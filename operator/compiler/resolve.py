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
- selector peers (namespaces, pods, ANP nodes) -> a peer group: an index in
  the program, its member addresses in a map;
- named ports: for ingress the destination is the pod itself, so they
  resolve to numbers now; for egress the destination is the peer, so they
  become named-port slots whose (address, port) pairs live in a map.
"""
from __future__ import annotations

import dataclasses

from tailor.operator.cluster.adminpolicy import AdminPeer, AdminPolicy, AdminRule, PeerKind
from tailor.operator.cluster.networkpolicy import NetworkPolicy, Peer as NpPeer
from tailor.operator.cluster.objects import Pod
from tailor.operator.cluster.ports import PROTOCOL_NAMES, PROTOCOL_NUMBERS, PROTOCOLS, PortMatch
from tailor.operator.cluster.state import ClusterState
from tailor.operator.compiler import spec as S
from tailor.operator.policy import admin, netpol
from tailor.operator.policy.endpoints import Endpoint


@dataclasses.dataclass
class _Direction:
    """Accumulates one direction's peer groups and named-port slots, so that
    equal selectors share one group and equal names one slot."""
    pod: Pod
    direction: str
    groups: dict[object, int] = dataclasses.field(default_factory=dict)
    members: dict[int, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    slots: dict[tuple[int, str], int] = dataclasses.field(default_factory=dict)
    memo: dict | None = None      # identity -> members, shared by pods resolved in one state

    def group(self, identity, addresses) -> S.Group:
        if identity not in self.groups:
            index = len(self.groups)
            self.groups[identity] = index
            if self.memo is None:
                self.members[index] = tuple(addresses())
            else:
                if identity not in self.memo:
                    self.memo[identity] = tuple(addresses())
                self.members[index] = self.memo[identity]
        return S.Group(self.groups[identity])

    def slot(self, protocol: int, name: str) -> S.NamedPort:
        key = (protocol, name)
        if key not in self.slots:
            self.slots[key] = len(self.slots)
        return S.NamedPort(protocol, name, self.slots[key])


def resolve(state: ClusterState, pod: Pod, *, mac: bytes = b"\0" * 6, ifindex: int = 0,
            memo: dict | None = None) -> S.ProgramSpec:
    """The pod's spec. `memo` (a dict the caller keeps while `state` does not
    change) shares peer-group members between pods resolved one after another:
    a selector's members are the same for every pod that names it."""
    built = {}
    for direction in S.DIRECTIONS:
        acc = _Direction(pod, direction, memo=memo)
        tiers = _tiers(state, pod, acc)
        built[direction] = (S.Direction(tuple(tiers)), acc)
    groups = {d: tuple(S.GroupMembers(i, addrs) for i, addrs in sorted(acc.members.items()))
              for d, (_, acc) in built.items()}
    named = {d: tuple(S.NamedPortMembers(slot, proto, _named_endpoints(state, proto, name))
                      for (proto, name), slot in sorted(acc.slots.items(), key=lambda kv: kv[1]))
             for d, (_, acc) in built.items()}
    return S.ProgramSpec(pod.ref, pod.ip(4), pod.ip(6), mac, ifindex,
                         ingress=built[S.INGRESS][0], egress=built[S.EGRESS][0],
                         groups=groups, named_ports=named)


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
    # A podSelector alone means the policy's own namespace: part of the identity.
    namespace = policy.namespace if peer.namespace_selector is None else None
    identity = ("np", namespace, peer.namespace_selector, peer.pod_selector)
    return acc.group(identity, lambda: _pod_addresses(
        state, lambda end: netpol.peer_matches(state, policy.namespace, peer, end)))


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
        identity = (PeerKind.NODES, peer.node_selector)
        return [acc.group(identity, lambda: sorted(
            ip for node in state.nodes.values() if peer.node_selector.matches(node.labels)
            for ip in node.ips))]
    identity = ("admin", peer.kind, peer.namespace_selector, peer.pod_selector)
    return [acc.group(identity, lambda: _pod_addresses(
        state, lambda end: admin.peer_matches(state, peer, end)))]


# --- shared -------------------------------------------------------------------------
def _pod_addresses(state: ClusterState, matches) -> list[str]:
    """Every address of every pod the peer selects (membership, map data)."""
    out = []
    for pod in state.sorted_pods():
        if pod.ips and matches(Endpoint(pod.ips[0], pod)):
            out.extend(pod.ips)
    return sorted(out)


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
                out.append(acc.slot(PROTOCOL_NUMBERS[protocol], m.name))
    return tuple(sorted(set(out), key=lambda p: (type(p).__name__, p)))


def _named_endpoints(state: ClusterState, protocol: int, name: str) -> tuple[tuple[str, int], ...]:
    proto = PROTOCOL_NAMES[protocol]
    out = set()
    for pod in state.sorted_pods():
        for cp in pod.ports:
            if cp.name == name and cp.protocol == proto:
                out.update((ip, cp.port) for ip in pod.ips)
    return tuple(sorted(out))

