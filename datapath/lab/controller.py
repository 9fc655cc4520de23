"""The lab's controller: `python3 -m tailor.datapath.lab.controller --state FILE`.

Started by lab.up (processes.start) as a background process; it plays the
operator for the lab. It holds the ClusterState read from the lab's
manifests and serves, on the unix socket `<run_dir>/controller.sock`:

- `tailor.agent.v1.ProgramSource/ProgramFor(pod, node, addresses)`: an agent
  asks during a CNI ADD. The pod joins the state on that node with the
  addresses the CNI's IPAM gave it; its programs are compiled and returned.
  (The emulated lab's nodes ask the same way; see lab/emulated.py.)
- `tailor.lab.v1.Controller/Sync` (JSON): waits until every change so far
  has been pushed and returns the push counters (lab.up waits on it).

A pod exists in the controller's state only once it is wired, so pods that
do not exist yet are nobody's peers. After each change a single pusher
thread recomputes the other registered pods and pushes to their agents:
`UpdateMaps` when only their map contents changed (a new pod's address
joined their peer groups), `Apply` when their program hash changed. The last
pushed hash and map contents per pod are cached, so unchanged pods are not
pushed again. The pusher never runs inside ProgramFor: the asking agent is
in the middle of a CNI ADD and must get its answer first.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from concurrent import futures

import grpc

from tailor.datapath.agent import wire
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.api import agent_pb2_grpc as pb_grpc
from tailor.datapath.lab import state as state_
from tailor.operator.cluster import manifests
from tailor.operator.cluster.objects import Node
from tailor.operator.compiler import mapdata, program, resolve

log = logging.getLogger("tailor.lab.controller")
SERVICE = "tailor.lab.v1.Controller"
PUSH_TIMEOUT = 10.0
MAX_RETRIES = 25
RETRY_SECONDS = 0.2


@dataclasses.dataclass
class Registered:
    """A wired pod and what its agent was last given."""
    uid: str
    node: str
    spec: object = None           # the ProgramSpec the programs were compiled from
    programs: object = None
    hash: str = ""                # last pushed (or returned) program hash
    entries: dict = dataclasses.field(default_factory=dict)   # last pushed map contents


class Controller:
    def __init__(self, lab: dict):
        self.lab = lab
        self.state = manifests.load(lab["manifests"])
        self.declared = {}       # uid -> the pod as declared (no node, no addresses)
        by_ref = {p.ref: p for p in self.state.sorted_pods()}
        for entry in lab["pods"]:
            self.declared[entry["uid"]] = dataclasses.replace(by_ref[entry["ref"]], ips=())
        for pod in list(self.state.pods.values()):
            self.state.delete(pod.kind, pod.namespace, pod.name)
        for node in lab["nodes"]:
            declared = self.state.nodes.get(node["name"])
            labels = dict(declared.labels) if declared else {"kubernetes.io/hostname": node["name"]}
            self.state.add_node(Node(node["name"], labels,
                                     tuple(a.split("/")[0] for a in node["underlay"])))
        self.agents = {n["name"]: n["agent_socket"] for n in lab["nodes"]}
        self.pods: dict[tuple, Registered] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.generation = 0       # bumped by every registration
        self.pushed_generation = 0
        self.retries = 0          # consecutive push rounds with a failure
        self.counters = {"programs": 0, "applied": 0, "updated": 0, "unchanged": 0, "failed": 0}
        self.failures: list[str] = []
        self._channels: dict[str, grpc.Channel] = {}

    # -- registrations ------------------------------------------------------------

    def register(self, uid: str, namespace: str, name: str, node: str,
                 addresses: list[str]) -> tuple[pb.PodProgram, Registered]:
        """A pod wired on `node` with `addresses` -> its PodProgram message."""
        with self.lock:
            declared = self.declared.get(uid) or self._by_name(namespace, name)
            if declared is None:
                raise KeyError(f"pod {namespace}/{name} (uid {uid}) is not in lab {self.lab['name']}")
            if node not in self.agents:
                raise KeyError(f"node {node} is not in lab {self.lab['name']}")
            ips = tuple(a.split("/")[0] for a in addresses)
            pod = self.state.add_pod(dataclasses.replace(declared, node=node, ips=ips))
            reg = self.pods.get(pod.key)
            if reg is None or reg.uid != uid or reg.node != node:
                reg = self.pods[pod.key] = Registered(uid, node)
            message, entries = self._compile(pod, reg)
            reg.hash, reg.entries = reg.programs.hash, entries
            self.counters["programs"] += 1
            self.generation += 1
            self.changed.notify_all()
            return message, reg

    def _by_name(self, namespace: str, name: str):
        found = [p for p in self.declared.values() if p.namespace == namespace and p.name == name]
        return found[0] if len(found) == 1 else None

    def _compile(self, pod, reg: Registered):
        """(message, map entries); the programs are recompiled only when the
        spec's logic changed (membership is not part of spec equality)."""
        spec = resolve.resolve(self.state, pod)
        if reg.spec is None or reg.spec != spec:
            reg.programs = program.compile_pod(spec)
        reg.spec = spec
        # Only the maps the programs declare: a peer's IPv6 address is in the
        # membership even when this pod's program has no IPv6 maps.
        declared = {d: {m.name for m in getattr(reg.programs, d).maps} for d in wire.DIRECTIONS}
        entries = {d: {m: t for m, t in tables.items() if m in declared[d]}
                   for d, tables in mapdata.entries(spec).items()}
        message = wire.to_proto(pod.namespace, pod.name, reg.uid, reg.programs, entries, pod.ips)
        return message, entries

    # -- pushing ------------------------------------------------------------------

    def pusher(self) -> None:
        while True:
            with self.lock:
                while self.pushed_generation == self.generation:
                    self.changed.wait()
                generation = self.generation
                work = self._plan_pushes()
            failed = [w for w in work if not self._push(*w)]
            with self.lock:
                self.pushed_generation = generation
                self.retries = self.retries + 1 if failed else 0
                if failed and self.retries <= MAX_RETRIES:
                    # The agent may still be wiring that pod: try again shortly.
                    self.generation += 1
                self.changed.notify_all()
            if failed:
                stop = threading.Event()
                stop.wait(RETRY_SECONDS)

    def _plan_pushes(self) -> list[tuple[str, str, object]]:
        """Under the lock: what each registered pod's agent needs now."""
        work = []
        for key, reg in sorted(self.pods.items()):
            pod = self.state.pods.get(key)
            if pod is None:
                continue
            message, entries = self._compile(pod, reg)
            if reg.programs.hash != reg.hash:
                # Its own logic changed (e.g. a named port now resolves): reload.
                work.append((reg.node, "Apply", pb.ApplyRequest(program=message)))
            elif entries != reg.entries:
                # Only peers came or went: replace the maps whose contents differ.
                maps = [pb.MapContents(direction=d, map=m, entries=[
                            pb.MapEntry(key=k, value=v) for k, v in sorted(entries.get(d, {}).get(m, {}).items())])
                        for d in wire.DIRECTIONS
                        for m in sorted(set(entries.get(d, {})) | set(reg.entries.get(d, {})))
                        if entries.get(d, {}).get(m) != reg.entries.get(d, {}).get(m)]
                work.append((reg.node, "UpdateMaps", pb.UpdateMapsRequest(pod=message.pod, maps=maps)))
            else:
                self.counters["unchanged"] += 1
                continue
            reg.hash, reg.entries = reg.programs.hash, entries
        return work

    def _push(self, node: str, kind: str, request) -> bool:
        stub = pb_grpc.AgentStub(self._channel(node))
        pod = request.program.pod if kind == "Apply" else request.pod
        try:
            getattr(stub, kind)(request, timeout=PUSH_TIMEOUT)
            self.counters["applied" if kind == "Apply" else "updated"] += 1
            log.info("%s %s/%s on %s", kind, pod.namespace, pod.name, node)
            return True
        except grpc.RpcError as e:
            self.counters["failed"] += 1
            text = f"{kind} {pod.namespace}/{pod.name} on {node}: {e.code().name}: {e.details()}"
            self.failures.append(text)
            log.error("%s", text)
            with self.lock:
                # Forget what was pushed, so the next change tries again.
                for reg in self.pods.values():
                    if reg.uid == pod.uid:
                        reg.hash, reg.entries = "", {}
            return False

    def _channel(self, node: str) -> grpc.Channel:
        if node not in self._channels:
            self._channels[node] = grpc.insecure_channel(f"unix:{self.agents[node]}")
        return self._channels[node]

    def sync(self, timeout: float = 60.0) -> dict:
        with self.lock:
            target = self.generation
            done = lambda: self.pushed_generation >= max(target, self.generation if self.retries else 0)
            self.changed.wait_for(done, timeout)
            return {"synced": done(), "pods": len(self.pods),
                    **self.counters, "failures": self.failures[-10:]}


