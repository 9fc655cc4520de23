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
from tailor.operator import affected, desired
from tailor.operator.compiler import mapdata, program, resolve

log = logging.getLogger("tailor.lab.controller")
SERVICE = "tailor.lab.v1.Controller"
PUSH_TIMEOUT = 10.0
MAX_RETRIES = 25
RETRY_SECONDS = 0.2


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
        self.desired = desired.Desired()
        self.uids: dict[str, str] = {}        # pod ref -> uid of the wired pod
        self.pending: set[str] = set()        # pods a change may have affected
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.generation = 0       # bumped by every registration
        self.pushed_generation = 0
        self.retries = 0          # consecutive push rounds with a failure
        self.counters = {"programs": 0, "applied": 0, "updated": 0, "failed": 0}
        self.failures: list[str] = []
        self._channels: dict[str, grpc.Channel] = {}

    # -- registrations ------------------------------------------------------------

    def register(self, uid: str, namespace: str, name: str, node: str,
                 addresses: list[str]) -> pb.PodProgram:
        """A pod wired on `node` with `addresses` -> its PodProgram message.
        The pods its arrival affects are queued for the pusher."""
        with self.lock:
            declared = self.declared.get(uid) or self._by_name(namespace, name)
            if declared is None:
                raise KeyError(f"pod {namespace}/{name} (uid {uid}) is not in lab {self.lab['name']}")
            if node not in self.agents:
                raise KeyError(f"node {node} is not in lab {self.lab['name']}")
            ips = tuple(a.split("/")[0] for a in addresses)
            old = self.state.pods.get(declared.key)
            pod = self.state.add_pod(dataclasses.replace(declared, node=node, ips=ips))
            self.uids[pod.ref] = uid
            spec = resolve.resolve(self.state, pod)
            programs = program.compile_pod(spec)
            entries = mapdata.entries(spec)
            self.desired.given(pod.ref, node, programs, entries)
            self.pending |= affected.by_pod(self.state, old, pod) - {pod.ref}
            self.counters["programs"] += 1
            self.generation += 1
            self.changed.notify_all()
            return wire.to_proto(pod.namespace, pod.name, uid, programs, entries, pod.ips)

    def _by_name(self, namespace: str, name: str):
        found = [p for p in self.declared.values() if p.namespace == namespace and p.name == name]
        return found[0] if len(found) == 1 else None

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
                threading.Event().wait(RETRY_SECONDS)

    def _plan_pushes(self) -> list:
        """Under the lock: (node, rpc, request, push) for each affected pod
        whose agent holds something else than it should."""
        work = []
        for push in self.desired.plan(self.state, self.pending):
            uid = self.uids[push.pod]
            pod = self.state.find_pod(push.pod)
            if push.action == desired.APPLY and push.programs is not None:
                message = wire.to_proto(pod.namespace, pod.name, uid, push.programs, push.entries, pod.ips)
                work.append((push.node, "Apply", pb.ApplyRequest(program=message), push))
            elif push.action == desired.MAPS:
                # Only peers came or went: the maps whose contents differ.
                changed = desired.changed_maps(self.desired.last_entries(push.pod), push.entries)
                maps = [pb.MapContents(direction=d, map=m, entries=[pb.MapEntry(key=k, value=v)
                                                                    for k, v in sorted(table.items())])
                        for d, tables in sorted(changed.items()) for m, table in sorted(tables.items())]
                ref = pb.PodRef(namespace=pod.namespace, name=pod.name, uid=uid)
                work.append((push.node, "UpdateMaps", pb.UpdateMapsRequest(pod=ref, maps=maps), push))
        self.pending = set()
        return work

    def _push(self, node: str, kind: str, request, push) -> bool:
        stub = pb_grpc.AgentStub(self._channel(node))
        pod = request.program.pod if kind == "Apply" else request.pod
        try:
            getattr(stub, kind)(request, timeout=PUSH_TIMEOUT)
        except grpc.RpcError as e:
            self.counters["failed"] += 1
            text = f"{kind} {pod.namespace}/{pod.name} on {node}: {e.code().name}: {e.details()}"
            self.failures.append(text)
            log.error("%s", text)
            with self.lock:
                # Plan this pod again on the next round.
                self.desired.forget(push.pod)
                self.pending.add(push.pod)
            return False
        with self.lock:
            self.desired.sent(push)
            self.counters["applied" if kind == "Apply" else "updated"] += 1
        log.info("%s %s/%s on %s", kind, pod.namespace, pod.name, node)
        return True

    def _channel(self, node: str) -> grpc.Channel:
        if node not in self._channels:
            self._channels[node] = grpc.insecure_channel(f"unix:{self.agents[node]}")
        return self._channels[node]

    def sync(self, timeout: float = 60.0) -> dict:
        with self.lock:
            target = self.generation
            done = lambda: self.pushed_generation >= max(target, self.generation if self.retries else 0)
            self.changed.wait_for(done, timeout)
            return {"synced": done(), "pods": len(self.uids),
                    **self.counters, "failures": self.failures[-10:]}


class ProgramSource(pb_grpc.ProgramSourceServicer):
    def __init__(self, controller: Controller):
        self.controller = controller

    def ProgramFor(self, request, context):
        try:
            message = self.controller.register(request.pod.uid, request.pod.namespace,
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
