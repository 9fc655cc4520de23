"""`tailor connectivity`: which connections the policies allow, answered by
the model, or by running the compiled programs (VM or kernel) on packets at
every port boundary the policies imply — pod to pod, and pod to each
Service port, judged on the backends the Service translates to ("all": any
connection succeeds; "some": it depends on the backend it reaches)."""
from __future__ import annotations

import json
import os

from tailor.cli import cluster_input, usage

# The model, the compiler and the datapaths are imported inside the functions
# that use them, so `tailor --help` and the other subcommands never pay for them.


def register(sub) -> None:
    p = sub.add_parser("connectivity", help="print which connections are allowed")
    cluster_input.add_files_option(p)
    p.add_argument("--datapath", choices=("model", "emulated", "kernel"), default="model",
                   help="model: the reference semantics; emulated: the compiled programs in the "
                        "userspace VM; kernel: the compiled programs in the kernel (root)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_run)


SERVICE_TRIES = 16        # connections traced per Service port: each picks a backend at random


def compute(state, datapath: str) -> list[dict]:
    return compute_all(state, datapath)["connections"]


def compute_all(state, datapath: str) -> dict:
    """{"connections": pod to pod, "services": pod to Service port}."""
    from tailor.operator.policy import reachability

    if datapath == "model":
        return {"connections": reachability.connectivity(state), "services": _services(state, None)}
    from tailor.datapath import trace
    from tailor.operator import tracing
    from tailor.operator.compiler import build

    built = build.build(state, progress=cluster_input.Progress("compiling pods"))
    node = tracing.Node(trace.engine(datapath), state)
    try:
        progress = cluster_input.Progress("loading programs")
        for i, b in enumerate(built.values(), 1):
            node.add(b.spec, b.programs)
            progress(i, len(built))

        def judge(src, dst, protocol: str, port: int) -> bool:
            flow = tracing.flow_between(built[src.ref].spec, built[dst.ref].spec, protocol, port)
            if flow is None:
                return False
            node.reset_conntrack()
            return node.trace(src.ref, dst.ref, flow).allowed

        from tailor.operator.compiler import servicemaps

        node.set_services(servicemaps.entries(state)[0])
        return {"connections": reachability.connectivity(state, judge=judge), "services": _services(state, node)}
    finally:
        node.close()


def _services(state, node) -> list[dict]:
    """Each pod to each Service port it is no backend of, in the first
    family both have: the model's verdict, or (with `node`, a tracing.Node
    holding the programs) what SERVICE_TRIES traced connections got."""
    from tailor.datapath import packets as pk
    from tailor.operator.policy import reachability, services as model_services

    found: dict[tuple, tuple[list[int], set[str]]] = {}
    for svc in state.sorted_services():
        for port in svc.ports:
            backends = {b.ref for b, _ in state.endpoints(svc, port) if not isinstance(b, str)}
            for src in state.sorted_pods():
                family = next((f for f in src.families if svc.cluster_ip(f)), None)
                if family is None or src.ref in backends:
                    continue
                if node is None:
                    verdict = model_services.verdict(state, src, svc, port, family)
                else:
                    got = set()
                    for i in range(SERVICE_TRIES):
                        node.reset_conntrack()
                        got.add(node.trace_service(src.ref, pk.Flow(
                            src.ip(family), svc.cluster_ip(family), port.protocol, 40000 + i, port.port)).allowed)
                    verdict = model_services.NONE if got == {False} else \
                        model_services.ALL if got == {True} else model_services.SOME
                if verdict != model_services.NONE:
                    ports, verdicts = found.setdefault((src.ref, svc.ref, port.protocol), ([], set()))
                    ports.append(port.port)
                    verdicts.add(verdict)
    return [{"src": s, "dst": d, "protocol": p, "ports": reachability.format_ranges(reachability.ranges_of(ports)),
             "backends": model_services.SOME if model_services.SOME in verdicts else model_services.ALL}
            for (s, d, p), (ports, verdicts) in sorted(found.items())]


def _run(args) -> int:
    state = cluster_input.load_state(args.filename)
    if args.datapath == "kernel":
        _require_kernel()
    answer = compute_all(state, args.datapath)
    connections, services = answer["connections"], answer["services"]
    if args.format == "json":
        print(json.dumps(answer, indent=2))
        return 0
    pods = len(state.sorted_pods())
    if not connections:
        print(f"no connections allowed among {pods} pods ({args.datapath})")
        return 0
    widths = [max(len(c[k]) for c in connections + [{"src": "SRC", "dst": "DST", "protocol": "PROTO",
                                                      "ports": "PORTS"}]) for k in ("src", "dst", "protocol")]
    print(f"{'SRC':<{widths[0]}}  {'DST':<{widths[1]}}  {'PROTO':<{widths[2]}}  PORTS")
    for c in connections:
        print(f"{c['src']:<{widths[0]}}  {c['dst']:<{widths[1]}}  {c['protocol']:<{widths[2]}}  {c['ports']}")
    print(f"{len(connections)} allowed (source, destination, protocol) among {pods} pods "
          f"({args.datapath})")
    if services:
        print()
        widths = [max(len(c[k]) for c in services + [{"src": "SRC", "dst": "SERVICE", "protocol": "PROTO",
                                                      "ports": "PORTS"}]) for k in ("src", "dst", "protocol", "ports")]
        print(f"{'SRC':<{widths[0]}}  {'SERVICE':<{widths[1]}}  {'PROTO':<{widths[2]}}  "
              f"{'PORTS':<{widths[3]}}  BACKENDS")
        for c in services:
            print(f"{c['src']:<{widths[0]}}  {c['dst']:<{widths[1]}}  {c['protocol']:<{widths[2]}}  "
                  f"{c['ports']:<{widths[3]}}  {c['backends']}")
        print(f"{len(services)} (source, Service, protocol) reach some backend ({args.datapath}; "
              f"judged on the backends)")
    return 0


def _require_kernel() -> None:
    from tailor.datapath.ebpf import kernel

    if os.geteuid() != 0:
        raise usage.UsageError("--datapath kernel loads programs into the kernel and needs root; "
                         "use --datapath emulated to run the same programs in the VM")
    if not kernel.is_bpffs_mounted():
        raise usage.UsageError("--datapath kernel needs bpffs: mount -t bpf bpf /sys/fs/bpf")
