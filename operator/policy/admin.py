"""Cluster-wide policy semantics, one direction at a time:
AdminNetworkPolicy and BaselineAdminNetworkPolicy
(policy.networking.k8s.io/v1alpha1) and ClusterNetworkPolicy (v1alpha2,
whose Admin and Baseline tiers hold the same rules; cluster.adminpolicy
normalises both versions to one AdminPolicy).

Called by policy.evaluate (the tier ladder) and by the compiler through
`applying`. Purely data-manipulative.

The rules implemented here, with the API text behind them:
- "Rules with lower priority values have higher precedence"; within a policy
  "the relative precedence of the rules ... will be determined by the order in
  which the rule is written". "The behavior is undefined if two ANP objects have
  same priority": tailor orders them by kind and name
  (ClusterState.admin_policies_in_order). A tier's policies are one list:
  ANPs and Admin-tier CNPs by priority; Baseline-tier CNPs by priority, then
  the BANP.
- The first matching rule decides: Allow ("allowed regardless of NetworkPolicy
  and BaselineAdminNetworkPolicy rules"), Deny ("denied before being checked
  against NetworkPolicy or BaselineAdminNetworkPolicy rules"), or Pass ("skip
  any remaining ANP rules, and then pass execution to any NetworkPolicies that
  select the pod. If the pod is not selected by any NetworkPolicies then
  execution is passed to any BaselineAdminNetworkPolicies"). v1alpha2 says
  the same of both tiers ("Skips all further ClusterNetworkPolicy rules in
  the current tier"), so a Baseline-tier Pass ends in the default allow.
- A rule matches when any peer matches ("If any AdminNetworkPolicyPeer matches
  ... then the specified action is applied") and, if it lists ports, one of
  them; "If Ports is not set then the rule does not filter traffic via port".
- "ANPs with no ingress rules do not affect ingress traffic": an ANP selecting
  a pod never isolates it by itself.
- `namespaces` and `pods` peers select pods; `networks` match addresses,
  "cluster-internal traffic will be checked against the rule as well";
  `nodes` match the addresses of the selected Node objects.
- namedPort resolves against the destination pod's containerPorts, with the
  protocol the container declares.
"""
from __future__ import annotations

import dataclasses
import ipaddress

from tailor.operator.cluster.adminpolicy import AdminPeer, AdminPolicy, AdminRule, PeerKind
from tailor.operator.cluster.objects import Pod
from tailor.operator.cluster.state import ClusterState
from tailor.operator.policy import verdict
from tailor.operator.policy.endpoints import Endpoint


@dataclasses.dataclass(frozen=True)
class Match:
    """The rule that decided: its policy, its index in the direction's list, the rule."""
    policy: AdminPolicy
    index: int
    rule: AdminRule
    direction: str

    @property
    def rule_ref(self) -> str:
        ref = f"spec.{self.direction}[{self.index}]"
        return f"{ref} ({self.rule.name})" if self.rule.name else ref


def subject_matches(state: ClusterState, policy: AdminPolicy, pod: Pod) -> bool:
    subject = policy.subject
    if not subject.namespace_selector.matches(state.namespace_labels(pod.namespace)):
        return False
    return subject.pod_selector is None or subject.pod_selector.matches(pod.labels)


def applying(state: ClusterState, pod: Pod) -> tuple[list[AdminPolicy], list[AdminPolicy]]:
    """The Admin-tier and the Baseline-tier policies whose subject selects
    `pod`, each in evaluation order."""
    return ([p for p in state.admin_policies_in_order() if subject_matches(state, p, pod)],
            [p for p in state.baseline_policies_in_order() if subject_matches(state, p, pod)])


def first_match(state: ClusterState, policies: list[AdminPolicy], direction: str,
                local: Endpoint, peer: Endpoint, protocol: str, port: int) -> Match | None:
    """The first rule, in evaluation order, of the `policies` selecting
    `local.pod` that matches traffic with `peer`; None when none does."""
    destination = local if direction == verdict.INGRESS else peer
    for policy in policies:
        if not subject_matches(state, policy, local.pod):
            continue
        rules = policy.ingress if direction == verdict.INGRESS else policy.egress
        for i, rule in enumerate(rules):
            if rule_matches(state, rule, peer, protocol, port, destination):
                return Match(policy, i, rule, direction)
    return None


def rule_matches(state: ClusterState, rule: AdminRule, peer: Endpoint, protocol: str, port: int,
                 destination: Endpoint) -> bool:
    if rule.ports is not None:
        declared = destination.pod.ports if destination.pod is not None else ()
        if not any(m.matches(protocol, port, declared) for m in rule.ports):
            return False
    return any(peer_matches(state, p, peer) for p in rule.peers)


def peer_matches(state: ClusterState, peer: AdminPeer, end: Endpoint) -> bool:
    if peer.kind is PeerKind.NETWORKS:
        addr = ipaddress.ip_address(end.ip)
        return any(addr.version == net.version and addr in net for net in peer.networks)
    if peer.kind is PeerKind.NODES:
        return any(end.ip in node.ips for node in state.nodes.values()
                   if peer.node_selector.matches(node.labels))
    # namespaces / pods select cluster pods only.
    if end.pod is None:
        return False
    if not peer.namespace_selector.matches(state.namespace_labels(end.pod.namespace)):
        return False
    return peer.pod_selector is None or peer.pod_selector.matches(end.pod.labels)
