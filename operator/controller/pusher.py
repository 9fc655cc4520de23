"""The pusher: a thread that turns pending pods into RPCs to their agents.

Started by app.Controller. It never runs inside a kopf handler or inside
ProgramFor: handlers only mark pods pending (engine.event) and the CNI
hand-off only answers the asking agent, so neither waits on another node.

Each round: engine.take() plans (compiles) a chunk of pending pods under the
engine's lock; the RPCs are then sent all at once (gRPC futures, every node
in parallel) and each outcome recorded: done() remembers what the agent
holds, so an unchanged pod is never sent again; failed() plans the pod again
after a backoff. A pod's pushes never overlap (one round at a time), so an
Apply and a later UpdateMaps of the same pod arrive in order.

Before the first round after the initial listing it asks every agent what it
holds (reconcile.Reconciler.refresh): a program an agent already has is
adopted, not loaded again — an operator restart reloads nothing.
"""
from __future__ import annotations

import logging
import threading

import grpc

from tailor.operator.controller import engine as engine_
from tailor.operator.controller.agents import Agents, NoAgent, report_of, request_for

log = logging.getLogger("tailor.operator.pusher")


class Pusher:
    def __init__(self, engine: engine_.Engine, agents: Agents, refresh, *, chunk: int = 64,
                 timeout: float = 10.0):
        self.engine = engine
        self.agents = agents
        self.refresh = refresh              # () -> None: List every agent (reconcile)
        self.chunk = chunk
        self.timeout = timeout
        self._thread = threading.Thread(target=self._run, name="tailor-pusher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """After engine.stop(): wait for the round in flight to finish."""
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self.engine.stopped:
            try:
                works = self.engine.take(self.chunk)
                if works is None:
                    self.refresh()
                    self.engine.reports_taken()
                    continue
                self.send(works)
            except Exception:   # noqa: BLE001 - the pusher must outlive one bad round
                log.exception("push round failed")
                threading.Event().wait(1.0)

    def send(self, works: list[engine_.Work]) -> None:
        """Send one round; every outcome goes back to the engine. Group
        changes go last: a group a program stops testing is dropped only
        after the program that tested it was replaced (the groups a new
        program tests travel in its Apply)."""
        self._send([w for w in works if w.rpc != engine_.UPDATE_GROUPS])
        self._send([w for w in works if w.rpc == engine_.UPDATE_GROUPS])

    def _send(self, works: list[engine_.Work]) -> None:
        flying = []
        for work in works:
            if work.rpc == engine_.UPDATE_MAPS and not work.maps:
                self.engine.done(work)              # nothing to change on the agent
                continue
            try:
                stub = self.agents.stub(work.node)
            except NoAgent as e:
                self.engine.failed(work, "NO_AGENT", str(e))
                continue
            call = getattr(stub, work.rpc)
            flying.append((work, call.future(request_for(work), timeout=self.timeout)))
        for work, future in flying:
            try:
                answer = future.result()
            except grpc.RpcError as e:
                log.warning("%s %s on node %s: %s: %s", work.rpc, work.pod, work.node,
                            e.code().name, e.details())
                self.engine.failed(work, e.code().name, e.details() or "")
                continue
            status = report_of(answer.status) if work.rpc == engine_.APPLY else None
            log.debug("%s %s on node %s", work.rpc, work.pod, work.node)
            self.engine.done(work, status)
