"""`tailor agent`: run the node agent (one per node) until SIGTERM or SIGINT.

Starts the backend (the kernel one adopts what an earlier agent pinned), the
gRPC Agent service, the Prometheus endpoint and the CNI unix socket. On a
signal the servers stop; with the kernel backend every pod's program stays
attached and pinned for the next agent.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading

from tailor.datapath.agent import backends   # the registry alone: no backend is imported


def register(sub) -> None:
    p = sub.add_parser("agent", help="run the node agent (gRPC API, CNI socket, datapath backend)")
    p.add_argument("--node", required=True, help="this node's name")
    p.add_argument("--backend", choices=backends.BACKENDS, default=backends.DEFAULT,
                   help="; ".join(f"{n}: {backends.describe(n)}" for n in backends.BACKENDS)
                   + " (default %(default)s)")
    p.add_argument("--listen", default="unix:/run/tailor/agent.sock", metavar="ADDR",
                   help="gRPC address: host:port or unix:/path (default %(default)s)")
    p.add_argument("--socket", default="/run/tailor/cni.sock", metavar="PATH",
                   help="the CNI plugin's unix socket; '' for none (default %(default)s)")
    p.add_argument("--program-source", metavar="ADDR",
                   help="ProgramSource to ask when a pod is wired before its program arrived")
    p.add_argument("--pod-cidr", action="append", default=[], metavar="CIDR",
                   help="this node's pod CIDR, once per address family")
    p.add_argument("--node-ip", action="append", default=[], metavar="IP",
                   help="an address of this node, which pods' policies always let in (kubelet "
                        "probes); repeat per address (default: every global address of the netns)")
    p.add_argument("--routing", choices=("native", "vxlan", "auto", "off"), default="auto",
                   help="routes to other nodes' pods, from the Nodes the operator sends: native "
                        "(one L2 segment), vxlan (an overlay), auto (native where on link, else "
                        "VXLAN), off (something else routes) (default %(default)s)")
    p.add_argument("--masquerade", action=argparse.BooleanOptionalAction, default=True,
                   help="masquerade pod traffic leaving the cluster to the node's address "
                        "(default on)")
    p.add_argument("--non-masquerade-cidr", action="append", default=[], metavar="CIDR",
                   help="a destination pods reach with their own address besides the cluster's "
                        "pod CIDRs (Service CIDRs, a peered network); repeatable")
    p.add_argument("--state-dir", metavar="DIR", help="default /var/lib/tailor/<node>")
    p.add_argument("--bpffs-root", metavar="DIR", help="default /sys/fs/bpf/tailor/<node>")
    p.add_argument("--metrics-port", type=int, metavar="N", help="serve /metrics on this port")
    p.add_argument("--attach-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long a CNI ADD waits for the pod's program (default %(default)s)")
    p.add_argument("--proc-sys-net", default="/proc/sys/net", metavar="DIR",
                   help="where the agent writes net sysctls: a container's own /proc/sys is "
                        "read-only, so the chart mounts the host's writable elsewhere "
                        "(default %(default)s)")
    p.add_argument("--cni-conf", metavar="FILE",
                   help="a CNI conflist to install into --cni-conf-dir once the CNI socket serves, "
                        "and to remove at stop (the kubelet sees a network only while an agent runs)")
    p.add_argument("--cni-conf-dir", default="/etc/cni/net.d", metavar="DIR",
                   help="where --cni-conf goes (default %(default)s)")
    p.add_argument("--cni-conf-remove", action=argparse.BooleanOptionalAction, default=True,
                   help="remove the installed conflist when the agent stops (default on; off: "
                        "upgrades without a moment of no network config, uninstall leaves it)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="(default %(default)s)")
    p.set_defaults(func=_run)


LOG_LEVELS = ("debug", "info", "warning", "error")


def _run(args) -> int:
    from tailor.datapath.agent import daemon   # grpc, the backends: only when running

    from tailor.datapath.agent.node import addresses

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(name)s %(message)s")
    try:
        node_ips = addresses.parse(args.node_ip)
        for c in args.non_masquerade_cidr + args.pod_cidr:
            try:
                ipaddress.ip_network(c)
            except ValueError:
                raise ValueError(f"{c!r} is not a CIDR (e.g. 10.96.0.0/12)") from None
    except ValueError as e:
        print(f"tailor agent: {e}", file=sys.stderr)
        return 2
    config = daemon.Config(node=args.node, backend=args.backend, listen=args.listen,
                           socket=args.socket or None, program_source=args.program_source,
                           pod_cidrs=tuple(args.pod_cidr), node_ips=node_ips,
                           routing=args.routing, masquerade=args.masquerade,
                           non_masquerade=tuple(args.non_masquerade_cidr), state_dir=args.state_dir,
                           bpffs_root=args.bpffs_root, metrics_port=args.metrics_port,
                           attach_timeout=args.attach_timeout, proc_sys_net=args.proc_sys_net,
                           cni_conf=args.cni_conf, cni_conf_dir=args.cni_conf_dir,
                           cni_conf_remove=args.cni_conf_remove)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        running = daemon.start(config)
    except Exception as e:   # noqa: BLE001 - one line for the operator, not a traceback
        print(f"tailor agent: cannot start: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"tailor agent: node {args.node}, {args.backend} backend, {running.adopted} pods adopted, "
          f"listening on {args.listen}", flush=True)
    while not done.wait(3600):
        pass
    running.stop()
    print("tailor agent: stopped", flush=True)
    return 0
