"""The API side of the operator's test world (operator_world.World): the
lab's API server (tailor.lab.apiserver: kmock plus what kopf and kubectl
need) over real HTTP, and synchronous calls to it from the tests.

  - Kube: the emulator on its own event loop in a background thread of this
    process; it can drop every watch (as an API server restart would) and
    add the admin-policy CRDs later;
  - RemoteKube: the same emulator in a child process (`serve`), for the
    benchmarks; creates, patches, deletes and reads only.

Also the two helpers the whole world shares, since RemoteKube needs both:
`free_port()` and `eventually()`.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import kmock
from tailor.lab.apiserver import ApiError, Client, Emulator, declare_all, resources
from tailor.lab.control import objects
from tailor.operator.cluster import manifests

TIMEOUT = 30.0


PATHS = {**objects.PATHS, "Lease": "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"}


def url(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    base = PATHS[kind].format(ns=namespace or "default")
    return f"{base}/{name}" if name else base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(check, timeout: float = TIMEOUT, interval: float = 0.05, what: str = ""):
    """Call `check` until it returns something truthy; its last value or
    exception is in the failure."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = check()
            if last:
                return last
        except AssertionError as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check}: {last}")
        time.sleep(interval)


class Kube:
    """kmock on a background loop; synchronous calls from the tests."""

    def __init__(self, admin_policies: bool = True, port: int | None = None):
        self.port = port
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._admin = admin_policies
        self.blocked: asyncio.Event | None = None    # set: list/watch requests hang
        self.thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.open = asyncio.Event()
        self.open.set()
        async with Emulator() as k, kmock.Server(k, port=self.port) as srv:
            declare_all(k, admin_policies=self._admin)
            # While `open` is clear, list and watch requests wait (a dropped
            # API connection); then they fall through to the emulator.
            k[kmock.action.LIST] ** 100 << self._gate
            k[kmock.action.WATCH] ** 100 << self._gate
            self.emulator, self.server = k, srv
            self.url = str(srv.url).rstrip("/")
            self.client = srv.client
            self._ready.set()
            await self._stop.wait()

    async def _gate(self, request):
        await self.open.wait()
        raise NotImplementedError    # not ours to answer: the emulator's fallbacks do

    @staticmethod
    def declare_admin_policies(k) -> None:
        for resource in resources.ADMIN_POLICIES:
            k.declare(resource)

    def call(self, coro, timeout: float = TIMEOUT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)

    # -- the API, synchronously ---------------------------------------------------------

    async def _request(self, method: str, path: str, body=None, content_type="application/json"):
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if body is not None else {}
        async with self.client.request(method, path, headers=headers, data=data) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise AssertionError(f"{method} {path}: {resp.status} {data.get('message')}")
            return data

    def create(self, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        namespace = meta.get("namespace") if obj["kind"] not in manifests.CLUSTER_SCOPED else None
        if obj["kind"] not in manifests.CLUSTER_SCOPED:
            meta.setdefault("namespace", "default")
            namespace = meta["namespace"]
        return self.call(self._request("POST", url(obj["kind"], namespace), obj))

    def patch(self, kind: str, namespace: str | None, name: str, patch: dict) -> dict:
        return self.call(self._request("PATCH", url(kind, namespace, name), patch,
                                       "application/merge-patch+json"))

    def delete(self, kind: str, namespace: str | None, name: str) -> dict:
        return self.call(self._request("DELETE", url(kind, namespace, name)))

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return self.call(self._request("GET", url(kind, namespace, name)))
        except AssertionError:
            return None

    def podprograms(self) -> dict[str, dict]:
        """{"ns/name": PodProgram} of every PodProgram."""
        found = self.call(self._request("GET", "/apis/tailor.dev/v1alpha1/podprograms"))
        return {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o for o in found["items"]}

    def events(self, namespace: str) -> list[dict]:
        return self.call(self._request("GET", f"/api/v1/namespaces/{namespace}/events"))["items"]

    def drop_watches(self) -> None:
        """Close the API's side of every open watch stream (as an API server
        restart or a load balancer would) and hold list/watch requests until
        restore_watches()."""
        async def drop():
            self.open.clear()
            for bus in self.emulator._buses.values():
                # A 410 Gone ends a stream; kopf starts a new list + watch.
                await bus.put({"type": "ERROR", "object": {"code": 410, "reason": "Expired",
                                                           "message": "watch dropped by the test"}})
        self.call(drop())

    def restore_watches(self) -> None:
        self.loop.call_soon_threadsafe(self.open.set)

    def add_admin_policy_crds(self) -> None:
        """The ANP/BANP CRDs appear: declare the resources, then create the
        CRD objects kopf watches for."""
        async def add():
            self.declare_admin_policies(self.emulator)
            for resource in resources.ADMIN_POLICIES:
                await self._request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", {
                    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                    "metadata": {"name": f"{resource.plural}.{resource.group}"},
                    "spec": {"group": resource.group, "scope": "Cluster",
                             "names": {"plural": resource.plural, "kind": resource.kind},
                             "versions": [{"name": resource.version, "served": True, "storage": True}]}})
        self.call(add())


class RemoteKube:
    """The same emulator in a child process (benchmarks: kmock's own CPU
    time then does not compete with the operator for this process's GIL).
    Creates, patches, deletes and reads; no watch drops."""

    def __init__(self, admin_policies: bool = True):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.client = Client(self.url)
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
                                   f"import operator_kube; operator_kube.serve({port}, {admin_policies})"])
        eventually(self._up, 20, what="the API server process starts")

    def _up(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/version", timeout=1).read()
            return True
        except OSError:
            return False

    def _request(self, method: str, path: str, body=None, content_type="application/json"):
        try:
            return self.client.request(method, path, body, content_type)
        except ApiError as e:
            raise AssertionError(str(e)) from None

    def create(self, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        namespace = None
        if obj["kind"] not in manifests.CLUSTER_SCOPED:
            meta.setdefault("namespace", "default")
            namespace = meta["namespace"]
        return self._request("POST", url(obj["kind"], namespace), obj)

    def patch(self, kind: str, namespace: str | None, name: str, patch: dict) -> dict:
        return self._request("PATCH", url(kind, namespace, name), patch, "application/merge-patch+json")

    def delete(self, kind: str, namespace: str | None, name: str) -> dict:
        return self._request("DELETE", url(kind, namespace, name))

    def podprograms(self) -> dict[str, dict]:
        found = self._request("GET", "/apis/tailor.dev/v1alpha1/podprograms")
        return {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o for o in found["items"]}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def serve(port: int, admin_policies: bool = True) -> None:
    """RemoteKube's child process: the emulator until killed."""
    kube = Kube(admin_policies=admin_policies, port=port)
    kube.thread.join()
