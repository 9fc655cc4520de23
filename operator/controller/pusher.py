"""The pusher: a thread that turns pending pods into RPCs to their agents.

Started by app.Controller. It never runs inside a kopf handler or inside
ProgramFor: handlers only mark pods pending (engine.event) and the CNI
hand-off only answers the asking agent, so neither waits on another node.

Each round: engine.take() plans (compiles) a chunk of pending pods under the
engine's lock; the RPCs are then sent all at once (gRPC futures, every node
in parallel) and each outcome recorded: done() remembers what the agent
holds, so an unchanged pod is never sent again; failed() plans the pod again
after a backoff. A pod's pushes never overlap (one round at a time), so an
Apply and a later UpdateMaps of the same pod arrive in order. A round's
Applies go to each agent as one ApplyBatch; every pod in it has its own
outcome.

Before the first round after the initial listing it asks every agent what it
holds (reconcile.Reconciler.refresh): a program an agent already has is
adopted, not loaded again — an operator restart reloads nothing.
"""
from __future__ import annotations

import logging
import threading

import grpc

from tailor.operator.controller import engine as engine_
from tailor.operator.controller.agents import Agents, NoAgent, batch_request_for, report_of, request_for

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
        applies: dict[str, list[engine_.Work]] = {}
        for work in works:
            if work.rpc == engine_.UPDATE_MAPS and not work.maps:
                self.engine.done(work)              # nothing to change on the agent
                continue
            try:
                stub = self.agents.stub(work.node)
            except NoAgent as e:
                self.engine.failed(work, "NO_AGENT", str(e))
                continue
            if work.rpc == engine_.APPLY:
                applies.setdefault(work.node, []).append(work)
                continue
            call = getattr(stub, work.rpc)
            flying.append(([work], call.future(request_for(work), timeout=self.timeout)))
        # One call per agent for the round's Applies: a call costs more than
        # a program does to send.
        for node, batch in applies.items():
            future = self.agents.stub(node).ApplyBatch.future(batch_request_for(batch),
                                                              timeout=self.timeout)
            flying.append((batch, future))
        for batch, future in flying:
            try:
                answer = future.result()
            except grpc.RpcError as e:
                if batch[0].rpc == engine_.APPLY and e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self._one_by_one(batch)         # an agent from before ApplyBatch
                    continue
                for work in batch:
                    log.warning("%s %s on node %s: %s: %s", work.rpc, work.pod, work.node,
                                e.code().name, e.details())
                    self.engine.failed(work, e.code().name, e.details() or "")
                continue
            if batch[0].rpc != engine_.APPLY:
                log.debug("%s %s on node %s", batch[0].rpc, batch[0].pod, batch[0].node)
                self.engine.done(batch[0])
                continue
            for work, result in zip(batch, answer.results):
                if result.code:
                    log.warning("Apply %s on node %s: %s: %s", work.pod, work.node, result.code,
                                result.details)
                    self.engine.failed(work, result.code, result.details)
                else:
                    self.engine.done(work, report_of(result.response.status))

    def _one_by_one(self, works: list[engine_.Work]) -> None:
        for work in works:
            try:
                answer = self.agents.stub(work.node).Apply(request_for(work), timeout=self.timeout)
            except grpc.RpcError as e:
                self.engine.failed(work, e.code().name, e.details() or "")
                continue
            self.engine.done(work, report_of(answer.status))
