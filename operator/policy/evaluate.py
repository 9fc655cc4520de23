"""The reference evaluator: may this connection happen?

Called by tests (it is the oracle the compiled programs are checked against),
by `tailor connectivity --datapath model` through policy.connectivity, and by
anyone who wants a verdict explained. Never on the packet path. Purely
data-manipulative.

Per direction, the tiers are asked in order and the first with an opinion wins:

    AdminNetworkPolicy (Allow / Deny; Pass or no match: go on)
    -> NetworkPolicy (only if some NetworkPolicy isolates the pod in this direction)
    -> BaselineAdminNetworkPolicy (Allow / Deny; no match: go on)
    -> allowed (Kubernetes' default)

A connection is allowed iff the source pod may send it (egress) and the
destination pod may receive it (ingress); an end that is not a cluster pod has
no policy. Replies of an allowed connection are allowed (stateful), which is
why this judges connections, not packets. A pod talking to itself is always
allowed: loopback traffic never leaves the pod (the Kubernetes e2e tables
expect it allowed, even under deny-all). Traffic from one of the addresses of
the destination pod's own node is always allowed in (kubelet probes: a pod
cannot block its resident node); other nodes' addresses are ordinary peers
(ipBlocks, AdminNetworkPolicy `nodes`), and hostNetwork pods are their node.
"""
from __future__ import annotations

import ipaddress

from tailor.operator.cluster.objects import Pod
from tailor.operator.cluster.ports import MAX_PORT, MIN_PORT, PROTOCOLS
from tailor.operator.cluster.state import ClusterState
from tailor.operator.policy import admin, endpoints, netpol, verdict
from tailor.operator.policy.endpoints import Endpoint


def connection_allowed(state: ClusterState, src: Pod | str, dst: Pod | str, protocol: str, port: int,
                       family: int | None = None) -> bool:
    """True iff a connection from `src` to `dst` on (protocol, destination port) is allowed."""
    return connection_verdict(state, src, dst, protocol, port, family).allowed


def connection_verdict(state: ClusterState, src: Pod | str, dst: Pod | str, protocol: str, port: int,
                       family: int | None = None) -> verdict.ConnectionVerdict:
    """Both directions' verdicts for a connection. `src`/`dst` are pods or IP
    text (an address of a cluster pod means that pod); `family` (4 or 6)
    defaults to the one both pods have, IPv4 first."""
    _check(protocol, port)
    src_end, dst_end = endpoints.pair(state, src, dst, family)
    return judge(state, src_end, dst_end, protocol, port)


def judge(state: ClusterState, src_end: Endpoint, dst_end: Endpoint, protocol: str,
          port: int) -> verdict.ConnectionVerdict:
    """connection_verdict for endpoints already resolved (no argument checks)."""
    if src_end.pod is not None and src_end.pod is dst_end.pod:
        loop = verdict.Verdict(True, verdict.INGRESS, verdict.LOOPBACK, reason="a pod to itself")
        return verdict.ConnectionVerdict(True, None, loop)
    egress = decide(state, verdict.EGRESS, src_end, dst_end, protocol, port) if src_end.pod else None
    ingress = decide(state, verdict.INGRESS, dst_end, src_end, protocol, port) if dst_end.pod else None
    allowed = all(v.allowed for v in (egress, ingress) if v is not None)
    return verdict.ConnectionVerdict(allowed, egress, ingress)


def ingress_verdict(state: ClusterState, dst: Pod, src: Pod | str, protocol: str, port: int,
                    family: int | None = None) -> verdict.Verdict:
    """May `dst` receive a connection from `src` on (protocol, port)?"""
    _check(protocol, port)
    src_end, dst_end = endpoints.pair(state, src, dst, family)
    return decide(state, verdict.INGRESS, dst_end, src_end, protocol, port)


def egress_verdict(state: ClusterState, src: Pod, dst: Pod | str, protocol: str, port: int,
                   family: int | None = None) -> verdict.Verdict:
    """May `src` open a connection to `dst` on (protocol, destination port)?"""
    _check(protocol, port)
    src_end, dst_end = endpoints.pair(state, src, dst, family)
    return decide(state, verdict.EGRESS, src_end, dst_end, protocol, port)


def decide(state: ClusterState, direction: str, local: Endpoint, peer: Endpoint,
           protocol: str, port: int) -> verdict.Verdict:
    """The tier ladder for traffic of the pod `local` with `peer` in `direction`
    (`port` is always the connection's destination port)."""
    if direction == verdict.INGRESS and from_own_node(state, local, peer):
        return verdict.Verdict(True, direction, verdict.NODE,
                               reason=f"{peer.ip} is an address of {local.pod.node}, the pod's node")
    # 1. The Admin tier (ANPs, Admin CNPs): the first matching rule decides unless it passes.
    hit = admin.first_match(state, state.admin_policies_in_order(), direction, local, peer, protocol, port)
    if hit is not None and hit.rule.action != "Pass":
        return verdict.Verdict(hit.rule.action == "Allow", direction, verdict.ADMIN,
                               hit.policy.name, hit.rule_ref)
    passed = f"passed by {hit.policy.name} {hit.rule_ref}" if hit is not None else ""
    # 2. NetworkPolicies decide if any of them isolates the pod in this direction.
    decided = netpol.decide(state, direction, local, peer, protocol, port)
    if decided is not None:
        if passed:
            decided = _with_reason(decided, passed)
        return decided
    # 3. The Baseline tier (Baseline CNPs, the BANP), if a rule of a policy
    #    selecting the pod matches; its Pass skips the rest of the tier.
    hit = admin.first_match(state, state.baseline_policies_in_order(), direction, local, peer,
                            protocol, port)
    if hit is not None and hit.rule.action != "Pass":
        return verdict.Verdict(hit.rule.action == "Allow", direction, verdict.BASELINE,
                               hit.policy.name, hit.rule_ref, passed)
    if hit is not None:
        passed = "; ".join(x for x in (passed, f"passed by {hit.policy.name} {hit.rule_ref}") if x)
    # 4. Nobody has an opinion: Kubernetes allows.
    return verdict.Verdict(True, direction, verdict.DEFAULT, reason=passed or "no policy applies")


def from_own_node(state: ClusterState, local: Endpoint, peer: Endpoint) -> bool:
    """Is `peer` an address of the node `local` (a pod) runs on?"""
    if peer.pod is not None or local.pod is None or not local.pod.node:
        return False
    node = state.nodes.get(local.pod.node)
    if node is None:
        return False
    ip = ipaddress.ip_address(peer.ip)
    return any(ipaddress.ip_address(a) == ip for a in node.ips)


def _with_reason(v: verdict.Verdict, note: str) -> verdict.Verdict:
    return verdict.Verdict(v.allowed, v.direction, v.tier, v.policy, v.rule,
                           "; ".join(x for x in (note, v.reason) if x))


def _check(protocol: str, port: int) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if isinstance(port, bool) or not isinstance(port, int) or not MIN_PORT <= port <= MAX_PORT:
        raise ValueError(f"port {port!r} is not in {MIN_PORT}-{MAX_PORT}")
