"""What each pod's agent should hold, and what must be sent to get there.
Pure: no gRPC, no Kubernetes.

Called by the operator's handlers and reconcile loop, and by the lab's
controller. `Desired.plan(state, pods, groups)` resolves and compiles the
given pods (the set `affected` computed), compares with what was last sent,
and brings each node's group members up to date (`groups`: the ids whose
members changed, from operator/groups.py):
  - program hash changed (or never sent)  -> Push("apply"): the whole program,
    with the members of the groups it tests that its node lacks
  - pod gone                               -> Push("remove")
  - a group's members changed, or a node no longer needs a group
                                           -> Push("groups") to each node
                                              holding it: additions and removals
  - nothing changed                        -> nothing: no reload, no push
The caller sends each push to the agent of `push.node` and calls `sent()`
once the agent has it; a failed send is simply planned again next time
(a failed group push: `forget_node()`, and the node gets everything again).

A node's groups are tracked as planned, not as acknowledged: a membership
change is sent as a difference from what the node was last planned to
hold, so a change never overtakes the Apply that first sent the group.
"""
from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Iterable

from tailor.datapath import groups as node_groups
from tailor.operator import groups as peer_groups
from tailor.operator.cluster.state import ClusterState
from tailor.operator.compiler import program, resolve, template
from tailor.operator.compiler.spec import ProgramSpec

APPLY, MAPS, REMOVE, GROUPS = "apply", "maps", "remove", "groups"


@dataclasses.dataclass(frozen=True)
class Push:
    action: str
    pod: str                       # "ns/name[Kind]" ("" for a node's groups)
    node: str | None
    spec: ProgramSpec | None = None
    programs: program.PodPrograms | None = None
    entries: dict | None = None    # {direction: {map: {key: value}}}: the pod's own maps
    error: str | None = None       # the pod cannot be compiled: why (nothing to send)
    groups: tuple[node_groups.GroupChange, ...] = ()    # members the node gets with it
    full: bool = False             # groups: the node's whole truth (after forget_node)


@dataclasses.dataclass
class _Sent:
    hash: str
    entries: dict
    node: str | None
    spec: ProgramSpec | None = None          # the shape it was compiled from
    programs: program.PodPrograms | None = None


