"""A small cluster for the operator's end-to-end tests, all in-process:

  - Kube: the lab's API server (tailor.datapath.lab.apiserver: kmock plus
    what kopf and kubectl need) over real HTTP, on its own event loop in a
    background thread; the tests call it synchronously;
  - Agent: one node agent per node (agent core + emulated backend + the
    gRPC Agent service), asking the operator's ProgramSource at "CNI ADD"
    exactly as the real CNI path does (`wire` hands the core a synthetic
    endpoint through `attach_pod`, as the emulated lab does), counting the
    Apply / UpdateMaps / Remove calls per pod;
  - Operator: `app.run()` — kopf, the Lease, the handlers, the pusher, the
    reconcile loop, the ProgramSource — on its own loop in a thread.

Node n1's agent is found through a DaemonSet-style agent pod (hostNetwork,
container port `grpc`), the others through the node annotation
`tailor.dev/agent-address` (a unix socket).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import grpc
import kmock
import kopf
from tailor.datapath.agent import core as core_
from tailor.datapath.agent import server as server_
from tailor.datapath.agent import source as source_
from tailor.datapath.agent.api import agent_pb2_grpc as pb_grpc
from tailor.datapath.agent.backends.emulated import EmulatedBackend
from tailor.datapath.lab import emulated as lab_emulated
from tailor.datapath.lab import kube_resources, objects, operated
from tailor.datapath.lab.apiserver import ApiError, Client, Emulator, declare_all
from tailor.operator.cluster import manifests
from tailor.operator.cluster.state import ClusterState
from tailor.operator.controller import app
from tailor.operator.controller import config as config_

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
        for resource in kube_resources.ADMIN_POLICIES:
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
            for resource in kube_resources.ADMIN_POLICIES:
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
                                   f"import operator_world; operator_world.serve({port}, {admin_policies})"])
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


# --- agents -----------------------------------------------------------------------------

class CountingCore(core_.Core):
    """The agent core, counting what the operator sends per pod."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.applies: collections.Counter = collections.Counter()
        self.reloads: collections.Counter = collections.Counter()    # applies that changed something
        self.map_updates: collections.Counter = collections.Counter()
        self.removes: collections.Counter = collections.Counter()

    def apply(self, received):
        self.applies[received.key] += 1
        status, changed = super().apply(received)
        if changed:
            self.reloads[received.key] += 1
        return status, changed

    def update_maps(self, namespace, name, uid, maps):
        self.map_updates[f"{namespace}/{name}"] += 1
        return super().update_maps(namespace, name, uid, maps)

    def remove(self, namespace, name, uid=""):
        self.removes[f"{namespace}/{name}"] += 1
        return super().remove(namespace, name, uid)


@dataclasses.dataclass
class Agent:
    node: str
    listen: str
    source: str
    core: CountingCore | None = None
    server: grpc.Server | None = None
    program_source: source_.GrpcProgramSource | None = None
    wired: dict = dataclasses.field(default_factory=dict)    # "ns/name" -> (uid, addresses)

    def start(self) -> Agent:
        self.program_source = source_.GrpcProgramSource(self.source)
        self.core = CountingCore(self.node, EmulatedBackend(self.node), program_for=self.program_source,
                                 attach_timeout=15.0)
        self.core.start()
        self.server = server_.serve(self.core, self.listen, workers=8)
        return self

    def stop(self) -> None:
        self.server.stop(0.5).wait()
        self.program_source.close()
        self.core.stop()

    def restart(self) -> Agent:
        """A new agent process with nothing in it (emulated: no pinned state)."""
        self.stop()
        return self.start()

    def wire(self, namespace: str, name: str, uid: str, addresses: list[str]) -> None:
        """The CNI ADD: returns once the pod's program is attached."""
        container = f"{namespace}-{name}-{uid[:8]}"
        self.core.attach_pod({"namespace": namespace, "name": name, "uid": uid},
                             lab_emulated.endpoint(container, addresses))
        self.wired[f"{namespace}/{name}"] = (uid, tuple(addresses))

    def rewire(self) -> None:
        """Wire again every pod wired before (after restart())."""
        for key, (uid, addresses) in list(self.wired.items()):
            namespace, name = key.split("/")
            self.wire(namespace, name, uid, list(addresses))

    def stub(self) -> pb_grpc.AgentStub:
        return pb_grpc.AgentStub(grpc.insecure_channel(self.listen))

    def held(self) -> dict[str, tuple[str, str]]:
        """{"ns/name": (hash, state)} as List reports."""
        return {s.key: (s.hash, s.state.value) for s in self.core.list()}


