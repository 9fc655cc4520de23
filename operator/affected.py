"""Which pods' programs a change can affect: the subjects to resolve and
compile again. Pure.

Called by the operator's World (controller/events.py) and the lab's
controller: after an event, only the pods named here are resolved again; a
pod outside the set keeps its program untouched. A pod's program depends on
  - the policies that select it (as subject), and its own labels,
    namespace, addresses and ports (ingress named ports resolve against it);
  - its rules' peers only through group ids, never through who is in them:
    members are node data that operator/groups.py keeps up to date.
So a pod's change touches that pod, a namespace's labels the pods in it (as
subjects of cluster-wide policies), a policy its subjects before and after;
a node's change touches no program at all. The property tests check that
every pod whose spec changed is in the set.
"""
from __future__ import annotations

from collections.abc import Iterable

from tailor.operator.cluster.adminpolicy import AdminPolicy
from tailor.operator.cluster.networkpolicy import NetworkPolicy
from tailor.operator.cluster.objects import Node, Pod
from tailor.operator.cluster.state import ClusterState
from tailor.operator.policy import admin


def _np_subjects(state: ClusterState, policy: NetworkPolicy) -> set[str]:
    return {p.ref for p in state.pods_in(policy.namespace) if policy.pod_selector.matches(p.labels)}


def _admin_subjects(state: ClusterState, policy: AdminPolicy) -> set[str]:
    return {p.ref for p in state.pods.values() if admin.subject_matches(state, policy, p)}


def by_pod(state: ClusterState, old: Pod | None, new: Pod | None) -> set[str]:
    """A pod was created, relabelled, re-addressed or deleted: only itself
    (its peers hold it through groups, whose members are node data)."""
    return {p.ref for p in (old, new) if p is not None}


def by_namespace(state: ClusterState, name: str, old_labels: dict, new_labels: dict) -> set[str]:
    """A namespace's labels changed (state is after the change): its pods
    can enter or leave cluster-wide policies' subjects."""
    return {p.ref for p in state.pods_in(name)}


def by_network_policy(state: ClusterState, old: NetworkPolicy | None,
                      new: NetworkPolicy | None) -> set[str]:
    """A NetworkPolicy was created, changed or deleted: its subjects before
    and after (state is after the change; subjects are evaluated in it, and
    a policy's subjects are pods of its own namespace)."""
    return set().union(*(_np_subjects(state, p) for p in (old, new) if p is not None))


def by_admin_policy(state: ClusterState, old: AdminPolicy | None, new: AdminPolicy | None) -> set[str]:
    return set().union(*(_admin_subjects(state, p) for p in (old, new) if p is not None))


def by_node(state: ClusterState, old: Node | None, new: Node | None) -> set[str]:
    """A Node changed: no program (its addresses are members of `nodes` peer groups)."""
    return set()


def union(*sets: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for s in sets:
        out |= set(s)
    return out
