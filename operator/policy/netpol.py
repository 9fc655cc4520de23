"""NetworkPolicy (networking.k8s.io/v1) semantics, one direction at a time.

Called by policy.evaluate (the tier ladder) and by the compiler through
`isolation` and `selecting`. Purely data-manipulative.

The rules implemented here, with the API text behind them:
- A policy selects the pods of its own namespace that match spec.podSelector.
- "Ingress/Egress: ... Traffic is allowed to a pod if there are no
  NetworkPolicies selecting the pod ..., OR if the traffic matches at least one
  rule across all of the NetworkPolicy objects whose podSelector matches the
  pod" -- isolation is per direction, and allows are additive (a union).
- A policy affects a direction iff its policyTypes names it (defaulting is done
  by cluster.networkpolicy: Ingress always, Egress iff it has egress rules).
- `from`/`to` "empty or missing: this rule matches all sources/destinations";
  `ports` "empty or missing: this rule matches all ports".
- A peer with podSelector alone selects pods in the policy's namespace; with
  namespaceSelector alone, all pods of the selected namespaces; with both, the
  selected pods of the selected namespaces. `{}` selects all of them.
- ipBlock matches by address, cluster pods included (how a datapath sees it);
  `except` addresses are carved out.
- Named ports resolve against the destination pod's containerPorts, for
  egress rules too; a destination without that name (or an address outside
  the cluster) matches no named port.
"""
from __future__ import annotations

from tailor.operator.cluster.networkpolicy import NetworkPolicy, Peer, Rule
from tailor.operator.cluster.objects import Pod
from tailor.operator.cluster.state import ClusterState
from tailor.operator.policy import verdict
from tailor.operator.policy.endpoints import Endpoint


def selecting(state: ClusterState, pod: Pod) -> list[NetworkPolicy]:
    """The NetworkPolicies whose podSelector selects `pod` (either direction), by name."""
    return [p for p in state.network_policies_in(pod.namespace) if p.pod_selector.matches(pod.labels)]


def isolating(state: ClusterState, pod: Pod, direction: str) -> list[NetworkPolicy]:
    """The policies that select `pod` and affect `direction`."""
    if direction == verdict.INGRESS:
        return [p for p in selecting(state, pod) if p.affects_ingress]
    return [p for p in selecting(state, pod) if p.affects_egress]


def isolation(state: ClusterState, pod: Pod) -> tuple[bool, bool]:
    """(ingress isolated, egress isolated) by NetworkPolicies."""
    policies = selecting(state, pod)
    return any(p.affects_ingress for p in policies), any(p.affects_egress for p in policies)


def decide(state: ClusterState, direction: str, local: Endpoint, peer: Endpoint,
           protocol: str, port: int) -> verdict.Verdict | None:
    """The NetworkPolicy tier's verdict for traffic of `local` (a pod) with
    `peer`, or None when no policy isolates `local` in `direction`."""
    policies = isolating(state, local.pod, direction)
    # Not isolated: NetworkPolicy has no opinion, the next tier decides.
    if not policies:
        return None
    destination = local if direction == verdict.INGRESS else peer
    for policy in policies:
        rules = policy.ingress if direction == verdict.INGRESS else policy.egress
        for i, rule in enumerate(rules):
            # Allows are additive: the first rule that matches is enough.
            if rule_matches(state, policy, rule, peer, protocol, port, destination):
                return verdict.Verdict(True, direction, verdict.NETWORK, policy.ref,
                                       f"spec.{direction}[{i}]")
    names = ", ".join(p.ref for p in policies)
    return verdict.Verdict(False, direction, verdict.NETWORK, None, None,
                           f"isolated by {names} and no rule matches")


def rule_matches(state: ClusterState, policy: NetworkPolicy, rule: Rule, peer: Endpoint,
                 protocol: str, port: int, destination: Endpoint) -> bool:
    """Does `rule` of `policy` match traffic with `peer` on (protocol, port) to `destination`?"""
    if rule.ports and not ports_match(rule, protocol, port, destination):
        return False
    return not rule.peers or any(peer_matches(state, policy.namespace, p, peer) for p in rule.peers)


def ports_match(rule: Rule, protocol: str, port: int, destination: Endpoint) -> bool:
    declared = destination.pod.ports if destination.pod is not None else ()
    return any(m.matches(protocol, port, declared) for m in rule.ports)


def peer_matches(state: ClusterState, policy_namespace: str, peer: Peer, end: Endpoint) -> bool:
    if peer.ip_block is not None:
        return peer.ip_block.contains(end.ip)
    # Selectors select pods only; an address outside the cluster matches none.
    if end.pod is None:
        return False
    if peer.namespace_selector is None:
        in_namespace = end.pod.namespace == policy_namespace
    else:
        in_namespace = peer.namespace_selector.matches(state.namespace_labels(end.pod.namespace))
    if not in_namespace:
        return False
    return peer.pod_selector is None or peer.pod_selector.matches(end.pod.labels)
