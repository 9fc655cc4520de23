"""The periodic resync: list every watched kind and delete from the model
what the API no longer has.

Started by app.Controller as a task in kopf's loop. kopf turns watch events
into handler calls, and after a watch is dropped and restored it lists the
objects again — but an object deleted while the watch was down is simply
not listed, and no handler hears of it (kopf has no "gone since the last
listing"). Without this, a NetworkPolicy deleted during an API outage would
stay in force (fail closed: it only ever denies more than it should), and a
deleted pod's address would stay in its peers' maps until it is reused.

Only objects the model held *before* the list was asked are candidates, so
an object created meanwhile (in the list or not) is never deleted by it.
"""
from __future__ import annotations

import asyncio
import logging

from tailor.operator.controller import engine as engine_
from tailor.operator.controller import events
from tailor.operator.controller.kube import ApiError, KubeClient

log = logging.getLogger("tailor.operator.resync")
PAGE = 500


def path(kind: str) -> str:
    group, version, plural = events.RESOURCES[kind]
    return f"/apis/{group}/{version}/{plural}" if group else f"/api/{version}/{plural}"


async def listed(kube: KubeClient, kind: str) -> set[tuple[str | None, str]] | None:
    """(namespace, name) of every object of `kind`; None when the API does
    not serve the kind (an optional CRD that is not installed)."""
    found: set[tuple[str | None, str]] = set()
    token = ""
    while True:
        query = f"?limit={PAGE}" + (f"&continue={token}" if token else "")
        try:
            page = await kube.get(path(kind) + query)
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        for item in page.get("items") or []:
            meta = item.get("metadata") or {}
            _, namespace, name = events.object_key(kind, {"metadata": meta})
            found.add((namespace, name))
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return found


async def once(kube: KubeClient, engine: engine_.Engine) -> int:
    """One pass over every kind; returns how many missed deletions it applied."""
    if not engine.synced:
        return 0
    missed = 0
    for kind in events.KINDS:
        before = engine.known(kind)
        try:
            present = await listed(kube, kind)
        except ApiError as e:
            log.info("resync of %s skipped: %s", kind, e)
            continue
        if present is None:
            continue
        gone = sorted(before - present, key=str)
        if gone:
            log.warning("%d %s deletions were missed (watch interrupted?): %s", len(gone), kind,
                        ", ".join(f"{ns}/{n}" if ns else n for ns, n in gone[:10]))
            missed += engine.vanished(kind, gone)
    return missed


async def run(kube: KubeClient, engine: engine_.Engine, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await once(kube, engine)
        except asyncio.CancelledError:
            raise
        except Exception:   # noqa: BLE001 - the loop must outlive one bad pass
            log.exception("resync failed")
