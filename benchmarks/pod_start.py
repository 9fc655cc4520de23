"""pod_start: CNI ADD -> the pod's programs attached, in a kernel lab.

`tailor lab up` (kernel backend) wires every pod with the real tailor-cni
plugin; an ADD returns only once the pod's two programs are attached, so
its latency is pod start as the container runtime sees it: the plugin, the
agent's veth and IPAM work, the agent asking the control plane for the
program (compile included), load and attach. The lab records each ADD's
time. Measured for both control planes — the lab's controller (the
operator's engine fed from manifests) and an API server + `tailor
operator` (`--control operator`) — with ADDs one at a time and eight at a
time (a node starting a burst of pods). Full runs also probe every pair
of pods with real connections against the model.
"""
from __future__ import annotations

import json
import os
import tempfile

from benchmarks import adapters, clusters
from benchmarks.common import Skip, median, need_root, percentile, pick

PODS = {"full": 48, "quick": 16, "smoke": 4}
NODES = {"full": 3, "quick": 2, "smoke": 2}
CONTROLS = {"full": ("lab", "operator"), "quick": ("lab", "operator"), "smoke": ("lab",)}
CONCURRENCY = (1, 8)
PROBE = {"full": True, "quick": False, "smoke": False}
NAME = "tb-podstart"


def run(mode: str, say) -> dict:
    need_root("the kernel lab")
    reason = adapters.kernel_unavailable()
    if reason:
        raise Skip(f"the kernel lab {reason}")
    controls = pick(mode, CONTROLS)
    if "operator" in controls:
        try:
            import kmock  # noqa: F401 - the API server of --control operator
        except ImportError:
            controls = tuple(c for c in controls if c != "operator")
    pods, nodes = pick(mode, PODS), pick(mode, NODES)
    runs = [(c, w) for c in controls for w in CONCURRENCY]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tailor-bench-") as tmp:
        path = os.path.join(tmp, "cluster.json")
        with open(path, "w") as f:
            json.dump(clusters.as_list(clusters.lab_cluster(pods)), f)
        for i, (control, workers) in enumerate(runs, 1):
            say(f"lab up: {pods} pods, {nodes} nodes, control {control}, {workers} ADD(s) at a time", i, len(runs))
            rows.append(_measure(path, nodes, control, workers, pick(mode, PROBE)))
    out = {"pods": pods, "nodes": nodes, "rows": rows}
    if "operator" not in controls:
        out["note"] = "control operator not measured: " + (
            "kmock is not installed" if mode != "smoke" else "smoke runs the lab controller only")
    return out


def _measure(path: str, nodes: int, control: str, workers: int, probe: bool) -> dict:
    try:
        data = adapters.lab_up(path, nodes=nodes, name=NAME, control=control, workers=workers)
        adds = [p["cni_add_ms"] for p in data["pods"]]
        row = {"control": control, "concurrency": workers, "pods": len(adds), "nodes": nodes,
               "cni_add_p50_ms": percentile(adds, 50), "cni_add_p99_ms": percentile(adds, 99),
               "cni_add_median_ms": round(median(adds), 1), "cni_add_max_ms": max(adds),
               "up_s": data.get("up_seconds"), "pushes": data.get("pushes", {})}
        if probe:
            row["probed_connections"], differences = adapters.lab_probe_differences(NAME)
            row["model_differences"] = len(differences)
        return row
    finally:
        adapters.lab_down(NAME)