# --- the operator -----------------------------------------------------------------------

class Operator:
    """app.run() on its own loop in a thread."""

    def __init__(self, kube_url: str, config: config_.Config):
        self.config = config
        self.stop_flag = threading.Event()
        self.controllers: list = []
        self.result = None
        self.error = None
        self._url = kube_url
        self.thread = threading.Thread(target=self._run, name="operator", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        info = kopf.ConnectionInfo(server=self._url, insecure=True)
        try:
            self.result = asyncio.run(app.run(self.config, credentials=info, stop_flag=self.stop_flag,
                                              controllers=self.controllers))
        except BaseException as e:   # noqa: BLE001 - reported by the test
            self.error = e

    @property
    def controller(self) -> app.Controller:
        eventually(lambda: self.controllers and self.controllers[0].started.is_set() or self.error,
                   what="the operator starts")
        if self.error:
            raise self.error
        return self.controllers[0]

    @property
    def engine(self):
        return self.controller.engine

    def stop(self, timeout: float = 20.0) -> None:
        self.stop_flag.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the operator did not stop"


class World:
    """Kube + agents + operator, and the objects created so far."""

    NODES = ("n1", "n2", "n3")

    def __init__(self, tmp: str, *, admin_policies: bool = True, reconcile_seconds: float = 0.5,
                 lease_seconds: float = 4.0, remote_kube: bool = False):
        self.tmp = tmp
        self.kube = RemoteKube(admin_policies) if remote_kube else Kube(admin_policies=admin_policies)
        self.source = f"127.0.0.1:{free_port()}"
        self.agents: dict[str, Agent] = {}
        self.docs: dict[tuple[str, str | None, str], dict] = {}   # what the test created
        self.addresses: dict[str, list[str]] = {}                 # "ns/name" -> addresses
        self.uids: dict[str, str] = {}
        self.node_of: dict[str, str] = {}
        self._next_ip = collections.Counter()
        self.config = config_.Config(
            source_listen=self.source, lease_name="tailor-operator", lease_namespace="default",
            lease_seconds=lease_seconds, lease_renew_seconds=lease_seconds / 4,
            reconcile_seconds=reconcile_seconds, resync_seconds=1.0, push_timeout=5.0,
            retry_first=0.05, retry_max=0.5,
            watch_reconnect_backoff=0.1, watch_server_timeout=60, watch_client_timeout=90.0)
        self.operators: list[Operator] = []
        for i, node in enumerate(self.NODES, 1):
            if node == "n1":
                listen = f"127.0.0.1:{free_port()}"
            else:
                listen = f"unix:{os.path.join(tmp, node + '.sock')}"
            self.agents[node] = Agent(node, listen, self.source).start()
            annotations = {} if node == "n1" else {"tailor.dev/agent-address": listen}
            self.create({"apiVersion": "v1", "kind": "Node",
                         "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node},
                                      "annotations": annotations},
                         "status": {"addresses": [{"type": "InternalIP", "address": f"172.18.0.{i + 1}"}]}})
        self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tailor-system"}})
        port = int(self.agents["n1"].listen.rsplit(":", 1)[1])
        self.create({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "tailor-agent-n1", "namespace": "tailor-system",
                                  "labels": {"app.kubernetes.io/name": "tailor-agent"}},
                     "spec": {"nodeName": "n1", "hostNetwork": True,
                              "containers": [{"name": "agent", "image": "tailor",
                                              "ports": [{"name": "grpc", "containerPort": port}]}]},
                     "status": {"phase": "Running", "podIP": "127.0.0.1",
                                "podIPs": [{"ip": "127.0.0.1"}]}})

    # -- life cycle ----------------------------------------------------------------------

    def start_operator(self, **changes) -> Operator:
        changes.setdefault("identity", f"operator-{len(self.operators) + 1}")
        changes.setdefault("metrics_port", free_port())
        config = dataclasses.replace(self.config, **changes)
        operator = Operator(self.kube.url, config)
        self.operators.append(operator)
        return operator

    @property
    def operator(self) -> Operator:
        return self.operators[-1]

    def close(self) -> None:
        for operator in self.operators:
            if operator.thread.is_alive():
                with contextlib.suppress(AssertionError):
                    operator.stop()
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
        self.kube.stop()

    # -- objects -------------------------------------------------------------------------

    def create(self, obj: dict) -> dict:
        made = self.kube.create(obj)
        meta = made["metadata"]
        key = (made["kind"], meta.get("namespace") if made["kind"] not in manifests.CLUSTER_SCOPED
               else None, meta["name"])
        self.docs[key] = made
        return made

    def patch(self, kind: str, namespace: str | None, name: str, patch: dict) -> dict:
        made = self.kube.patch(kind, namespace, name, patch)
        self.docs[(kind, namespace, name)] = made
        return made

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        self.kube.delete(kind, namespace, name)
        self.docs.pop((kind, namespace, name), None)
        if kind == "Pod":
            key = f"{namespace}/{name}"
            self.addresses.pop(key, None)
            for agent in self.agents.values():
                agent.wired.pop(key, None)

    def create_pod(self, doc: dict, node: str, wire: bool = True) -> str:
        """Create a pod scheduled on `node` (no addresses yet), then run its
        CNI ADD on the node's agent and report its IP in its status, as the
        kubelet would. Returns "ns/name"."""
        doc = {**doc, "metadata": dict(doc["metadata"]), "spec": {**doc["spec"], "nodeName": node}}
        doc.pop("status", None)
        made = self.create(doc)
        key = f"{made['metadata']['namespace']}/{made['metadata']['name']}"
        self.uids[key] = made["metadata"]["uid"]
        self.node_of[key] = node
        if wire:
            self.wire(key)
        return key

    def wire(self, key: str) -> None:
        node = self.node_of[key]
        index = self.NODES.index(node) + 1
        self._next_ip[node] += 1
        addresses = [f"10.244.{index}.{self._next_ip[node] + 1}"]
        namespace, name = key.split("/")
        self.agents[node].wire(namespace, name, self.uids[key], addresses)
        self.addresses[key] = addresses
        self.patch("Pod", namespace, name, {"status": {"phase": "Running", "podIP": addresses[0],
                                                       "podIPs": [{"ip": a} for a in addresses]}})

    def model(self) -> ClusterState:
        """The ClusterState of what the test created (pods with their addresses)."""
        state = ClusterState()
        docs = [d for (kind, ns, name), d in self.docs.items()
                if not (kind == "Pod" and f"{ns}/{name}" not in self.addresses)
                and not (kind == "Pod" and d.get("spec", {}).get("hostNetwork"))]
        manifests.apply(state, [("test", d) for d in docs])
        return state

    # -- waiting and looking -------------------------------------------------------------

    def settled(self, timeout: float = TIMEOUT) -> None:
        """The operator has nothing left to do and every agent holds what it should."""
        engine = self.operator.engine

        def check():
            if not engine.idle():
                return False
            want = {}
            for ref, pod in engine.world.state.pods.items():
                sent = engine.desired.last_hash(pod.ref)
                if sent is not None:
                    want[f"{ref[0]}/{ref[1]}"] = (pod.node, sent)
            for key, (node, hash_) in want.items():
                if self.agents[node].held().get(key, (None,))[0] != hash_:
                    return False
            return engine.idle()
        eventually(check, timeout, what="the operator settles")

    def metrics(self) -> dict[str, float]:
        """The operator's /metrics, {sample name with labels: value}."""
        return operated.read_metrics(self.operator.config.metrics_port)

    def counts(self) -> dict[str, collections.Counter]:
        out = {"applies": collections.Counter(), "reloads": collections.Counter(),
               "map_updates": collections.Counter(), "removes": collections.Counter()}
        for agent in self.agents.values():
            for name, counter in out.items():
                counter.update(getattr(agent.core, name))
        return out

    def reset_counts(self) -> None:
        for agent in self.agents.values():
            for name in ("applies", "reloads", "map_updates", "removes"):
                getattr(agent.core, name).clear()

    def trace(self, src_key: str, dst_key: str, protocol: str, port: int) -> bool:
        """What the agents' Trace answers for a new connection src -> dst:
        the source's agent runs the source's program (and the destination's
        when both are on its node), else the destination's agent runs the
        destination's."""
        src_node, dst_node = self.node_of[src_key], self.node_of[dst_key]
        first = self.agents[src_node].core.trace(src_key, self.addresses[dst_key][0], protocol, 0, port)
        if not first.allowed or src_node == dst_node:
            return first.allowed
        return self.agents[dst_node].core.trace(self.addresses[src_key][0], dst_key, protocol, 0,
                                                port).allowed


def tmpdir() -> str:
    return tempfile.mkdtemp(prefix="tailor-op-")
