"""The reconcile loop: ask every agent what it holds, repair what drifted.

Started by app.Controller; also called by the pusher once after the initial
listing (adoption: what an agent already holds is not loaded again). Every
`interval` seconds, or soon after a kick (a CNI hand-off, an agent that
appeared or moved), it calls List on each agent (all nodes in parallel) and
hands the answer to engine.reported(), which
  - sends again, whole, every pod the agent lacks or holds at another hash
    (agent restart, lost push), counted as `repairs`;
  - returns the pods the agent holds that the cluster no longer has
    (deleted while the operator was away), which are removed here;
  - brings the PodProgram views up to date (Loaded / Pending / Failed);
  - tells the node table which table the agent holds (nodetable.py).
"""
from __future__ import annotations

import logging
import threading

import grpc

from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.operator.controller import engine as engine_
from tailor.operator.controller.agents import Agents, NoAgent, report_of, request_for

log = logging.getLogger("tailor.operator.reconcile")


class Reconciler:
    def __init__(self, engine: engine_.Engine, agents: Agents, *, interval: float = 30.0,
                 timeout: float = 10.0, nodes=None, services=None):
        self.engine = engine
        self.nodes = nodes                  # nodetable.NodeTable: told which table each agent holds
        self.services = services            # servicetable.ServiceTable: likewise
        self.agents = agents
        self.interval = interval
        self.timeout = timeout
        self.rounds = 0
        self._kicked = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tailor-reconcile", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._kicked.set()
        self._thread.join(self.timeout + 1)

    def kick(self) -> None:
        """Run a round soon (the next one is not waited for)."""
        self._kicked.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._kicked.wait(self.interval)
            if self._stop.is_set():
                return
            # Let a burst of kicks (many CNI hand-offs) become one round.
            self._stop.wait(0.1)
            self._kicked.clear()
            if not self.engine.synced:
                continue
            try:
                self.refresh()
            except Exception:   # noqa: BLE001 - the loop must outlive one bad round
                log.exception("reconcile round failed")

    def refresh(self) -> None:
        """One round: List every agent, repair, remove orphans."""
        self.rounds += 1
        asked = []
        for node in sorted(self.engine.agent_nodes()):
            try:
                stub = self.agents.stub(node)
            except NoAgent:
                continue
            asked.append((node, stub, self.engine.clock(), stub.List.future(pb.ListRequest(),
                                                                          timeout=self.timeout)))
        for node, stub, at, future in asked:
            try:
                answer = future.result()
            except grpc.RpcError as e:
                log.info("List on node %s: %s: %s", node, e.code().name, e.details())
                continue
            if self.nodes is not None:
                self.nodes.listed(node, answer.nodes_digest)
            if self.services is not None:
                self.services.listed(node, answer.services_digest)
            held = [(f"{s.pod.namespace}/{s.pod.name}", report_of(s)) for s in answer.pods]
            for work in self.engine.reported(node, held, at, answer.groups_digest):
                try:
                    stub.Remove(request_for(work), timeout=self.timeout)
                    log.info("removed %s from node %s: the cluster has no such pod", work.pod, node)
                except grpc.RpcError as e:
                    log.info("Remove %s on node %s: %s", work.pod, node, e.code().name)
