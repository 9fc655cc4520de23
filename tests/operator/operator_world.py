"""A small cluster for the operator's end-to-end tests, all in-process:

  - Kube: the lab's API server over real HTTP on its own event loop in a
    background thread, called synchronously (operator_kube.py, which also
    has RemoteKube: the same in a child process, for the benchmarks);
  - Agent: one node agent per node with the emulated backend, wired through
    the real CNI path and counting what it is sent (operator_agents.py);
  - Operator: `app.run()` — kopf, the Lease, the handlers, the pusher, the
    reconcile loop, the ProgramSource — on its own loop in a thread;
  - World: the three together, the objects a test created, and the waits
    and counts the tests assert on.

Node n1's agent is found through a DaemonSet-style agent pod (hostNetwork,
container port `grpc`), the others through the node annotation
`tailor.dev/agent-address` (a unix socket).

Used by test_operator_e2e.py and benchmarks/operator_sync.py
(`from operator_world import World, eventually`).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import tempfile
import threading

import kopf
from operator_agents import Agent
from operator_kube import TIMEOUT, Kube, RemoteKube, eventually, free_port
from tailor.lab.control import operated
from tailor.operator.cluster import manifests
from tailor.operator.cluster.state import ClusterState
from tailor.operator.controller import app
from tailor.operator.controller import config as config_


# What CountingCore counts: per pod, and (the group updates) per node.
COUNTS = ("applies", "reloads", "map_updates", "removes", "group_updates", "full_group_updates")


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
                                  "labels": {"app.kubernetes.io/name": "tailor", "app.kubernetes.io/component": "agent"}},
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
        out = {name: collections.Counter() for name in COUNTS}
        for agent in self.agents.values():
            for name, counter in out.items():
                counter.update(getattr(agent.core, name))
        return out

    def reset_counts(self) -> None:
        for agent in self.agents.values():
            for name in COUNTS:
                getattr(agent.core, name).clear()
            agent.core.group_changes.clear()

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
