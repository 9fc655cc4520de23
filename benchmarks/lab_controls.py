"""The kernel lab under its two control planes, side by side in one run:
the lab's controller, and an API server + `tailor operator`
(`tailor lab up --control operator`), on the same generated cluster.

For each control plane: `lab up` time, CNI ADD latency (the ADD returns
once the pod's programs are attached: it includes the agent asking the
control plane for the program, compile, load, attach), whether real traffic
equals the model, then `down`. Prints both and their ratio; writes JSON.

    python3 benchmarks/lab_controls.py [--pods 60] [--nodes 3] [--out FILE]

Needs root (network namespaces, eBPF).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import yaml

from tailor.lab import lab
from tailor.lab.probing import probe
from tailor.lab import state as state_

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMESPACES = ("front", "back", "data")


def cluster(pods: int) -> list[dict]:
    """`pods` pods over three namespaces, each serving TCP 80 and UDP 81, and
    policies: `back` admits only `front` on TCP 80, `data` admits only pods
    labelled role=api on TCP 80 and denies all egress but DNS-like UDP 81."""
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"tier": n}}}
            for n in NAMESPACES]
    for i in range(pods):
        ns = NAMESPACES[i % len(NAMESPACES)]
        docs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"p{i:03d}", "namespace": ns,
                                  "labels": {"app": f"a{i % 5}", "role": "api" if i % 4 == 0 else "worker"}},
                     "spec": {"containers": [{"name": "c", "image": "agnhost", "ports": [
                         {"containerPort": 80, "name": "http", "protocol": "TCP"},
                         {"containerPort": 81, "name": "dns", "protocol": "UDP"}]}]}})
    docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "from-front", "namespace": "back"},
                 "spec": {"podSelector": {}, "ingress": [{
                     "from": [{"namespaceSelector": {"matchLabels": {"tier": "front"}}}],
                     "ports": [{"protocol": "TCP", "port": 80}]}]}})
    docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "api-only", "namespace": "data"},
                 "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                          "ingress": [{"from": [{"namespaceSelector": {},
                                                 "podSelector": {"matchLabels": {"role": "api"}}}],
                                       "ports": [{"protocol": "TCP", "port": "http"}]}],
                          "egress": [{"ports": [{"protocol": "UDP", "port": 81}]}]}})
    return docs


def percentile(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, (len(ordered) * pct + 99) // 100 - 1))]


def measure(path: str, control: str, nodes: int, name: str) -> dict:
    if state_.exists(name):
        lab.down(name, echo=lambda _: None)
    print(f"-- control {control}: lab up", flush=True)
    started = time.monotonic()
    data = lab.up([path], nodes=nodes, backend="kernel", name=name, control=control,
                  echo=lambda line: print(line, flush=True) if "pods " not in line else None)
    up_seconds = time.monotonic() - started
    try:
        adds = [p["cni_add_ms"] for p in data["pods"]]
        result = probe.run(state_.load(name))
        differences = probe.differences(result["connections"], probe.expected(data))
        return {"control": control, "pods": len(adds), "nodes": nodes, "up_seconds": round(up_seconds, 2),
                "cni_add_ms": {"p50": percentile(adds, 50), "p99": percentile(adds, 99),
                               "mean": round(statistics.mean(adds), 1)},
                "probed_connections": len(result["connections"]), "model_differences": len(differences),
                "pushes": data.get("pushes", {})}
    finally:
        lab.down(name, echo=lambda _: None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=60)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/lab_controls.json"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("lab_controls: needs root (network namespaces, eBPF)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tailor-bench-") as tmp:
        path = os.path.join(tmp, "cluster.yaml")
        with open(path, "w") as f:
            yaml.safe_dump_all(cluster(args.pods), f)
        runs = [measure(path, control, args.nodes, "bench") for control in ("lab", "operator")]
    lab_run, op_run = runs
    ratio = {k: round(op_run["cni_add_ms"][k] / lab_run["cni_add_ms"][k], 2) for k in ("p50", "p99")}
    print(f"\n{args.pods} pods on {args.nodes} nodes, kernel backend, {lab.POD_WORKERS} CNI ADDs at a time")
    print(f"{'control':<10} {'up (s)':>7} {'ADD p50 (ms)':>13} {'ADD p99 (ms)':>13} {'connections':>12} {'model diffs':>12}")
    for r in runs:
        print(f"{r['control']:<10} {r['up_seconds']:>7.1f} {r['cni_add_ms']['p50']:>13.1f} "
              f"{r['cni_add_ms']['p99']:>13.1f} {r['probed_connections']:>12} {r['model_differences']:>12}")
    print(f"operator / lab controller: ADD p50 x{ratio['p50']}, p99 x{ratio['p99']}")
    with open(args.out, "w") as f:
        json.dump({"runs": runs, "ratio_operator_over_lab": ratio}, f, indent=2)
    print(f"wrote {args.out}")
    return 0 if all(r["model_differences"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
