"""The node agent assembled: backend (adopting what is pinned), core, gRPC
server, metrics endpoint and the CNI unix socket.

Called by `tailor agent` (cli/agent.py), which waits for a signal and calls
stop(); the lab may run agents in-process the same way:

    running = daemon.start(daemon.Config(node="n1", backend="emulated",
                                         listen="unix:/tmp/n1.sock", socket=None))
    ...
    running.stop()

stop() stops the servers and closes the backend's fds: with the kernel
backend every program stays attached and pinned for the next agent to adopt.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from tailor.datapath.agent import backends, core, metrics, server, source

log = logging.getLogger("tailor.agent")


@dataclasses.dataclass(frozen=True)
class Config:
    node: str
    backend: str = "kernel"
    listen: str = "unix:/run/tailor/agent.sock"
    socket: str | None = "/run/tailor/cni.sock"     # None: no CNI socket
    program_source: str | None = None
    pod_cidrs: tuple[str, ...] = ()
    node_ips: tuple[str, ...] = ()                   # () : every global address of the netns
    routing: str = "off"                             # node/routes.MODES
    masquerade: bool = False
    non_masquerade: tuple[str, ...] = ()             # CIDRs pods reach with their own address
    state_dir: str | None = None                     # default /var/lib/tailor/<node>
    bpffs_root: str | None = None                    # default /sys/fs/bpf/tailor/<node>
    metrics_port: int | None = None                  # None: no metrics endpoint
    attach_timeout: float = core.ATTACH_TIMEOUT_SECONDS
    proc_sys_net: str = "/proc/sys/net"             # a writable mount of it, in a container
    cni_conf: str | None = None                      # a conflist to install once serving...
    cni_conf_dir: str = "/etc/cni/net.d"             # ...here
    cni_conf_remove: bool = True                     # and remove again at stop

    @property
    def state(self) -> str:
        return self.state_dir or os.path.join("/var/lib/tailor", self.node)


@dataclasses.dataclass
class Running:
    config: Config
    core: core.Core
    grpc_server: object
    cni_server: object | None
    metrics_server: object | None
    source: source.GrpcProgramSource | None
    adopted: int
    cni_conf: str | None = None                      # the path installed, if any

    def stop(self, grace: float = 2.0) -> None:
        """Stop taking requests, finish those in flight, release the backend."""
        if self.cni_conf is not None and self.config.cni_conf_remove:
            from tailor.datapath.agent.cni import conflist

            # First: no new pod is sent to a plugin whose agent is going away.
            if conflist.remove(self.cni_conf):
                log.info("removed the CNI config %s", self.cni_conf)
        if self.cni_server is not None:
            self.cni_server.stop()
        self.grpc_server.stop(grace).wait()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        if self.source is not None:
            self.source.close()
        self.core.stop()


def start(config: Config) -> Running:
    """Start everything; on a failure whatever started is stopped again."""
    backend = backends.open_backend(config.backend, config.node, bpffs_root=config.bpffs_root,
                                    state_dir=os.path.join(config.state, "datapath"))
    # Without an address it waits for the operator's (SetNodes).
    program_source = source.GrpcProgramSource(config.program_source or None)
    agent_metrics = metrics.Metrics(config.node)
    from tailor.datapath.agent.node import addresses, network

    node_network = network.NodeNetwork(config.node, mode=config.routing, masquerade=config.masquerade,
                                       pod_cidrs=config.pod_cidrs, exempt=config.non_masquerade,
                                       state_dir=config.state)
    node_network.restore()
    node_addresses = config.node_ips or addresses.discover()
    agent = core.Core(config.node, backend, program_for=program_source,
                      attach_timeout=config.attach_timeout, metrics=agent_metrics,
                      node_addresses=node_addresses, network=node_network)
    started: list = []
    try:
        adopted = agent.start()
        started.append(agent.stop)
        log.info("node %s: %s backend started, %d pods adopted", config.node, backend.name,
                 len(adopted))
        agent_metrics.watch_pods(lambda: [s.state.value for s in agent.list()])
        grpc_server = server.serve(agent, config.listen)
        started.append(lambda: grpc_server.stop(None))
        metrics_server = None
        if config.metrics_port is not None:
            metrics_server = agent_metrics.serve(config.metrics_port)
            started.append(metrics_server.shutdown)
        cni_server = _cni_server(config, agent, node_network.pod_mtu(node_addresses), node_network) \
            if config.socket else None
        if cni_server is not None:
            started.append(cni_server.stop)
        installed = None
        if config.cni_conf:
            from tailor.datapath.agent.cni import conflist

            # Only now that ADDs are answered does the kubelet see a network.
            installed = conflist.install(config.cni_conf, config.cni_conf_dir)
            log.info("installed the CNI config %s", installed)
    except BaseException:
        for stop in reversed(started):
            stop()
        if program_source is not None:
            program_source.close()
        raise
    return Running(config, agent, grpc_server, cni_server, metrics_server, program_source,
                   len(adopted), installed)


def _cni_server(config: Config, agent: core.Core, mtu: int | None = None, network=None):
    """The CNI socket: the plugin's ADD/DEL/CHECK/STATUS/GC, handled with
    this node's IPAM and veth wiring (pods' MTU `mtu`: the overlay's) and
    the core's attach/detach."""
    from tailor.datapath.agent.cni import handler, ipam, server as cni_server, wiring

    # Without --pod-cidr: what the node table (restored, or the next SetNodes) says.
    learnt = network.pod_cidrs if network is not None else ()
    node_ipam = ipam.Ipam.from_cidrs(os.path.join(config.state, "ipam"), config.pod_cidrs or learnt)
    if network is not None and network.learn_pod_cidrs:
        network.on_pod_cidrs = node_ipam.set_cidrs
    cni = handler.CniHandler(node_ipam, wiring.Wiring(mtu, config.proc_sys_net), attach=agent.attach_pod,
                             detach=agent.detach_pod, ready=agent.ready)
    srv = cni_server.CniSocketServer(config.socket, cni)
    srv.start()
    return srv
