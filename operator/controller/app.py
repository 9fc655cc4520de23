"""The operator assembled: Lease, kopf, and the controller's parts.

Called by `tailor operator` (cli/operator.py) and by tests, which run it in
a thread against a fake API server:

    code = asyncio.run(app.run(config.Config(...), credentials=..., stop_flag=event))

run() logs in (kopf's own login functions: service account, else
kubeconfig), waits for the Lease, then runs kopf's operator with the
handlers of handlers.py until the stop flag is set, a signal arrives (kopf
handles SIGTERM/SIGINT in the main thread) or the Lease is lost. Shutdown
is graceful: the source server finishes its answers, the pusher its round,
the PodProgram writer its queue, and the Lease is released.

The Controller owns one of each: engine (state), agents (channels), pusher
(thread), reconciler (thread), ProgramSource server (gRPC threads), the
PodProgram writer, the policy status writer and the resync (tasks in kopf's
loop).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import logging
import threading

import kopf

from tailor.operator.controller import engine as engine_
from tailor.operator.controller import handlers, metrics, podprograms, policystatus, resync, source
from tailor.operator.controller.agents import Agents
from tailor.operator.controller.config import Config
from tailor.operator.controller.kube import KubeClient
from tailor.operator.controller.lease import Lease
from tailor.operator.controller.nodetable import NodeTable
from tailor.operator.controller.servicetable import ServiceTable
from tailor.operator.controller.pusher import Pusher
from tailor.operator.controller.reconcile import Reconciler

log = logging.getLogger("tailor.operator")


class Controller:
    def __init__(self, config: Config, credentials, source_server=None):
        self.config = config
        self.credentials = credentials
        self.engine = engine_.Engine(retry_first=config.retry_first, retry_max=config.retry_max,
                                     coalesce=config.push_coalesce, agent_selector=config.agent_selector)
        self.agents = Agents(self.engine.agent_address)
        self.nodes = NodeTable(self.engine, self.agents, timeout=config.push_timeout,
                               program_source=config.advertised_source)
        self.services = ServiceTable(self.engine, self.agents, timeout=config.push_timeout)
        self.reconciler = Reconciler(self.engine, self.agents, interval=config.reconcile_seconds,
                                     timeout=config.push_timeout, nodes=self.nodes, services=self.services)
        self.pusher = Pusher(self.engine, self.agents, self.reconciler.refresh,
                             chunk=config.push_chunk, timeout=config.push_timeout)
        self.kube = KubeClient(credentials, timeout=config.request_timeout)
        self.writer = podprograms.Writer(self.engine, self.kube, post_events=config.post_events)
        self.engine.on_views = self.writer.wake
        self.policy_status = policystatus.Writer(self.engine, self.kube)
        self.engine.on_policy_verdicts = self.policy_status.wake
        self.engine.on_agents = lambda nodes: (self.reconciler.kick(), self.nodes.kick(),
                                               self.services.kick())
        self.engine.on_nodes = self.nodes.kick
        self.engine.on_services = self.services.kick
        # Served since before the Lease (a standby answers health too):
        # activated in start(), deactivated in stop().
        self.source_server = source_server
        self.source_port: int | None = source_server.port if source_server else None
        self.metrics_server = None
        self.loaded = False
        self._load_lock = threading.Lock()
        self._writer_task: asyncio.Task | None = None
        self._policy_status_task: asyncio.Task | None = None
        self._resync_task: asyncio.Task | None = None
        self.started = threading.Event()

    def load(self, indexes) -> None:
        """The first event handler call: the complete initial listing, from
        kopf's indexes ({kind: Index of {(ns, name): essence}})."""
        with self._load_lock:
            if self.loaded:
                return
            objects = [(kind, essence) for kind, index in indexes.items()
                       for store in index.values() for essence in store]
            errors = self.engine.load(objects)
            for error in errors:
                log.warning("ignored: %s", error)
            log.info("initial listing: %d objects, %d pods", len(objects),
                     len(self.engine.world.state.pods))
            self.loaded = True

    async def start(self) -> None:
        """kopf's startup: serve the hand-off, start pushing and reconciling."""
        if self.source_server is None:
            self.source_server, self.source_port = source.serve(None, self.config.source_listen)
        self.source_server.source.activate(self.engine, lambda node: self.reconciler.kick())
        if self.config.metrics_port is not None:
            self.metrics_server = metrics.serve(self.engine, self.config.metrics_port)
        self.pusher.start()
        self.reconciler.start()
        self.nodes.start()
        self.services.start()
        self._writer_task = asyncio.create_task(self.writer.run(), name="tailor-podprograms")
        self._policy_status_task = asyncio.create_task(self.policy_status.run(),
                                                       name="tailor-policy-status")
        self._resync_task = asyncio.create_task(
            resync.run(self.kube, self.engine, self.config.resync_seconds), name="tailor-resync")
        log.info("ProgramSource on %s (port %s)", self.config.source_listen, self.source_port)
        self.started.set()

    async def stop(self) -> None:
        """kopf's cleanup: stop taking hand-offs, finish the round, flush statuses."""
        if self.source_server is not None:
            self.source_server.source.deactivate()
        self.engine.stop()
        await asyncio.to_thread(self.pusher.join, self.config.push_timeout + 2)
        await asyncio.to_thread(self.reconciler.stop)
        await asyncio.to_thread(self.nodes.stop)
        await asyncio.to_thread(self.services.stop)
        for task in (self._writer_task, self._policy_status_task, self._resync_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.writer.flush()
        await self.policy_status.flush()
        await self.kube.close()
        self.agents.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()


def login(kubeconfig: str | None = None) -> kopf.ConnectionInfo:
    """Credentials as kopf finds them: in-cluster service account, else
    kubeconfig; only `kubeconfig` when one is named."""
    settings = kopf.OperatorSettings()
    if kubeconfig:
        # kopf's kubeconfig login reads $KUBECONFIG.
        os.environ["KUBECONFIG"] = kubeconfig
        info = kopf.login_with_kubeconfig(settings=settings)
    else:
        info = kopf.login_with_service_account(settings=settings) or \
            kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError(f"cannot read the kubeconfig {kubeconfig}" if kubeconfig else
                              "no service account token and no kubeconfig: cannot reach the API")
    return info


async def run(config: Config, *, credentials=None, stop_flag=None, ready_flag=None,
              controllers: list | None = None) -> int:
    """Run the operator until stopped. 0: stopped; 1: the Lease was lost.
    `controllers` (tests) receives the Controller once it exists."""
    credentials = credentials or login(config.kubeconfig)
    stop = stop_flag if stop_flag is not None else asyncio.Event()
    # From the start, Lease or not: health for the probes (the standby is
    # ready as a standby), UNAVAILABLE to a ProgramFor until active.
    source_server, _ = source.serve(None, config.source_listen)
    try:
        return await _run(config, credentials, stop, ready_flag, controllers, source_server)
    finally:
        # In-flight answers finish; afterwards agents hear "unavailable" and retry.
        await asyncio.to_thread(lambda: source_server.stop(2.0).wait())


async def _run(config: Config, credentials, stop, ready_flag, controllers, source_server) -> int:
    lease_client = KubeClient(credentials, timeout=config.request_timeout)
    lease = None
    if config.lease_name:
        lease = Lease(lease_client, config.lease_name, config.lease_namespace, config.identity,
                      seconds=config.lease_seconds, renew=config.lease_renew_seconds)
        acquiring = asyncio.create_task(lease.acquire())
        while not acquiring.done() and not stop.is_set():
            await asyncio.wait({acquiring}, timeout=0.2)
        if not acquiring.done():
            acquiring.cancel()
            await lease_client.close()
            return 0
    controller = Controller(config, credentials, source_server)
    if controllers is not None:
        controllers.append(controller)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, controller)
    lost = False
    keeper = asyncio.create_task(lease.keep()) if lease else None

    def lease_lost(task: asyncio.Task) -> None:
        nonlocal lost
        if not task.cancelled():
            lost = True
            stop.set()

    if keeper is not None:
        keeper.add_done_callback(lease_lost)
    try:
        await kopf.operator(
            registry=registry, clusterwide=config.clusterwide, namespaces=config.namespaces,
            standalone=config.peering is None, peering_name=config.peering,
            liveness_endpoint=config.liveness, stop_flag=stop, ready_flag=ready_flag)
    finally:
        if keeper is not None:
            keeper.remove_done_callback(lease_lost)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if lease is not None and not lost:
            await lease.release()
        await lease_client.close()
    return 1 if lost else 0
