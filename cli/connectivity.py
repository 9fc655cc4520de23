"""`tailor connectivity`: which connections the policies allow, answered by
the model, or by running the compiled programs (VM or kernel) on packets at
every port boundary the policies imply."""
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


def compute(state, datapath: str) -> list[dict]:
    from tailor.operator.policy import reachability

    if datapath == "model":
        return reachability.connectivity(state)
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

        return reachability.connectivity(state, judge=judge)
    finally:
        node.close()


def _run(args) -> int:
    state = cluster_input.load_state(args.filename)
    if args.datapath == "kernel":
        _require_kernel()
    connections = compute(state, args.datapath)
    if args.format == "json":
        print(json.dumps({"connections": connections}, indent=2))
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
    return 0


def _require_kernel() -> None:
    from tailor.datapath.ebpf import kernel

    if os.geteuid() != 0:
        raise usage.UsageError("--datapath kernel loads programs into the kernel and needs root; "
                         "use --datapath emulated to run the same programs in the VM")
    if not kernel.is_bpffs_mounted():
        raise usage.UsageError("--datapath kernel needs bpffs: mount -t bpf bpf /sys/fs/bpf")
