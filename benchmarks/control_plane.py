"""control_plane: the operator's planning at scale, without kopf or gRPC.

For each size (pods; always 1,000 policies over 100 namespaces — 997
NetworkPolicies, 2 AdminNetworkPolicies and a Baseline, all with
namespace peers — and 50 nodes, clusters.large), in a fresh process so its
peak RSS is its own:
  - full plan: every pod resolved and compiled, every push made
    (adapters.OperatorModel: events.World loads the listing, Desired plans);
  - incremental changes as the operator makes them: a watch event into the
    model (which computes the affected pods), a plan of those pods, each
    push marked sent — a pod's label change, a policy's port edit, a new
    pod — `samples` of each (fewer if a kind's time BUDGET runs out), random
    but seeded; p50 and p99;
  - map entries the nodes' agents hold after the full plan
    (adapters.map_entries_by_node), over all nodes and on the fullest;
  - peak RSS (getrusage ru_maxrss) of the whole process.
Curve-only sizes measure the full plan and RSS alone (the growth curve).

    python -m benchmarks.control_plane --pods N [--samples S] [--budget SECONDS] [--curve-only]
prints one row as JSON on stdout (progress on stderr): how the section
runs each size.
"""
from __future__ import annotations

import argparse
import gc
import json
import pathlib
import random
import resource
import subprocess
import sys
import time

from benchmarks import clusters
from benchmarks.common import Progress, ms, percentile, pick

SIZES = {"full": [1000, 10000], "quick": [1000], "smoke": [50]}
CURVE = {"full": [2000, 5000], "quick": [2000], "smoke": [100]}
SAMPLES = {"full": 50, "quick": 20, "smoke": 5}
# Seconds per kind of change before sampling stops early (never under
# MIN_SAMPLES): at 10,000 pods one label change replanned ~3,000 pods in
# ~140 s here, so 50 of them would take two hours. The row says how many ran.
BUDGET = {"full": 240, "quick": 40, "smoke": 5}
MIN_SAMPLES = 3
CHANGES = ("label_change", "policy_edit", "new_pod")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(mode: str, say) -> dict:
    sizes = sorted(set(pick(mode, SIZES)) | set(pick(mode, CURVE)))
    rows, curve = [], []
    for i, pods in enumerate(sizes, 1):
        curve_only = pods not in pick(mode, SIZES)
        say(f"{pods:,} pods in a fresh process" + (" (full plan only)" if curve_only else ""), i, len(sizes))
        row = _child(pods, pick(mode, SAMPLES), pick(mode, BUDGET), curve_only)
        curve.append({"pods": row["pods"], "full_plan_s": row["full_plan_s"], "peak_rss_mib": row["peak_rss_mib"]})
        if not curve_only:
            rows.append(row)
    return {"nodes": clusters.NODES, "namespaces": clusters.NAMESPACES, "policies": clusters.POLICIES,
            "samples": pick(mode, SAMPLES), "rows": rows, "curve": curve}


def _child(pods: int, samples: int, budget: float, curve_only: bool) -> dict:
    argv = [sys.executable, "-m", "benchmarks.control_plane", "--pods", str(pods), "--samples", str(samples),
            "--budget", str(budget)]
    done = subprocess.run(argv + (["--curve-only"] if curve_only else []), cwd=ROOT,
                          stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {pods}-pod control-plane process failed (exit {done.returncode}); "
                           "its error is on stderr above")
    return json.loads(done.stdout)


def measure(pods: int, samples: int, budget: float, curve_only: bool, say) -> dict:
    from benchmarks import adapters

    say(f"building {pods:,} pods, {clusters.POLICIES} policies")
    model = adapters.OperatorModel()
    errors = model.load(clusters.large(pods))
    if errors:
        raise RuntimeError(f"the cluster has invalid objects: {errors[:3]}")
    say("full plan")
    started = time.perf_counter()
    pushes = model.plan()
    full = time.perf_counter() - started
    by_node = adapters.map_entries_by_node(pushes)
    row = {"pods": model.pods, "policies": clusters.POLICIES, "nodes": clusters.NODES,
           "full_plan_s": round(full, 3), "pushes": adapters.push_counts(pushes),
           "map_entries": sum(by_node.values()), "map_entries_per_node_max": max(by_node.values(), default=0)}
    del pushes
    # As the operator's engine does once its initial sync is planned
    # (controller/engine.py): what it built stays out of the collector's scans.
    gc.freeze()
    if not curve_only:
        rng = random.Random(pods)
        changes = _Changes(pods, rng)
        for change in CHANGES:
            times, touched, began = [], [], time.monotonic()
            for s in range(samples):
                if s >= MIN_SAMPLES and time.monotonic() - began > budget:
                    break
                body = getattr(changes, change)(s)
                started = time.perf_counter()
                affected = model.event(body)
                model.plan(affected)
                times.append(time.perf_counter() - started)
                touched.append(len(affected))
                say.every(change.replace("_", " "), s + 1, samples, parts=4)
            row[f"{change}_samples"] = len(times)
            row[f"{change}_p50_ms"] = ms(percentile(times, 50))
            row[f"{change}_p99_ms"] = ms(percentile(times, 99))
            row[f"{change}_affected_p50"] = percentile(touched, 50)
            row[f"{change}_affected_max"] = max(touched)
    row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


class _Changes:
    """The bodies of the watch events each sample sends (seeded: every run the same)."""

    def __init__(self, pods: int, rng: random.Random):
        self.pods, self.rng = pods, rng
        self.app = {}                 # pod index -> its app label now
        self.shift = {}               # policy index -> its port shift now

    def label_change(self, _s: int) -> dict:
        j = self.rng.randrange(self.pods)
        now = self.app.get(j, j // clusters.NAMESPACES % 10)
        self.app[j] = (now + 1 + self.rng.randrange(9)) % 10
        return clusters.large_pod(j, app=f"a{self.app[j]}")

    def policy_edit(self, _s: int) -> dict:
        k = self.rng.randrange(clusters.POLICIES - 3)
        self.shift[k] = 0 if self.shift.get(k) else 100
        return clusters.large_policy(k, self.shift[k])

    def new_pod(self, s: int) -> dict:
        return clusters.large_pod(self.pods + s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one control-plane size, as JSON on stdout")
    parser.add_argument("--pods", type=int, required=True)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per kind of change")
    parser.add_argument("--curve-only", action="store_true")
    args = parser.parse_args(argv)
    row = measure(args.pods, args.samples, args.budget, args.curve_only, Progress(f"control_plane {args.pods:,}"))
    json.dump(row, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
