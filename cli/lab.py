"""`tailor lab up | probe | status | down`: a cluster on this machine out of
network namespaces, real agents, the real CNI plugin and real connections
(lab/). Without root, `--backend emulated`."""
from __future__ import annotations

import json
import sys

from tailor.cli import cluster_input, usage
from tailor.datapath.agent import backends

# The lab (netlink, processes, the API server emulator) is imported inside the
# functions that use it, so `tailor --help` and the other subcommands never
# pay for it.


def register(sub) -> None:
    p = sub.add_parser("lab", help="build a cluster on this machine and probe real connections")
    lab_sub = p.add_subparsers(dest="lab_command", required=True, metavar="ACTION")

    up = lab_sub.add_parser("up", help="make nodes and pods, start agents, wire pods with the CNI")
    cluster_input.add_files_option(up)
    up.add_argument("--nodes", type=int, default=None,
                    help="number of nodes (default 2, or as many as spec.nodeName names)")
    up.add_argument("--backend", choices=backends.BACKENDS, default=None,
                    help="kernel (root: namespaces, veths, eBPF) or emulated (no root: the agents' VM); "
                         "default kernel as root, else emulated")
    up.add_argument("--control", choices=("lab", "operator"), default="lab",
                    help="who compiles and pushes the programs: the lab's controller (default), or an "
                         "API server holding the manifests' objects and `tailor operator`, as in a cluster "
                         "(then: KUBECONFIG=<run dir>/kubeconfig kubectl get pp -A)")
    up.add_argument("--underlay", choices=("switched", "routed"), default="switched",
                    help="switched: the nodes on one L2 segment, as kind's (default); routed: each "
                         "node on its own subnet behind a router")
    up.add_argument("--routing", choices=("native", "vxlan", "auto"), default=None,
                    help="how the agents route to other nodes' pods (default native when switched, "
                         "vxlan when routed)")
    up.add_argument("--kube-proxy", action="store_true",
                    help="the nodes carry kube-proxy's nftables rules for the manifests' Services "
                         "(ClusterIPs as written, else from 10.96.0.0/16)")
    up.add_argument("--image", metavar="IMAGE",
                    help="run the agents (and with --control operator the operator) as containers of "
                         "tailor's image, as the chart does (scripts/build-image.sh builds "
                         "localhost/tailor:<version>); kernel backend, needs podman")
    _name(up)
    up.set_defaults(func=_up)

    probe = lab_sub.add_parser("probe", help="try every pod-to-pod and node-to-pod TCP/UDP connection on "
                                             "the declared ports, and every pod to a host outside")
    probe.add_argument("--format", choices=("table", "json"), default="table")
    probe.add_argument("--timeout", type=float, default=None, help="seconds per attempt (default 1)")
    probe.add_argument("--check", action="store_true",
                       help="compare with the model (at the lab's addresses); exit 1 on any difference")
    _name(probe)
    probe.set_defaults(func=_probe)

    status = lab_sub.add_parser("status", help="nodes, pods, addresses and the agents' programs")
    status.add_argument("--format", choices=("table", "json"), default="table")
    _name(status)
    status.set_defaults(func=_status)

    down = lab_sub.add_parser("down", help="remove everything the lab made")
    _name(down)
    down.set_defaults(func=_down)


def _name(p) -> None:
    p.add_argument("--name", default="lab", help="the lab's name (default: lab); prefixes its namespaces")


def _errors(fn):
    def run(args) -> int:
        from tailor.lab.lab import LabError

        try:
            return fn(args)
        except LabError as e:
            raise usage.UsageError(str(e)) from None
    return run


@_errors
def _up(args) -> int:
    from tailor.lab import lab

    lab.up(args.filename, nodes=args.nodes, backend=args.backend, name=args.name, control=args.control,
           underlay=args.underlay, routing=args.routing, kube_proxy=args.kube_proxy,
           image=args.image, echo=lambda line: print(line, flush=True))
    return 0


@_errors
def _probe(args) -> int:
    from tailor.lab import lab
    from tailor.lab.probing import probe

    result = lab.probe(args.name, args.timeout)
    differ = None
    if args.check:
        differ = probe.check(lab.load(args.name), result)
        result["model_differences"] = differ
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 1 if differ else 0
    connections = result["connections"]
    every = connections + result.get("nodes", []) + result.get("outside", []) + result.get("services", []) \
        + result.get("node_ports", [])
    rows = [("SRC", "DST", "PROTO", "PORTS")] + [(c["src"], c["dst"], c["protocol"], c["ports"])
                                                 for c in every]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print(f"{len(connections)} allowed pod to pod, {len(result.get('nodes', []))} node to pod, "
          f"{len(result.get('outside', []))} pod to outside, {len(result.get('services', []))} pod to Service, "
          f"{len(result.get('node_ports', []))} outside to node port (source, destination, protocol); probed "
          f"{', '.join(result['probed'])} on the {result['datapath']} datapath in {result['seconds']:.1f}s")
    if result.get("outside_seen") is not None:
        print(f"the outside host saw connections from {', '.join(result['outside_seen']) or 'nobody'}")
    for note in result["notes"]:
        print(f"note: {note}")
    if differ is not None:
        print(f"model: {len(differ)} differences" + "".join(f"\n  {d}" for d in differ)
              if differ else "model: the probe equals the model")
    return 1 if differ else 0


@_errors
def _status(args) -> int:
    from tailor.lab import lab

    data = lab.status(args.name)
    if args.format == "json":
        print(json.dumps(data, indent=2))
        return 0
    print(f"lab {data['name']} ({data['backend']}): "
          f"{'up' if data['ready'] else 'not ready, last step ' + data['step']}; "
          f"control plane: {data['controller']}; run dir {data['run_dir']}")
    if data.get("api"):
        print(f"API server {data['api']['url']}: KUBECONFIG={data['api']['kubeconfig']} kubectl get pp -A")
    print("NODES")
    for n in data["nodes"]:
        print(f"  {n['name']:<12} {','.join(n['underlay']):<32} pods {','.join(n['pod_cidrs']):<34} agent {n['agent']}")
    if data.get("services"):
        print("SERVICES" + (" (kube-proxy's rules on every node)" if data.get("kube_proxy") else
                            " (not translated: no --kube-proxy)"))
        for svc in data["services"]:
            print(f"  {svc['ref']:<32} {','.join(svc['cluster_ips'])}")
    print("PODS")
    rows = [("POD", "NODE", "ADDRESSES", "STATE", "HASH", "FEATURES")]
    for p in data["pods"]:
        prog = p.get("program") or {}
        rows.append((p["ref"], p["node"], ",".join(p["addresses"]) or "-", prog.get("state", "-"),
                     prog.get("hash", "") or "-", ",".join(prog.get("features", [])) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  " + "  ".join(f"{c:<{w}}" for c, w in zip(r, widths)) + f"  {r[5]}")
    return 0


@_errors
def _down(args) -> int:
    from tailor.lab import lab

    lab.down(args.name, echo=lambda line: print(line, file=sys.stdout, flush=True))
    return 0
