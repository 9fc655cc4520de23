"""`tailor operator`: the kopf controller (one active replica per cluster).

Watches Pods, Namespaces, Nodes, NetworkPolicies and, once their CRDs exist,
AdminNetworkPolicies, BaselineAdminNetworkPolicies and ClusterNetworkPolicies;
compiles each pod's programs incrementally, pushes them to the node agents,
answers the agents' ProgramFor at CNI ADD, writes one PodProgram per pod and
a status condition on each cluster-wide policy. Runs until SIGTERM
or SIGINT (graceful: answers in flight finish, the Lease is released), or
exits 1 when it loses the Lease to another replica.
"""
from __future__ import annotations

import logging
import os
import sys

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def register(sub) -> None:
    p = sub.add_parser("operator", help="run the operator (kopf): compile and push per-pod programs")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch only this namespace (repeatable; peers elsewhere stay unknown)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    p.add_argument("--source-listen", default="0.0.0.0:9502", metavar="ADDR",
                   help="serve ProgramSource (the agents' CNI hand-off) here (default %(default)s)")
    p.add_argument("--source-advertise", metavar="IP",
                   help="this replica's address as the agents reach it (the chart: the pod's IP); "
                        "the active replica tells every agent, so agents need no --program-source, "
                        "cluster DNS or Service")
    peering = p.add_mutually_exclusive_group()
    peering.add_argument("--peering", metavar="NAME", help="also use kopf peering (needs kopf's CRDs)")
    peering.add_argument("--standalone", action="store_true", help="no kopf peering (default)")
    lease = p.add_mutually_exclusive_group()
    lease.add_argument("--lease", default="tailor-operator", metavar="NAME",
                       help="Lease that elects the one active replica (default %(default)s)")
    lease.add_argument("--no-lease", action="store_true", help="no leader election (one replica only!)")
    p.add_argument("--lease-namespace", default=_own_namespace(), metavar="NS",
                   help="namespace of the Lease (default: $POD_NAMESPACE, else the service "
                        "account's, else default: %(default)s)")
    p.add_argument("--kubeconfig", metavar="FILE",
                   help="the API server to use (default: the in-cluster service account, else $KUBECONFIG "
                        "or ~/.kube/config)")
    p.add_argument("--liveness", metavar="URL", help="kopf's liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--metrics-port", type=int, metavar="N", help="serve Prometheus /metrics on this port")
    p.add_argument("--reconcile-seconds", type=float, default=30.0, metavar="S",
                   help="ask every agent what it holds and repair drift this often (default %(default)s)")
    p.add_argument("--push-coalesce", type=float, default=0.0, metavar="S",
                   help="once a change arrives, wait this long before compiling and pushing, so a "
                        "burst (many pods starting) is one push per affected pod (default %(default)s)")
    p.add_argument("--watch-timeout", type=int, default=300, metavar="S",
                   help="server-side watch timeout; the stream is then reopened (default %(default)s)")
    p.add_argument("--agent-selector", metavar="K=V,...",
                   help="the labels of the node agents' pods (default: the chart's, "
                        "app.kubernetes.io/name=tailor,app.kubernetes.io/component=agent)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging (--log-level debug)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                   help="(default %(default)s)")
    p.set_defaults(func=_run)


def _own_namespace() -> str:
    """Where this operator runs: $POD_NAMESPACE (the chart sets it), the
    in-cluster service account's namespace, or `default`."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def _run(args) -> int:
    import asyncio

    from tailor.operator.controller import app, config   # kopf, grpc: only when running

    if args.kubeconfig:
        if not os.path.isfile(args.kubeconfig):
            print(f"tailor operator: --kubeconfig {args.kubeconfig}: no such file", file=sys.stderr)
            return 2
    agent_selector = None
    if args.agent_selector is not None:
        from tailor.operator.controller import events

        try:
            agent_selector = events.parse_selector(args.agent_selector)
        except ValueError as e:
            print(f"tailor operator: --agent-selector: {e}", file=sys.stderr)
            return 2
    if args.source_advertise:
        import ipaddress

        try:
            ipaddress.ip_address(args.source_advertise)
        except ValueError:
            print(f"tailor operator: --source-advertise: {args.source_advertise!r} is not an IP "
                  f"address (the chart passes the pod's, status.podIP)", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = config.Config(
        namespaces=tuple(args.namespace), kubeconfig=args.kubeconfig, source_listen=args.source_listen,
        source_advertise=args.source_advertise,
        lease_name=None if args.no_lease else args.lease, lease_namespace=args.lease_namespace,
        identity=os.environ.get("POD_ID") or os.environ.get("POD_NAME") or None,
        peering=args.peering, liveness=args.liveness, metrics_port=args.metrics_port,
        reconcile_seconds=args.reconcile_seconds, push_coalesce=args.push_coalesce,
        watch_server_timeout=args.watch_timeout, watch_client_timeout=args.watch_timeout + 30.0,
        agent_selector=agent_selector)
    try:
        return asyncio.run(app.run(settings))
    except KeyboardInterrupt:
        return 0
    except Exception as e:   # noqa: BLE001 - one line for the operator, not a traceback
        print(f"tailor operator: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
