"""PodProgram objects (tailor.dev/v1alpha1, charts/tailor/crds) and Events on
pods: what `kubectl get pp` and `kubectl describe pod` show.

Called by app.Controller, which runs Writer.run() as a task in the kopf
loop. The engine keeps one views.View per pod and marks the ones that
change; the writer takes them (engine.take_views) and writes, several at once:
  - a new pod: POST the PodProgram (same namespace and name as the pod,
    spec.podName/podUID, an ownerReference to the pod so the garbage
    collector deletes it with the pod), then its status;
  - a changed view: PATCH /status (merge patch);
  - a pod gone: DELETE the PodProgram (the garbage collector may have been
    first: 404 is fine);
  - a view that turns Failed: a Warning Event on the pod, once per
    (program hash, message).
A write that fails is retried with the next batch; a pod's status is never
written out of order (one write per pod at a time, the newest view wins).
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import uuid

from tailor.operator.controller import engine as engine_
from tailor.operator.controller import views
from tailor.operator.controller.kube import ApiError, KubeClient

log = logging.getLogger("tailor.operator.podprograms")
GROUP, VERSION, PLURAL, KIND = "tailor.dev", "v1alpha1", "podprograms", "PodProgram"
API_VERSION = f"{GROUP}/{VERSION}"
COMPONENT = "tailor-operator"


def path(namespace: str, name: str | None = None, status: bool = False) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    if name is None:
        return base
    return f"{base}/{name}" + ("/status" if status else "")


def owner(view: views.View) -> list[dict]:
    return [{"apiVersion": "v1", "kind": "Pod", "name": view.name, "uid": view.uid,
             "controller": True, "blockOwnerDeletion": False}]


def body(view: views.View) -> dict:
    """The PodProgram object for a pod (status is written separately)."""
    meta = {"name": view.name, "namespace": view.namespace,
            "labels": {"app.kubernetes.io/managed-by": COMPONENT}}
    if view.uid:
        meta["ownerReferences"] = owner(view)
    if view.node:
        meta["labels"]["tailor.dev/node"] = view.node
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta,
            "spec": {"podName": view.name, "podUID": view.uid}}


def status(view: views.View, generation: int | None, since: str) -> dict:
    """The status block for `view`; `since` is when the state last changed."""
    out = {
        "node": view.node or "",
        "features": list(view.features),
        "featureList": ",".join(view.features),
        "instructions": view.instructions,
        "hash": view.hash or "",
        "state": view.state,
        "message": view.message,
        "policies": list(view.policies),
        "observedHash": view.observed_hash or "",
        "conditions": [{
            "type": "Loaded",
            "status": {views.LOADED: "True", views.FAILED: "False"}.get(view.state, "Unknown"),
            "reason": view.state, "message": view.message, "lastTransitionTime": since}],
    }
    if generation is not None:
        out["observedGeneration"] = generation
        out["conditions"][0]["observedGeneration"] = generation
    return out


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def event(view: views.View, reason: str, message: str, kind: str = "Warning") -> dict:
    """A core/v1 Event about the pod."""
    stamp = now()
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{view.name}.tailor.{uuid.uuid4().hex[:12]}",
                         "namespace": view.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": view.name,
                               "namespace": view.namespace, "uid": view.uid},
            "reason": reason, "message": message[:1024], "type": kind,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1}


class Writer:
    def __init__(self, engine: engine_.Engine, kube: KubeClient, *, concurrency: int = 16,
                 post_events: bool = True):
        self.engine = engine
        self.kube = kube
        self.concurrency = concurrency
        self.post_events = post_events
        self.written = 0
        self.deleted = 0
        self.events_posted = 0
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._created: dict[str, tuple[str, int | None]] = {}     # ref -> (uid, generation)
        self._since: dict[str, tuple[str, str]] = {}              # ref -> (state, when)
        self._warned: set[tuple[str, str, str]] = set()           # (uid, hash, message)
        self.writing = False                                       # a batch is being written

    def wake(self) -> None:
        """Thread-safe: there are views to write."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._wake.set()
        limit = asyncio.Semaphore(self.concurrency)

        async def one(ref, view):
            async with limit:
                try:
                    await self._write(ref, view)
                except asyncio.CancelledError:
                    raise
                except Exception as e:   # noqa: BLE001 - retried with the next batch
                    log.warning("PodProgram %s: %s", ref, e)
                    self.engine.redo_view(ref)
                    return False
                return True

        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = self.engine.take_views()
            if not batch:
                continue
            self.writing = True
            try:
                results = await asyncio.gather(*(one(ref, view) for ref, view in batch))
            finally:
                self.writing = False
            if not all(results):
                await asyncio.sleep(1.0)
                self._wake.set()

    async def flush(self) -> None:
        """Write what is pending now (at shutdown)."""
        for ref, view in self.engine.take_views():
            try:
                await self._write(ref, view)
            except Exception as e:   # noqa: BLE001 - shutting down: log only
                log.warning("PodProgram %s: %s", ref, e)

    async def _write(self, ref: str, view: views.View | None) -> None:
        if view is None:
            namespace, name = ref.split("[", 1)[0].split("/", 1)
            self._created.pop(ref, None)
            self._since.pop(ref, None)
            try:
                await self.kube.delete(path(namespace, name))
                self.deleted += 1
            except ApiError as e:
                if e.status != 404:
                    raise
            return
        created = self._created.get(ref)
        if created is None or created[0] != view.uid:
            generation = await self._create(view)
            self._created[ref] = (view.uid, generation)
        else:
            generation = created[1]
        last = self._since.get(ref)
        since = last[1] if last and last[0] == view.state else now()
        self._since[ref] = (view.state, since)
        await self.kube.merge_patch(path(view.namespace, view.name, status=True),
                                    {"status": status(view, generation, since)})
        self.written += 1
        if view.state == views.FAILED and self.post_events:
            key = (view.uid, view.hash or "", view.message)
            if key not in self._warned:
                self._warned.add(key)
                await self.kube.create(f"/api/v1/namespaces/{view.namespace}/events",
                                       event(view, "ProgramFailed", view.message))
                self.events_posted += 1

    async def _create(self, view: views.View) -> int | None:
        """Create the PodProgram, or take over the one there (an earlier
        operator's, or an earlier pod's of the same name). Returns its generation."""
        try:
            made = await self.kube.create(path(view.namespace), body(view))
        except ApiError as e:
            if e.status != 409:
                raise
            wanted = body(view)
            made = await self.kube.merge_patch(path(view.namespace, view.name),
                                               {"metadata": wanted["metadata"], "spec": wanted["spec"]})
        return (made.get("metadata") or {}).get("generation")
