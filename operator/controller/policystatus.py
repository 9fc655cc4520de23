"""Status on the cluster-wide policy objects (AdminNetworkPolicy,
BaselineAdminNetworkPolicy, ClusterNetworkPolicy): whether tailor took the
object in, and why not when it did not — what `kubectl get anp,cnp -o yaml`
and `kubectl describe` show.

Called by app.Controller, which runs Writer.run() as a task in the kopf
loop; the engine records each policy's verdict as its events are translated
(events.World.policy_verdicts) and wakes the writer. The API defines only
`status.conditions` and leaves their types to implementations; tailor writes
one condition of its own type, beside whatever conditions others keep there:

    type: tailor.dev/Accepted
    status: "True"  reason: Accepted           message: the tier and priority it is in force at
    status: "True"  reason: PartiallyEnforced  message: ... and what is enforced otherwise
                                               than written (domainNames peers)
    status: "False" reason: Invalid            message: the field and the problem (the
                                               object's previous version, if any, stays in force)

with `observedGeneration` the object's metadata.generation, and
`lastTransitionTime` kept while the condition's status stays the same. A
policy's status is written only when its verdict (uid, generation, outcome)
changes, so the status patch's own watch event writes nothing. A write that
fails is tried again after a backoff; one the API refuses for good (403,
422) is logged and dropped.
"""
from __future__ import annotations

import asyncio
import datetime
import logging

from tailor.operator.controller import events
from tailor.operator.controller.kube import ApiError, KubeClient

log = logging.getLogger("tailor.operator.policystatus")
CONDITION = "tailor.dev/Accepted"
MAX_MESSAGE = 32768          # metav1.Condition's limit
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
FINAL = (403, 422)           # the API will refuse this write whatever we retry


def path(kind: str, name: str, status: bool = True) -> str:
    group, version, plural = events.RESOURCES[kind]
    return f"/apis/{group}/{version}/{plural}/{name}" + ("/status" if status else "")


def condition(verdict: events.PolicyVerdict, now: str, previous: dict | None = None) -> dict:
    """Our condition for `verdict`; `previous`, our condition as the object
    holds it, keeps its lastTransitionTime while the status is unchanged."""
    state = "False" if verdict.error else "True"
    reason = "Invalid" if verdict.error else "PartiallyEnforced" if verdict.partial else "Accepted"
    since = previous.get("lastTransitionTime") if previous and previous.get("status") == state else None
    out = {"type": CONDITION, "status": state, "reason": reason,
           "message": (verdict.error or verdict.summary)[:MAX_MESSAGE], "lastTransitionTime": since or now}
    if verdict.generation is not None:
        out["observedGeneration"] = verdict.generation
    return out


def status(verdict: events.PolicyVerdict, now: str, conditions: list | None = None) -> dict:
    """The status patch: the object's other conditions kept, ours replaced
    (a merge patch replaces the whole list)."""
    others = [c for c in conditions or [] if isinstance(c, dict) and c.get("type") != CONDITION]
    ours = next((c for c in conditions or [] if isinstance(c, dict) and c.get("type") == CONDITION), None)
    return {"status": {"conditions": others + [condition(verdict, now, ours)]}}


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
        failures = 0
        while True:
            try:
                retry = await self.flush()
            except Exception:   # noqa: BLE001 - the writer must outlive one bad batch
                log.exception("writing policy status failed")
                retry = True
            failures = failures + 1 if retry else 0
            if retry:
                # Something is to be written again: come back after a backoff
                # even if no new verdict wakes us.
                await asyncio.sleep(min(RETRY_FIRST * 2 ** (failures - 1), RETRY_MAX))
                continue
            await self._wake.wait()
            self._wake.clear()

    async def flush(self) -> bool:
        """Write every changed verdict; True when some are to be tried again."""
        verdicts = self.engine.take_policy_verdicts()
        if not verdicts:
            return False
        gate = asyncio.Semaphore(self.concurrency)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        redo = []

        async def one(verdict: events.PolicyVerdict) -> None:
            async with gate:
                try:
                    current = await self.kube.get(path(verdict.kind, verdict.name, status=False))
                    conditions = (current.get("status") or {}).get("conditions")
                    await self.kube.merge_patch(path(verdict.kind, verdict.name),
                                                status(verdict, now, conditions))
                    self.written += 1
                except ApiError as e:
                    if e.status == 404:
                        return                 # deleted meanwhile: nothing to say
                    log.warning("status of %s %s: %s", verdict.kind, verdict.name, e)
                    if e.status not in FINAL:
                        redo.append(verdict)
                except (OSError, asyncio.TimeoutError, ValueError) as e:
                    log.warning("status of %s %s: %s", verdict.kind, verdict.name, e)
                    redo.append(verdict)

        await asyncio.gather(*(one(v) for v in verdicts))
        for verdict in redo:
            self.engine.redo_policy_verdict(verdict)
        return bool(redo)
