"""What each pod's PodProgram status should say: one View per pod, the views
changed since the writer last took them, and how an agent's answer turns
into a view.

Held by engine.Engine, which calls it under the engine's lock (it has no lock
of its own): `set()` after planning or a CNI hand-off, `update()` when a push
fails, `observe()` when an agent answers an Apply or reports in a List,
`drop()` when pods leave the model. The PodProgram writer (podprograms.Writer)
and the metrics read it through the engine (`take_views()`, `redo_view()`,
`states()`), so they take the lock too.

Knows nothing of pushes or hand-offs: what a report means for the engine's
own bookkeeping (a handed-out pod that is now Loaded) the engine decides.
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable

from tailor.operator import policy
from tailor.operator.cluster.objects import Pod
from tailor.operator.compiler import program
from tailor.operator.controller import events

PENDING, LOADED, FAILED = "Pending", "Loaded", "Failed"


@dataclasses.dataclass
class View:
    """What a pod's PodProgram status says (podprograms.py writes it)."""
    namespace: str
    name: str
    uid: str
    node: str | None
    hash: str | None = None
    features: tuple[str, ...] = ()
    instructions: int = 0
    policies: tuple[str, ...] = ()
    state: str = PENDING
    message: str = ""
    observed_hash: str | None = None     # what the agent confirmed in force


class Views:
    """Pod ref -> View, and the refs whose view changed (None: the pod is gone)."""

    def __init__(self, world: events.World, on_change: Callable[[], None]):
        self._world = world                                  # the engine's model, read only
        self._on_change = on_change                          # the writer's wake-up
        self._views: dict[str, View] = {}
        self._dirty: dict[str, View | None] = {}             # ref -> new view (None: gone)

    # -- written by the engine ----------------------------------------------------------

    def set(self, pod: Pod, uid: str, programs: program.PodPrograms | None = None, **fields) -> None:
        """A pod's view after planning or a hand-off (state from the last report)."""
        old = self._views.get(pod.ref)
        if old is not None and old.uid != uid:
            old = None
        view = dataclasses.replace(old) if old else View(pod.namespace, pod.name, uid, pod.node)
        view.node = pod.node
        if programs is not None:
            if "state" not in fields and view.hash != programs.hash:
                # A new program: Loaded only once the agent says it holds it
                # (an Apply's answer, a List); the same program keeps its state.
                fields = {"state": PENDING, "message": f"compiled; on its way to the agent on "
                                                       f"node {pod.node}", **fields}
            view.hash = programs.hash
            view.features = tuple(programs.features)
            view.instructions = programs.instructions
            selecting = policy.policies_selecting(self._world.state, pod)
            view.policies = tuple(
                [f"{p.kind}/{p.name}" for p in selecting.admin]
                + [f"NetworkPolicy/{p.namespace}/{p.name}" for p in selecting.network]
                + [f"{p.kind}/{p.name}" for p in selecting.baseline])
        for name, value in fields.items():
            setattr(view, name, value)
        self._store(pod.ref, view)

    def update(self, ref: str, **fields) -> None:
        """Change fields of the view `ref` has (it must have one)."""
        self._store(ref, dataclasses.replace(self._views[ref], **fields))

    def observe(self, ref: str, state: str, observed_hash: str, message: str = "") -> None:
        """The view of `ref` from what its agent says it holds: `observed_hash`
        in `state`, and why (an Apply's answer or a List's entry)."""
        view = self._views[ref]
        if state == FAILED:
            self.update(ref, state=FAILED, observed_hash=observed_hash or view.observed_hash,
                        message=message or "the agent refused the program")
        elif state == LOADED and observed_hash == view.hash:
            self.update(ref, state=LOADED, observed_hash=observed_hash, message="")
        elif state == LOADED:
            self.update(ref, state=PENDING, observed_hash=observed_hash,
                        message=f"the agent holds {observed_hash}; {view.hash} is on its way")
        else:
            # The agent holds it, the pod is not wired there (yet).
            self.update(ref, state=PENDING, observed_hash=observed_hash or view.observed_hash,
                        message=message or "the agent has the program")

    def drop(self, refs: Iterable[str] | None = None) -> list[str]:
        """Views of pods that left the model (of `refs`, default all): their
        PodPrograms go too. Returns the refs dropped."""
        gone = [r for r in (self._views if refs is None else refs)
                if r in self._views and r not in self._world.uids]
        for ref in gone:
            self._views.pop(ref)
            self._dirty[ref] = None
            self._on_change()
        return gone

    def _store(self, ref: str, view: View) -> None:
        if self._views.get(ref) == view:
            return                                 # unchanged: nothing to write
        self._views[ref] = view
        self._dirty[ref] = view
        self._on_change()

    # -- read through the engine --------------------------------------------------------

    def get(self, ref: str) -> View | None:
        return self._views.get(ref)

    def take(self) -> list[tuple[str, View | None]]:
        """The views that changed since the last call (None: the pod is gone)."""
        out = sorted(self._dirty.items(), key=lambda kv: kv[0])
        self._dirty.clear()
        return out

    def redo(self, ref: str) -> None:
        """Writing a view failed: write it again next time."""
        self._dirty.setdefault(ref, self._views.get(ref))

    def states(self) -> dict[str, int]:
        """PodPrograms by state."""
        return dict(collections.Counter(v.state for v in self._views.values()))

    def pending(self) -> int:
        """Views changed and not yet taken by the writer."""
        return len(self._dirty)
