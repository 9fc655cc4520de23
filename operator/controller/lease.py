"""One active operator: a coordination.k8s.io/v1 Lease.

Called by app.run() before kopf starts: `acquire()` returns once this
replica holds the Lease; `keep()` renews it until stopped and returns (so
the caller stops the operator) when it could not renew for a whole lease
duration — another replica may take over then, and two replicas must never
push to the agents at once; `release()` hands it over at a graceful
shutdown so the next replica need not wait for the lease to expire.

Every write is a JSON patch whose first operation tests the holder (and the
renew time it read), so two replicas racing for an expired lease cannot
both win: the API server applies a patch whole or not at all.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket

from tailor.operator.controller.kube import ApiError, KubeClient

log = logging.getLogger("tailor.operator.lease")


def micro_time(at: datetime.datetime | None = None) -> str:
    at = at or datetime.datetime.now(datetime.timezone.utc)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Lease:
    def __init__(self, kube: KubeClient, name: str, namespace: str, identity: str | None = None,
                 *, seconds: float = 15.0, renew: float = 5.0, retry: float | None = None):
        self.kube = kube
        self.name = name
        self.namespace = namespace
        self.identity = identity or default_identity()
        self.seconds = seconds
        self.renew = renew
        self.retry = retry if retry is not None else renew
        self.held = False
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"

    async def acquire(self) -> None:
        """Wait until this replica holds the lease."""
        announced = False
        while not await self.try_acquire():
            if not announced:
                log.info("lease %s/%s is held by another operator; waiting", self.namespace, self.name)
                announced = True
            await asyncio.sleep(self.retry)
        log.info("lease %s/%s acquired by %s", self.namespace, self.name, self.identity)

    async def try_acquire(self) -> bool:
        now = datetime.datetime.now(datetime.timezone.utc)
        try:
            lease = await self.kube.get(self.path)
        except ApiError as e:
            if e.status != 404:
                log.warning("lease %s: %s", self.name, e)
                return False
            return await self._create(now)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        renewed = parse_time(spec.get("renewTime"))
        duration = float(spec.get("leaseDurationSeconds") or self.seconds)
        expired = renewed is None or (now - renewed).total_seconds() > duration
        if holder and holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (holder != self.identity)
        # Compare-and-swap: the patch applies only if nobody wrote since our read.
        ops = [{"op": "test", "path": f"/spec/{field}", "value": spec[field]}
               for field in ("holderIdentity", "renewTime") if field in spec]
        ops += [{"op": "add", "path": f"/spec/{field}", "value": value} for field, value in (
            ("holderIdentity", self.identity), ("leaseDurationSeconds", int(self.seconds)),
            ("acquireTime", micro_time(now)), ("renewTime", micro_time(now)),
            ("leaseTransitions", transitions))]
        return await self._claim(self.kube.json_patch(self.path, ops))

    async def _create(self, now: datetime.datetime) -> bool:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.seconds),
                         "acquireTime": micro_time(now), "renewTime": micro_time(now),
                         "leaseTransitions": 0}}
        return await self._claim(
            self.kube.create(f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases", body))

    async def _claim(self, write) -> bool:
        """Await the write that takes the Lease; a conflict means another
        replica won the race (not worth a warning)."""
        try:
            await write
        except ApiError as e:
            if not e.conflict:
                log.warning("lease %s: %s", self.name, e)
            return False
        self.held = True
        return True

    async def renew_once(self) -> bool:
        ops = [{"op": "test", "path": "/spec/holderIdentity", "value": self.identity},
               {"op": "replace", "path": "/spec/renewTime", "value": micro_time()}]
        try:
            await self.kube.json_patch(self.path, ops)
            return True
        except ApiError as e:
            log.warning("lease %s: cannot renew: %s", self.name, e)
            return False

    async def keep(self) -> None:
        """Renew until cancelled; return when the lease is lost (not renewed
        for a whole lease duration, or taken by another holder)."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.renew)
            if await self.renew_once():
                last = loop.time()
            elif loop.time() - last >= self.seconds:
                self.held = False
                log.error("lease %s/%s lost: stopping this operator", self.namespace, self.name)
                return

    async def release(self) -> None:
        """Give the lease up (graceful shutdown): the next holder need not wait."""
        if not self.held:
            return
        self.held = False
        ops = [{"op": "test", "path": "/spec/holderIdentity", "value": self.identity},
               {"op": "replace", "path": "/spec/holderIdentity", "value": ""},
               {"op": "replace", "path": "/spec/renewTime", "value": micro_time(
                   datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc))}]
        try:
            await self.kube.json_patch(self.path, ops)
            log.info("lease %s/%s released", self.namespace, self.name)
        except ApiError as e:
            log.warning("lease %s: cannot release: %s", self.name, e)
