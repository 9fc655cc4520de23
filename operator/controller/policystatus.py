"""Status on the cluster-wide policy objects (AdminNetworkPolicy,
BaselineAdminNetworkPolicy, ClusterNetworkPolicy): whether tailor took the
object in, and why not when it did not — what `kubectl get anp,cnp -o yaml`
and `kubectl describe` show.

Called by app.Controller, which runs Writer.run() as a task in the kopf
loop; the engine records each policy's verdict as its events are translated
(events.World.policy_verdicts) and wakes the writer. The API defines only
`status.conditions` and leaves their types to implementations; tailor writes
one condition:

    type: Accepted
    status: "True"  reason: Accepted   message: the tier and priority it is in force at
    status: "False" reason: Invalid    message: the field and the problem (the
                                       object's previous version, if any, stays in force)

with `observedGeneration` the object's metadata.generation. A write that
fails is retried with the next batch; a policy's status is written only when
its verdict or generation changes, so the status patch's own watch event
(same generation, same verdict) writes nothing.
"""
from __future__ import annotations

import asyncio
import datetime
import logging

from tailor.operator.controller import events
from tailor.operator.controller.kube import ApiError, KubeClient

log = logging.getLogger("tailor.operator.policystatus")
CONDITION = "Accepted"


def path(kind: str, name: str) -> str:
    group, version, plural = events.RESOURCES[kind]
    return f"/apis/{group}/{version}/{plural}/{name}/status"


def status(verdict: events.PolicyVerdict, now: str) -> dict:
    condition = {"type": CONDITION, "status": "False" if verdict.error else "True",
                 "reason": "Invalid" if verdict.error else "Accepted",
                 "message": verdict.error or verdict.summary, "lastTransitionTime": now}
    if verdict.generation is not None:
        condition["observedGeneration"] = verdict.generation
    return {"status": {"conditions": [condition]}}


class Writer:
    def __init__(self, engine, kube: KubeClient, *, concurrency: int = 8):
        self.engine = engine
        self.kube = kube
        self.concurrency = concurrency
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.written = 0

    def wake(self) -> None:
        """Thread-safe: the engine calls it under its lock, from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            await self.flush()
            await self._wake.wait()
            self._wake.clear()

    async def flush(self) -> None:
        verdicts = self.engine.take_policy_verdicts()
        if not verdicts:
            return
        gate = asyncio.Semaphore(self.concurrency)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

        async def one(verdict: events.PolicyVerdict) -> None:
            async with gate:
                try:
                    await self.kube.merge_patch(path(verdict.kind, verdict.name), status(verdict, now))
                    self.written += 1
                except ApiError as e:
                    if e.status == 404:
                        return                 # deleted meanwhile: nothing to say
                    log.warning("status of %s %s: %s", verdict.kind, verdict.name, e)
                    self.engine.redo_policy_verdict(verdict)
                except (OSError, asyncio.TimeoutError) as e:
                    log.warning("status of %s %s: %s", verdict.kind, verdict.name, e)
                    self.engine.redo_policy_verdict(verdict)

        await asyncio.gather(*(one(v) for v in verdicts))
