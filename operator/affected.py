"""Which pods a change can affect: the selector index of incremental
recomputation. Pure.

Called by the operator's handlers and the lab's controller: after an event,
only the pods named here are resolved and compiled again; a pod outside the
set keeps its program and maps untouched. A pod's spec depends on
  - the policies that select it (as subject), and
  - through its rules' peers, the pods and namespaces those peers select
    (membership, named ports).
So a change touches the subjects of every policy whose subject or peer
selectors could match the changed object before or after the change.
The sets are conservative (a superset is safe; a missing pod would be a
stale program), and the property tests check exactly that.
"""
from __future__ import annotations

from collections.abc import Iterable

from tailor.operator.cluster.adminpolicy import POD_PEER_KINDS, AdminPolicy, PeerKind
from tailor.operator.cluster.networkpolicy import NetworkPolicy
from tailor.operator.cluster.objects import Node, Pod
from tailor.operator.cluster.state import ClusterState
from tailor.operator.policy import admin


def _np_subjects(state: ClusterState, policy: NetworkPolicy) -> set[str]:
    return {p.ref for p in state.pods_in(policy.namespace) if policy.pod_selector.matches(p.labels)}


def _admin_subjects(state: ClusterState, policy: AdminPolicy) -> set[str]:
    return {p.ref for p in state.pods.values() if admin.subject_matches(state, policy, p)}


def _all_admin(state: ClusterState) -> list[AdminPolicy]:
    return state.cluster_wide_policies()


def _np_peer_could_match(state: ClusterState, policy: NetworkPolicy, pod: Pod) -> bool:
    """Could a peer of `policy` select `pod` (by its labels and namespace)?"""
    ns_labels = state.namespace_labels(pod.namespace)
    for rule in policy.ingress + policy.egress:
        if any(m.name for m in rule.ports):
            return True                    # named ports resolve against peers: any pod counts
        for peer in rule.peers:
            if peer.ip_block is not None:
                continue
            if peer.namespace_selector is None:
                in_ns = pod.namespace == policy.namespace
            else:
                in_ns = peer.namespace_selector.matches(ns_labels)
            if in_ns and (peer.pod_selector is None or peer.pod_selector.matches(pod.labels)):
                return True
    return False


def _admin_peer_could_match(state: ClusterState, policy: AdminPolicy, pod: Pod) -> bool:
    ns_labels = state.namespace_labels(pod.namespace)
    for rule in policy.ingress + policy.egress:
        if rule.ports and any(m.name for m in rule.ports):
            return True
        for peer in rule.peers:
            if peer.kind not in POD_PEER_KINDS:
                continue
            if peer.namespace_selector.matches(ns_labels) and (
                    peer.pod_selector is None or peer.pod_selector.matches(pod.labels)):
                return True
    return False


def by_pod(state: ClusterState, old: Pod | None, new: Pod | None) -> set[str]:
    """A pod was created, relabelled, re-addressed or deleted. `state` is the
    state after the change; `old`/`new` the pod before/after (None if absent)."""
    out = {p.ref for p in (old, new) if p is not None}
    versions = [p for p in (old, new) if p is not None]
    for policy in state.network_policies.values():
        if any(_np_peer_could_match(state, policy, p) for p in versions):
            out |= _np_subjects(state, policy)
    for policy in _all_admin(state):
        if any(_admin_peer_could_match(state, policy, p) for p in versions):
            out |= _admin_subjects(state, policy)
    return out


def by_namespace(state: ClusterState, name: str, old_labels: dict, new_labels: dict) -> set[str]:
    """A namespace's labels changed (state is after the change). Its pods can
    enter or leave ANP subjects and any namespaceSelector peer."""
    pods = list(state.pods_in(name))
    out = {p.ref for p in pods}
    if not pods:
        return out
    for policy in state.network_policies.values():
        for rule in policy.ingress + policy.egress:
            for peer in rule.peers:
                sel = peer.namespace_selector
                if sel is not None and (sel.matches(old_labels) or sel.matches(new_labels)):
                    out |= _np_subjects(state, policy)
    for policy in _all_admin(state):
        selectors = [peer.namespace_selector for rule in policy.ingress + policy.egress
                     for peer in rule.peers if peer.namespace_selector is not None]
        if any(s.matches(old_labels) or s.matches(new_labels) for s in selectors):
            out |= _admin_subjects(state, policy)
    return out


def by_network_policy(state: ClusterState, old: NetworkPolicy | None,
                      new: NetworkPolicy | None) -> set[str]:
    """A NetworkPolicy was created, changed or deleted: its subjects before
    and after (state is after the change; subjects are evaluated in it, and
    a policy's subjects are pods of its own namespace)."""
    return set().union(*(_np_subjects(state, p) for p in (old, new) if p is not None))


def by_admin_policy(state: ClusterState, old: AdminPolicy | None, new: AdminPolicy | None) -> set[str]:
    return set().union(*(_admin_subjects(state, p) for p in (old, new) if p is not None))


def by_node(state: ClusterState, old: Node | None, new: Node | None) -> set[str]:
    """A Node was created, relabelled, re-addressed or deleted: the subjects
    of every admin policy with a `nodes` peer that selects it before or after
    (its addresses are that peer's map contents)."""
    versions = [n for n in (old, new) if n is not None]
    out: set[str] = set()
    for policy in _all_admin(state):
        selectors = [peer.node_selector for rule in policy.ingress + policy.egress
                     for peer in rule.peers if peer.kind is PeerKind.NODES]
        if any(s.matches(n.labels) for s in selectors for n in versions):
            out |= _admin_subjects(state, policy)
    return out


def union(*sets: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for s in sets:
        out |= set(s)
    return out
