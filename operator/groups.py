"""Peer groups: what a rule's selector peer or named port stands for, and
who belongs to it, kept up to date as pods, namespaces and nodes change.
Pure: no I/O.

A group is named by its meaning, never by who asks: two rules, in any
policy, for any pod, that select the same pods are one group with one id
(`compiler.resolve` makes the definitions). Programs test groups by id; each
node's agent numbers them and holds their members once (datapath/groups.py),
so members are node data, not per-pod data, and a pod joining a group costs
one update per node, whatever the number of rules that name it.

`Memberships` is the index behind that: members per group, computed once
when a group is first defined and then changed only by the objects that
change them — a pod's labels or addresses, a namespace's labels, a node's
addresses — each answering which groups it moved.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterable

from tailor.datapath import groups as G
from tailor.operator.cluster.objects import Node, Pod
from tailor.operator.cluster.ports import PROTOCOL_NAMES
from tailor.operator.cluster.state import ClusterState
from tailor.operator.selectors import LabelSelector


def canonical(selector: LabelSelector | None) -> str:
    if selector is None:
        return "-"
    return ";".join(sorted(f"{r.key} {r.operator} {','.join(sorted(r.values))}"
                           for r in selector.requirements)) or "{}"


def _id(*parts: str) -> str:
    return f"{G.PEER}:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class PodGroup:
    """Every address of the pods chosen by a selector peer. `namespace`: a
    podSelector alone, which means the policy's own namespace; otherwise
    the pods of the namespaces `namespace_selector` matches. A pod selector
    of None takes every pod there."""
    namespace: str | None
    namespace_selector: LabelSelector | None
    pod_selector: LabelSelector | None

    @functools.cached_property
    def id(self) -> str:
        return _id("pods", self.namespace or "", canonical(self.namespace_selector),
                   canonical(self.pod_selector))

    def namespace_matches(self, state: ClusterState, namespace: str) -> bool:
        if self.namespace is not None:
            return namespace == self.namespace
        return self.namespace_selector.matches(state.namespace_labels(namespace))

    def matches(self, state: ClusterState, pod: Pod) -> bool:
        return (bool(pod.ips) and self.namespace_matches(state, pod.namespace)
                and (self.pod_selector is None or self.pod_selector.matches(pod.labels)))

    def members(self, state: ClusterState) -> frozenset[str]:
        if self.namespace is not None:
            namespaces = [self.namespace]
        else:
            namespaces = [n for n in _namespaces(state) if self.namespace_matches(state, n)]
        return frozenset(ip for n in namespaces for pod in state.pods_in(n)
                         if self.matches(state, pod) for ip in pod.ips)


@dataclasses.dataclass(frozen=True)
class NodeGroup:
    """Every address of the nodes a selector chooses (ANP `nodes` peers)."""
    selector: LabelSelector

    @functools.cached_property
    def id(self) -> str:
        return _id("nodes", canonical(self.selector))

    def members(self, state: ClusterState) -> frozenset[str]:
        return frozenset(ip for node in state.nodes.values() if self.selector.matches(node.labels)
                         for ip in node.ips)


@dataclasses.dataclass(frozen=True)
class PortGroup:
    """Every (address, port) at which a pod exposes a named port (egress
    rules: the name's number is the destination's)."""
    protocol: int
    name: str

    @property
    def id(self) -> str:
        return G.port_group(self.protocol, self.name)

    def endpoints(self, pod: Pod) -> set[tuple[str, int]]:
        proto = PROTOCOL_NAMES[self.protocol]
        return {(ip, cp.port) for cp in pod.ports if cp.name == self.name and cp.protocol == proto
                for ip in pod.ips}

    def members(self, state: ClusterState) -> frozenset[tuple[str, int]]:
        return frozenset(e for pod in state.pods.values() for e in self.endpoints(pod))


Definition = PodGroup | NodeGroup | PortGroup


def _namespaces(state: ClusterState) -> set[str]:
    return set(state.namespaces) | {p.namespace for p in state.pods.values()}


class Memberships:
    """Members of every defined group, for one ClusterState as it changes.
    After changing the state, call the matching `*_changed` method: it
    returns the ids of the groups whose members changed."""

    def __init__(self, state: ClusterState):
        self.state = state
        self._defs: dict[str, Definition] = {}
        self._members: dict[str, frozenset] = {}
        # Pod groups bound to one namespace, by it: a pod change tests only
        # those of its own namespace and the cluster-scoped ones.
        self._local: dict[str, set[str]] = {}
        self._scoped: set[str] = set()          # namespace-selector pod groups
        self._ports: set[str] = set()
        self._nodes: set[str] = set()

    def define(self, definitions: Iterable[Definition]) -> set[str]:
        """Known from now on; returns the ids that were new."""
        new = set()
        for d in definitions:
            gid = d.id
            if gid in self._defs:
                continue
            self._defs[gid] = d
            self._members[gid] = d.members(self.state)
            new.add(gid)
            if isinstance(d, PodGroup):
                if d.namespace is not None:
                    self._local.setdefault(d.namespace, set()).add(gid)
                else:
                    self._scoped.add(gid)
            elif isinstance(d, PortGroup):
                self._ports.add(gid)
            else:
                self._nodes.add(gid)
        return new

    def members(self, gid: str) -> frozenset:
        return self._members.get(gid, frozenset())

    def __contains__(self, gid: str) -> bool:
        return gid in self._defs

    def ids(self) -> set[str]:
        return set(self._defs)

    def retain(self, keep: set[str]) -> None:
        """Forget the groups no program uses any more."""
        for gid in [g for g in self._defs if g not in keep]:
            d = self._defs.pop(gid)
            self._members.pop(gid, None)
            if isinstance(d, PodGroup) and d.namespace is not None:
                self._local.get(d.namespace, set()).discard(gid)
            for s in (self._scoped, self._ports, self._nodes):
                s.discard(gid)

    # -- changes --------------------------------------------------------------------

    def pod_changed(self, old: Pod | None, new: Pod | None) -> set[str]:
        """A pod was created, changed or deleted (the state is after it)."""
        namespaces = {p.namespace for p in (old, new) if p is not None}
        candidates = set(self._scoped) | set(self._ports)
        for n in namespaces:
            candidates |= self._local.get(n, set())
        changed = set()
        for gid in candidates:
            d = self._defs[gid]
            if isinstance(d, PortGroup):
                before = d.endpoints(old) if old is not None else set()
                after = d.endpoints(new) if new is not None else set()
            else:
                before = set(old.ips) if old is not None and d.matches(self.state, old) else set()
                after = set(new.ips) if new is not None and d.matches(self.state, new) else set()
            if before == after:
                continue
            members = self._members[gid]
            pod = new or old
            # An address this pod gave up may be another pod's now (a reused IP).
            gone = {m for m in before - after if not self._held_by_other(d, m, pod)}
            updated = (members - gone) | after
            if updated != members:
                self._members[gid] = updated
                changed.add(gid)
        return changed

    def _held_by_other(self, d: Definition, member, pod: Pod) -> bool:
        ip = member if isinstance(member, str) else member[0]
        other = self.state.pod_by_ip(ip)
        if other is None or other.key == pod.key:
            return False
        if isinstance(d, PortGroup):
            return member in d.endpoints(other)
        return d.matches(self.state, other)

    def namespace_changed(self, name: str) -> set[str]:
        """A namespace's labels changed, or it was deleted (with its pods)."""
        return self._recompute(self._scoped | self._local.get(name, set()))

    def nodes_changed(self, old: Node | None = None, new: Node | None = None) -> set[str]:
        return self._recompute(self._nodes)

    def _recompute(self, gids: Iterable[str]) -> set[str]:
        changed = set()
        for gid in gids:
            members = self._defs[gid].members(self.state)
            if members != self._members[gid]:
                self._members[gid] = members
                changed.add(gid)
        return changed
