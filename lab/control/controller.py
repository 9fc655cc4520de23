"""The lab's own control plane: `python3 -m tailor.lab.control.controller --state FILE`.

Started by lab.up (processes.controller_argv) for `--control lab`, the
default. It is the operator without Kubernetes: the same engine, hand-off,
pusher and reconciler (operator/controller: engine, source, pusher,
reconcile, agents), fed once with the objects the lab's manifests describe
(control/objects.py: namespaces, nodes annotated with their agent's socket,
policies, pods bound to their nodes) instead of watching an API server. No
kopf, no API, no PodProgram objects; what the operator would write into
PodPrograms is answered by Sync. So the lab has one implementation of
compiling, handing out and pushing programs, whichever control plane it runs.

It serves, on the unix socket `<run_dir>/controller.sock`:

- `tailor.agent.v1.ProgramSource/ProgramFor`: an agent asks during a CNI ADD
  (the emulated lab's nodes when a pod is wired); the operator's answer
  (source.ProgramSource): the pod's addresses join the model, its programs
  are compiled and returned, and the pods the new addresses affect are
  pushed afterwards by the pusher;
- `tailor.lab.v1.Controller/Sync` (JSON `{"timeout": S}`): waits until every
  lab pod's program is Loaded on its agent at the hash the engine wants and
  nothing is pending, then answers `{"synced": true, "pods": N, "pushes":
  {...}}` — the pushes counted by the same names the operator's metrics
  use — or, on timeout, `"synced": false` with the unsettled pods under
  `"failures"`.

The manifests are read once: a change means a new lab (with `--control
operator`, changes go through the API server instead).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

import grpc

from tailor.lab import state as state_
from tailor.lab.control import objects
from tailor.operator.controller import engine as engine_
from tailor.operator.controller import events, source
from tailor.operator.controller.agents import Agents
from tailor.operator.controller.nodetable import NodeTable
from tailor.operator.controller.servicetable import ServiceTable
from tailor.operator.controller.pusher import Pusher
from tailor.operator.controller.reconcile import Reconciler

log = logging.getLogger("tailor.lab.controller")
SERVICE = "tailor.lab.v1.Controller"
SOCKET = "controller.sock"
PUSH_TIMEOUT = 10.0
# The agents start after the controller: a push before they listen fails and
# is retried; a short backoff keeps `lab up` quick once they are there.
RETRY_FIRST, RETRY_MAX = 0.1, 1.0
RECONCILE_SECONDS = 5.0
# Keys of the push counters in Sync's answer, as the operator's metrics name them.
PUSH_COUNTERS = {"applies": "applies", "map_updates": "map updates",
                 "group_updates": "group updates", "handed": "handed",
                 "compiled": "compiled", "repairs": "repairs", "push_failures": "push failures"}


class Controller:
    def __init__(self, lab: dict):
        self.lab = lab
        self.engine = engine_.Engine(retry_first=RETRY_FIRST, retry_max=RETRY_MAX)
        self.agents = Agents(self.engine.agent_address)
        self.nodes = NodeTable(self.engine, self.agents, timeout=PUSH_TIMEOUT)
        self.services = ServiceTable(self.engine, self.agents, timeout=PUSH_TIMEOUT)
        self.reconciler = Reconciler(self.engine, self.agents, interval=RECONCILE_SECONDS,
                                     timeout=PUSH_TIMEOUT, nodes=self.nodes, services=self.services)
        self.pusher = Pusher(self.engine, self.agents, self.reconciler.refresh, timeout=PUSH_TIMEOUT)
        self.engine.on_agents = lambda nodes: (self.reconciler.kick(), self.nodes.kick(),
                                               self.services.kick())
        self.engine.on_nodes = self.nodes.kick
        self.engine.on_services = self.services.kick
        # Set on every view change. Never a lock of ours: the engine calls it
        # under its own lock, and sync() calls into the engine.
        self._changed = threading.Event()
        self.engine.on_views = self._changed.set
        self.server: grpc.Server | None = None

    def start(self, socket_path: str) -> None:
        """Load the lab's objects (the complete listing), then serve and push."""
        listing = [(o["kind"], events.essence(o["kind"], o)) for o in objects.creation_order(self.lab)]
        for error in self.engine.load(listing):
            log.warning("ignored: %s", error)
        self.server, _ = source.serve(self.engine, f"unix:{socket_path}",
                                      lambda node: self.reconciler.kick(),
                                      extra_handlers=(_json_handlers(self),))
        self.pusher.start()
        self.reconciler.start()
        self.nodes.start()
        self.services.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(1).wait()
        self.engine.stop()
        self.pusher.join(PUSH_TIMEOUT + 2)
        self.reconciler.stop()
        self.nodes.stop()
        self.services.stop()
        self.agents.close()

    # -- sync ---------------------------------------------------------------------------

    def unsettled(self) -> list[str]:
        """Why the lab is not settled yet (empty when it is): lab pods whose
        program is not Loaded at the wanted hash, work still pending."""
        why = []
        for pod in self.lab["pods"]:
            view = self.engine.view(f"{pod['namespace']}/{pod['name']}[Pod]")
            key = f"{pod['namespace']}/{pod['name']}"
            if view is None:
                why.append(f"{key}: not compiled yet")
            elif view.state != engine_.LOADED or view.observed_hash != view.hash:
                why.append(f"{key}: {view.state} {view.message}".rstrip())
        if not why and not self.engine.idle():
            why.append("pushes in flight")
        why += [f"node {n}: its agent does not hold the node table yet (routes to other "
                f"nodes' pods)" for n in self.nodes.unsettled()]
        why += [f"node {n}: its agent does not hold the Service table yet" for n in self.services.unsettled()]
        return why

    def sync(self, timeout: float) -> dict:
        deadline = self.engine.clock() + timeout
        why = self.unsettled()
        while why and self.engine.clock() < deadline:
            # Views change on every report; idleness without a view change
            # (a last push answered) is caught by looking again shortly.
            self._changed.wait(min(0.2, max(0.0, deadline - self.engine.clock())))
            self._changed.clear()
            why = self.unsettled()
        counters = self.engine.summary()
        return {"synced": not why, "pods": len(self.lab["pods"]), "failures": why[:10],
                "pushes": {k: int(counters.get(v, 0)) for k, v in PUSH_COUNTERS.items()}}


def _json_handlers(controller: Controller):
    def sync(req: dict, context) -> dict:
        return controller.sync(float(req.get("timeout", 60)))

    handler = grpc.unary_unary_rpc_method_handler(
        sync, request_deserializer=lambda b: json.loads(b or b"{}"),
        response_serializer=lambda o: json.dumps(o).encode())
    return grpc.method_handlers_generic_handler(SERVICE, {"Sync": handler})


def call(socket_path: str, method: str, request: dict, timeout: float = 70.0) -> dict:
    """Called by lab: one JSON call to the controller's lab service."""
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        fn = channel.unary_unary(f"/{SERVICE}/{method}",
                                 request_serializer=lambda o: json.dumps(o).encode(),
                                 response_deserializer=json.loads)
        return fn(request, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tailor.lab.control.controller")
    parser.add_argument("--state", required=True, help="the lab's state.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stdout)
    lab = state_.load(args.state)
    socket_path = os.path.join(lab["run_dir"], SOCKET)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    controller = Controller(lab)
    controller.start(socket_path)
    log.info("lab %s: controller serving on %s (%d pods)", lab["name"], socket_path, len(lab["pods"]))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
