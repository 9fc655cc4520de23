"""The node table: every agent holds the cluster's nodes (their addresses
and pod CIDRs), from which it routes to their pods and knows what not to
masquerade (datapath/agent/node/).

Started by app.Controller and the lab's controller. A thread sends SetNodes,
the whole table, to each agent whose last answer named another table: when
a Node changes (engine.on_nodes), when an agent appears (engine.on_agents),
and when the reconcile loop's List shows an agent holding another digest
(an agent restarted without its state dir, a lost answer). A failed send is
tried again after a backoff; nodes' pods are not held up by it.
"""
from __future__ import annotations

import logging
import threading

import grpc

from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.node import routes
from tailor.operator.controller.agents import Agents, NoAgent

log = logging.getLogger("tailor.operator.nodes")

RETRY_SECONDS = 2.0


class NodeTable:
    def __init__(self, engine, agents: Agents, *, cluster_cidrs: tuple[str, ...] = (),
                 timeout: float = 10.0, interval: float = 30.0, program_source: str = ""):
        self.engine = engine
        self.program_source = program_source   # told to every agent ("" : none)
        self.agents = agents
        self.cluster_cidrs = tuple(cluster_cidrs)
        self.timeout = timeout
        self.interval = interval
        self.sends = 0
        self._held: dict[str, str] = {}          # node -> digest its agent answered
        self._want: str | None = None            # the digest of the table last sent
        self._lock = threading.Lock()
        self._kicked = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tailor-{self.what.replace(' ', '-')}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.kick()

    def stop(self) -> None:
        self._stop.set()
        self._kicked.set()
        self._thread.join(self.timeout + 1)

    def kick(self, *_) -> None:
        self._kicked.set()

    def listed(self, node: str, digest: str) -> None:
        """An agent's List said which table it holds."""
        with self._lock:
            if self._held.get(node) == digest:
                return
            self._held[node] = digest
        if digest != self._wanted():
            self.kick()

    def table(self) -> list[routes.ClusterNode]:
        return [routes.ClusterNode(n.name, tuple(n.ips), tuple(n.pod_cidrs))
                for n in self.engine.cluster_nodes()]

    def digest(self) -> str:
        return routes.with_source(routes.digest(self.table(), self.cluster_cidrs), self.program_source)

    # What a subclass for another node-level table changes: the request,
    # the RPC, and what the log says.
    what = "node table"

    def _wanted(self) -> str:
        """The digest agents should hold: the last round's, unless a change
        came since (then computed afresh). A List per node per reconcile
        round must not rebuild the whole table each time."""
        want = self._want
        return self.digest() if want is None or self._kicked.is_set() else want

    def _request(self) -> tuple[object, str, str]:
        """(the request, the digest an agent holding it answers, a summary)."""
        table = self.table()
        request = pb.SetNodesRequest(
            nodes=[pb.ClusterNode(name=n.name, addresses=n.addresses, pod_cidrs=n.pod_cidrs)
                   for n in table], cluster_cidrs=self.cluster_cidrs,
            program_source=self.program_source)
        digest = routes.with_source(routes.digest(table, self.cluster_cidrs), self.program_source)
        return request, digest, f"{len(table)} nodes"

    def _call(self, stub, request):
        return stub.SetNodes.future(request, timeout=self.timeout)

    def _describe(self, answer) -> str:
        return f"{answer.routes} routes"

    def unsettled(self) -> list[str]:
        """The agents that do not hold the current table (empty when all do)."""
        want = self._wanted()
        with self._lock:
            return sorted(n for n in self.engine.agent_nodes() if self._held.get(n) != want)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._kicked.wait(self.interval)
            if self._stop.is_set():
                return
            self._stop.wait(0.05)               # a burst of Node events: one round
            self._kicked.clear()
            try:
                if not self.send_round():
                    self._stop.wait(RETRY_SECONDS)
                    self._kicked.set()
            except Exception:   # noqa: BLE001 - the loop must outlive one bad round
                log.exception("%s round failed", self.what)

    def send_round(self) -> bool:
        """The table to every agent lacking it; True when all have it."""
        if not self.engine.synced:
            return False
        request, want, summary = self._request()
        self._want = want
        flying = []
        for node in sorted(self.engine.agent_nodes()):
            with self._lock:
                if self._held.get(node) == want:
                    continue
            try:
                stub = self.agents.stub(node)
            except NoAgent:
                continue
            flying.append((node, self._call(stub, request)))
        ok = True
        for node, future in flying:
            try:
                answer = future.result()
            except grpc.RpcError as e:
                ok = False
                log.warning("%s to node %s: %s: %s", self.what, node, e.code().name, e.details())
                continue
            self.sends += 1
            with self._lock:
                self._held[node] = answer.digest
            if answer.digest != want:
                ok = False
            log.info("node %s holds the %s (%s; %s)", node, self.what, summary, self._describe(answer))
        return ok