class Desired:
    def __init__(self, memberships: peer_groups.Memberships | None = None) -> None:
        self._sent: dict[str, _Sent] = {}
        self.compiled = 0          # programs compiled so far (for tests and metrics)
        self.templates = template.Templates()
        self._memberships = memberships
        # Per node: the groups its planned programs test (with how many
        # pods test each), and the members it was planned to hold.
        self._uses: dict[str, collections.Counter] = {}
        self._tests: dict[str, tuple[str | None, frozenset[str]]] = {}   # pod -> (node, groups)
        self._held: dict[str, dict[str, frozenset]] = {}
        self._full: set[str] = set()               # nodes to send everything again
        self._dirty: set[str] = set()              # nodes whose programs' groups changed

    def memberships(self, state: ClusterState) -> peer_groups.Memberships:
        if self._memberships is None or self._memberships.state is not state:
            self._memberships = peer_groups.Memberships(state)
        return self._memberships

    def plan(self, state: ClusterState, pods: Iterable[str] | None = None,
             groups: Iterable[str] = ()) -> list[Push]:
        """Pushes for `pods` (refs; None: every pod, plus removals of pods
        that are gone) and for the nodes holding `groups`. Pods without an
        address are skipped: their program is made when the CNI asks for it."""
        members = self.memberships(state)
        refs = sorted(set(pods)) if pods is not None else sorted(
            {p.ref for p in state.pods.values()} | set(self._sent))
        by_ref = {p.ref: p for p in state.pods.values()} if pods is None or len(refs) > 64 else None
        resolver = resolve.Resolver(state)
        out = []
        for ref in refs:
            pod = by_ref.get(ref) if by_ref is not None else _find(state, ref)
            if pod is None:
                if ref in self._sent or ref in self._tests:
                    node = self._sent[ref].node if ref in self._sent else self._tests[ref][0]
                    out.append(Push(REMOVE, ref, node))
                    self._test(ref, None, frozenset())
                continue
            if not pod.ips:
                continue
            out.extend(self._plan_pod(resolver, members, pod))
        out.extend(self._plan_groups(members, set(groups)))
        return out

    def _plan_pod(self, resolver: resolve.Resolver, members, pod) -> list[Push]:
        spec = resolver.resolve(pod)
        sent = self._sent.get(pod.ref)
        if sent is not None and sent.programs is not None and sent.spec == spec:
            # The same shape (the compiler reads nothing else): the same bytes.
            compiled = sent.programs
        else:
            try:
                compiled = self.templates.compile(spec)
            except program.CompileError as e:
                return [Push(APPLY, pod.ref, pod.node, spec, error=str(e))]
            self.compiled += 1
        tested = compiled.groups
        if sent is not None and sent.hash == compiled.hash and sent.node == pod.node:
            return []
        members.define(spec.definitions.values())
        self._test(pod.ref, pod.node, tested)
        changes = self._arriving(pod.node, tested, members) if pod.node else ()
        return [Push(APPLY, pod.ref, pod.node, spec, compiled, {}, groups=changes)]

    def _test(self, ref: str, node: str | None, tested: frozenset[str]) -> None:
        """The pod's planned program (on `node`) tests these groups."""
        old_node, old = self._tests.pop(ref, (None, frozenset()))
        if node is not None and tested:
            self._tests[ref] = (node, tested)
        if (old_node, old) == (node, tested):
            return
        if old_node is not None:
            self._uses.setdefault(old_node, collections.Counter()).subtract(old)
            self._dirty.add(old_node)
        if node is not None and tested:
            self._uses.setdefault(node, collections.Counter()).update(tested)
            self._dirty.add(node)

    def _arriving(self, node: str, tested: frozenset[str], members) -> tuple:
        """Members of the groups `node` does not hold yet, whole."""
        held = self._held.setdefault(node, {})
        out = []
        for gid in sorted(tested):
            if gid not in held:
                held[gid] = members.members(gid)
                out.append(_change(gid, tuple(sorted(held[gid], key=str)), replace=True))
        return tuple(out)

    def _plan_groups(self, members, changed: set[str]) -> list[Push]:
        out = []
        dropped = False
        # Nodes that hold a group usually hold the same members object: the
        # difference is computed once per group, not once per node.
        diffs: dict[tuple[str, int], tuple | None] = {}
        nodes = self._dirty | self._full | {n for n, h in self._held.items() if changed & h.keys()}
        for node in sorted(nodes):
            held = self._held.setdefault(node, {})
            if node in self._full or node in self._dirty:
                uses = self._uses.get(node, collections.Counter())
                wanted = {g for g, n in uses.items() if n > 0}
                unwanted = held.keys() - wanted
            else:
                uses, wanted, unwanted = None, None, set()
            if node in self._full:
                held.clear()
                held.update({g: members.members(g) for g in wanted})
                out.append(Push(GROUPS, "", node, full=True, groups=tuple(
                    _change(g, tuple(sorted(m, key=str)), replace=True)
                    for g, m in sorted(held.items()))))
                continue
            changes = []
            for gid in sorted((changed & held.keys()) | unwanted):
                if gid in unwanted:
                    del held[gid]
                    uses.pop(gid, None)
                    changes.append(_change(gid, drop=True))
                    dropped = True
                    continue
                now, before = members.members(gid), held[gid]
                if now is before:
                    continue
                key = (gid, id(before))
                if key not in diffs:
                    diffs[key] = None if now == before else (
                        tuple(sorted(now - before, key=str)), tuple(sorted(before - now, key=str)))
                held[gid] = now
                if diffs[key] is not None:
                    changes.append(_change(gid, *diffs[key]))
            if changes:
                out.append(Push(GROUPS, "", node, groups=tuple(changes)))
        self._full.clear()
        self._dirty.clear()
        if dropped:
            members.retain({g for _, t in self._tests.values() for g in t})
        return out

    def sent(self, push: Push) -> None:
        """The agent has `push`: remember it, so an unchanged pod is not sent again."""
        if push.action == REMOVE:
            self._sent.pop(push.pod, None)
        elif push.action == GROUPS:
            pass
        elif push.programs is not None:
            self._sent[push.pod] = _Sent(push.programs.hash, push.entries, push.node, push.spec,
                                         push.programs)

    def forget(self, pod: str) -> None:
        """Send this pod again next time (its agent lost it: restart, drift)."""
        self._sent.pop(pod, None)

    def forget_node(self, node: str) -> None:
        """The node's groups are not what was planned (a failed send, an
        agent that restarted): send it all of them again, whole."""
        self._full.add(node)

    def given(self, pod: str, node: str | None, programs, entries, spec: ProgramSpec | None = None,
              memberships: peer_groups.Memberships | None = None) -> tuple:
        """The pod's agent got this program another way (the CNI hand-off
        returned it): the same as a sent apply. Returns the group members
        to send along with it: every group it tests, whole (the hand-off
        may overtake a push, and a whole membership is right either way)."""
        self._sent[pod] = _Sent(programs.hash, entries, node, spec, programs if spec else None)
        if spec is None or node is None or memberships is None:
            return ()
        memberships.define(spec.definitions.values())
        tested = programs.groups
        self._test(pod, node, tested)
        held = self._held.setdefault(node, {})
        out = []
        for gid in sorted(tested):
            held[gid] = memberships.members(gid)
            out.append(_change(gid, tuple(sorted(held[gid], key=str)), replace=True))
        return tuple(out)

    def sent_to(self, node: str) -> dict[str, str]:
        """{pod ref: hash} of what `node`'s agent was sent (or given) and
        should hold now: what the reconcile loop checks an agent against."""
        return {ref: s.hash for ref, s in self._sent.items() if s.node == node}

    def groups_digest(self, node: str) -> str:
        """What the node's agent reports when it holds the members planned
        for it (datapath.groups.digest)."""
        return node_groups.digest(self._held.get(node, {}))

    def last_entries(self, pod: str) -> dict:
        sent = self._sent.get(pod)
        return sent.entries if sent else {}

    def last_hash(self, pod: str) -> str | None:
        sent = self._sent.get(pod)
        return sent.hash if sent else None


_last_seq = 0


def _change(*args, **kwargs) -> node_groups.GroupChange:
    """A GroupChange stamped with when it was computed: microseconds of wall
    time (it must keep increasing across operator restarts), never twice the
    same, so a node can tell the newer of two that crossed on the way."""
    global _last_seq
    _last_seq = max(_last_seq + 1, time.time_ns() // 1000)
    return node_groups.GroupChange(*args, **kwargs, seq=_last_seq)


def _find(state: ClusterState, ref: str):
    try:
        return state.find_pod(ref)
    except KeyError:
        return None


def changed_maps(before: dict, after: dict) -> dict:
    """{direction: {map: entries}} for the maps whose contents differ (a map
    that emptied is included, empty): what an UpdateMaps must carry."""
    out: dict = {}
    for direction in set(before) | set(after):
        old, new = before.get(direction, {}), after.get(direction, {})
        for name in set(old) | set(new):
            if old.get(name) != new.get(name):
                out.setdefault(direction, {})[name] = new.get(name, {})
    return out