class ProgramSource(pb_grpc.ProgramSourceServicer):
    def __init__(self, controller: Controller):
        self.controller = controller

    def ProgramFor(self, request, context):
        try:
            message, _ = self.controller.register(request.pod.uid, request.pod.namespace,
                                                  request.pod.name, request.node, list(request.addresses))
        except KeyError as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e.args[0]))
        except Exception as e:   # a compile error names the pod; the agent reports it
            log.exception("ProgramFor %s/%s", request.pod.namespace, request.pod.name)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        log.info("ProgramFor %s/%s on %s %s", request.pod.namespace, request.pod.name, request.node,
                 ",".join(request.addresses))
        return message


def _json_handlers(controller: Controller):
    def sync(req: dict, context) -> dict:
        return controller.sync(float(req.get("timeout", 60)))

    def handler(fn):
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=lambda b: json.loads(b or b"{}"),
            response_serializer=lambda o: json.dumps(o).encode())

    return grpc.method_handlers_generic_handler(SERVICE, {"Sync": handler(sync)})


def call(socket_path: str, method: str, request: dict, timeout: float = 70.0) -> dict:
    """Called by lab: one JSON call to the controller's lab service."""
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        fn = channel.unary_unary(f"/{SERVICE}/{method}",
                                 request_serializer=lambda o: json.dumps(o).encode(),
                                 response_deserializer=json.loads)
        return fn(request, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tailor.datapath.lab.controller")
    parser.add_argument("--state", required=True, help="the lab's state.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stdout)
    lab = state_.load(args.state)
    controller = Controller(lab)
    socket_path = os.path.join(lab["run_dir"], "controller.sock")
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_ProgramSourceServicer_to_server(ProgramSource(controller), server)
    server.add_generic_rpc_handlers((_json_handlers(controller),))
    server.add_insecure_port(f"unix:{socket_path}")
    threading.Thread(target=controller.pusher, name="pusher", daemon=True).start()
    server.start()
    log.info("lab %s: controller serving on %s (%d pods declared)", lab["name"], socket_path,
             len(controller.declared))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
