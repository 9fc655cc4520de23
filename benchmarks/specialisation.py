"""Specialised versus generic programs, measured side by side in one run.

For a few pod shapes (no policy; one NetworkPolicy with two ports;
dual-stack with ipBlocks and named ports; ANP + NetworkPolicy + BANP) it
compiles the pod's specialised programs and loads the generic baseline with
the same policy in its maps, then reports per shape:
  - instructions (both directions) and verifier-processed instructions,
  - kernel time per packet (BPF_PROG_TEST_RUN, repeat N) on an allowed TCP
    packet through the pod's ingress program, and the generic/specialised ratio,
  - compile time per pod (resolve + compile), averaged over a 1,000-pod cluster.
Prints a table and writes JSON (default benchmarks/results/specialisation.json).
Needs root for the kernel columns; without root it reports instruction
counts and compile times only.

    python3 benchmarks/specialisation.py [--repeat 200000] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

from tailor.datapath import packets as pk
from tailor.datapath import trace
from tailor.operator import tracing
from tailor.operator.cluster import manifests
from tailor.operator.cluster.state import ClusterState
from tailor.operator.compiler import build, generic

NS = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"ns": n}}}
      for n in ("app", "ops")]


def _pod(name, ns="app", labels=None, ips=("10.1.0.1",), ports=()):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": list(ports)}]},
            "status": {"podIPs": [{"ip": ip} for ip in ips]}}


def _np(name, spec, ns="app"):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


CLIENT = _pod("client", labels={"role": "web"}, ips=("10.1.0.9", "fd00::9"),
              ports=[{"name": "metrics", "containerPort": 9090}])
SHAPES = {
    "no policy": [_pod("p")],
    "NetworkPolicy, 2 ports": [
        _pod("p", labels={"role": "db"}),
        _np("db", {"podSelector": {"matchLabels": {"role": "db"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "web"}}}],
                                "ports": [{"port": 80}, {"port": 443}]}]})],
    "dual-stack, ipBlock, named ports, egress": [
        _pod("p", labels={"role": "db"}, ips=("10.1.0.1", "fd00::1"),
             ports=[{"name": "sql", "containerPort": 5432}]),
        _np("db", {"podSelector": {"matchLabels": {"role": "db"}},
                   "policyTypes": ["Ingress", "Egress"],
                   "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}},
                                         {"ipBlock": {"cidr": "fd00::/16"}}],
                                "ports": [{"port": "sql"}, {"port": 80}]}],
                   "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "metrics"}]}]})],
    "ANP + NetworkPolicy + BANP": [
        _pod("p", labels={"role": "db"}),
        {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
         "metadata": {"name": "ops"}, "spec": {"priority": 5, "subject": {"namespaces": {}},
                                               "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "ops"}}}]},
                                                           {"action": "Pass", "from": [{"namespaces": {}}]}]}},
        _np("db", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "web"}}}],
                                                   "ports": [{"port": 80}]}]}),
        {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
         "metadata": {"name": "default"}, "spec": {"subject": {"namespaces": {}},
                                                   "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}],
}


def state_of(objs) -> ClusterState:
    state = ClusterState()
    manifests.apply(state, [("benchmark", o) for o in NS + [CLIENT] + list(objs)])
    return state


def kernel_ns_per_packet(node: tracing.Node, pod: str, packet: bytes, repeat: int) -> tuple[float, int, int]:
    loaded = node.pods[pod].loaded["ingress"]
    run = loaded.test_run(packet, repeat=repeat)
    return run.duration_ns, run.retval, loaded.info().verified_insns


def measure(name: str, objs, repeat: int, kernel: bool) -> dict:
    state = state_of(objs)
    built = build.build(state)["app/p[Pod]"]
    gen, gen_entries = generic.programs(built.spec)
    row = {"shape": name, "features": list(built.programs.features),
           "instructions": {"specialised": built.programs.instructions, "generic": gen.instructions}}
    if kernel:
        flow = pk.Flow("10.1.0.9", "10.1.0.1", "TCP", 40000, 80)
        packet = pk.frame(flow, tcp_flags=pk.TCP_ACK)
        out = {}
        for label, programs, entries in (("specialised", built.programs, None), ("generic", gen, gen_entries)):
            node = tracing.Node(trace.engine("kernel"))
            try:
                node.add(built.spec, programs, entries)
                out[label] = kernel_ns_per_packet(node, "app/p[Pod]", packet, repeat)
            finally:
                node.close()
        if out["specialised"][1] != out["generic"][1]:
            raise SystemExit(f"{name}: specialised and generic disagree on the packet "
                             f"({out['specialised'][1]} vs {out['generic'][1]})")
        row["ns_per_packet"] = {k: v[0] for k, v in out.items()}
        row["verified_insns"] = {k: v[2] for k, v in out.items()}
        row["generic_over_specialised"] = round(out["generic"][0] / max(out["specialised"][0], 1), 2)
    return row


def compile_time(pods: int = 1000) -> dict:
    objs = [_pod(f"p{i}", labels={"role": "db" if i % 2 else "web"},
                 ips=(f"10.2.{i // 250}.{i % 250 + 1}",)) for i in range(pods)]
    objs += SHAPES["NetworkPolicy, 2 ports"][1:]
    state = state_of(objs)
    start = time.perf_counter()
    build.build(state)
    elapsed = time.perf_counter() - start
    return {"pods": len(state.sorted_pods()), "seconds": round(elapsed, 3),
            "ms_per_pod": round(1000 * elapsed / len(state.sorted_pods()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200_000)
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "specialisation.json"))
    args = parser.parse_args()
    kernel = os.geteuid() == 0
    rows = [measure(name, objs, args.repeat, kernel) for name, objs in SHAPES.items()]
    result = {"repeat": args.repeat, "kernel": kernel, "shapes": rows, "compile": compile_time()}
    print(f"{'shape':<42} {'insns spec':>10} {'insns gen':>9} {'ns spec':>8} {'ns gen':>7} {'gen/spec':>8}")
    for r in rows:
        ns = r.get("ns_per_packet", {})
        print(f"{r['shape']:<42} {r['instructions']['specialised']:>10} {r['instructions']['generic']:>9} "
              f"{ns.get('specialised', '-'):>8} {ns.get('generic', '-'):>7} {r.get('generic_over_specialised', '-'):>8}")
    c = result["compile"]
    print(f"compile: {c['pods']} pods in {c['seconds']} s = {c['ms_per_pod']} ms per pod")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
