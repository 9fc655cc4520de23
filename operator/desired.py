"""What each pod's agent should hold, and what must be sent to get there.
Pure: no gRPC, no Kubernetes.

Called by the operator's handlers and reconcile loop, and by the lab's
controller. `Desired.plan(state, pods)` resolves and compiles the given pods
(the set `affected` computed) and compares with what was last sent:
  - program hash changed (or never sent)  -> Push("apply"): the whole program
  - only map contents changed (peer churn) -> Push("maps"): entries only
  - pod gone                               -> Push("remove")
  - nothing changed                        -> nothing: no reload, no push
The caller sends each push to the agent of `push.node` and calls `sent()`
once the agent has it; a failed send is simply planned again next time.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from tailor.operator.cluster.state import ClusterState
from tailor.operator.compiler import mapdata, program, resolve
from tailor.operator.compiler.spec import ProgramSpec

APPLY, MAPS, REMOVE = "apply", "maps", "remove"


@dataclasses.dataclass(frozen=True)
class Push:
    action: str
    pod: str                       # "ns/name[Kind]"
    node: str | None
    spec: ProgramSpec | None = None
    programs: program.PodPrograms | None = None
    entries: dict | None = None    # {direction: {map: {key: value}}}
    error: str | None = None       # the pod cannot be compiled: why (nothing to send)


@dataclasses.dataclass
class _Sent:
    hash: str
    entries: dict
    node: str | None
    spec: ProgramSpec | None = None          # the shape it was compiled from
    programs: program.PodPrograms | None = None


class Desired:
    def __init__(self) -> None:
        self._sent: dict[str, _Sent] = {}
        self.compiled = 0          # programs compiled so far (for tests and metrics)

    def plan(self, state: ClusterState, pods: Iterable[str] | None = None) -> list[Push]:
        """Pushes for `pods` (refs; None: every pod, plus removals of pods
        that are gone). Pods without an address are skipped: their program is
        made when the CNI asks for it."""
        refs = sorted(set(pods)) if pods is not None else sorted(
            {p.ref for p in state.pods.values()} | set(self._sent))
        by_ref = {p.ref: p for p in state.pods.values()}
        memo: dict = {}            # peer groups, shared by the pods planned in this state
        out = []
        for ref in refs:
            pod = by_ref.get(ref)
            if pod is None:
                if ref in self._sent:
                    out.append(Push(REMOVE, ref, self._sent[ref].node))
                continue
            if not pod.ips:
                continue
            out.extend(self._plan_pod(state, pod, memo))
        return out

    def _plan_pod(self, state: ClusterState, pod, memo: dict) -> list[Push]:
        spec = resolve.resolve(state, pod, memo=memo)
        sent = self._sent.get(pod.ref)
        if sent is not None and sent.programs is not None and sent.spec == spec:
            # The same shape (ProgramSpec equality leaves map contents out, and
            # the compiler reads nothing else): the same bytes, no compile.
            compiled = sent.programs
        else:
            try:
                compiled = program.compile_pod(spec)
            except program.CompileError as e:
                return [Push(APPLY, pod.ref, pod.node, spec, error=str(e))]
            self.compiled += 1
        entries = mapdata.entries(spec)
        if sent is None or sent.hash != compiled.hash or sent.node != pod.node:
            return [Push(APPLY, pod.ref, pod.node, spec, compiled, entries)]
        if sent.entries != entries:
            return [Push(MAPS, pod.ref, pod.node, spec, compiled, entries)]
        return []

    def sent(self, push: Push) -> None:
        """The agent has `push`: remember it, so an unchanged pod is not sent again."""
        if push.action == REMOVE:
            self._sent.pop(push.pod, None)
        elif push.programs is not None:
            self._sent[push.pod] = _Sent(push.programs.hash, push.entries, push.node, push.spec,
                                         push.programs)

    def forget(self, pod: str) -> None:
        """Send this pod again next time (its agent lost it: restart, drift)."""
        self._sent.pop(pod, None)

    def given(self, pod: str, node: str | None, programs, entries, spec: ProgramSpec | None = None) -> None:
        """The pod's agent got this program another way (the CNI hand-off
        returned it): the same as a sent apply."""
        self._sent[pod] = _Sent(programs.hash, entries, node, spec, programs if spec else None)

    def sent_to(self, node: str) -> dict[str, str]:
        """{pod ref: hash} of what `node`'s agent was sent (or given) and
        should hold now: what the reconcile loop checks an agent against."""
        return {ref: s.hash for ref, s in self._sent.items() if s.node == node}

    def last_entries(self, pod: str) -> dict:
        sent = self._sent.get(pod)
        return sent.entries if sent else {}

    def last_hash(self, pod: str) -> str | None:
        sent = self._sent.get(pod)
        return sent.hash if sent else None


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
