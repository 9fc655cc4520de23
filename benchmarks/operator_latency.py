"""Operator latency: from a Kubernetes API change to every affected agent updated.

Runs the operator as the tests do (tests/operator/operator_world.py): kmock
as the API server over real HTTP (in a child process here, so its own CPU
time does not compete with the operator's threads), the operator (kopf,
pusher, reconcile, ProgramSource, PodProgram writer) in a thread, three
in-process agents with the emulated backend. Each phase starts once the
previous one's pushes are all done. For each cluster size N (default 100 and 1,000 pods over three
nodes, one NetworkPolicy selecting every pod) it measures:

  - initial sync: operator start -> every agent holds every pod's program
    (the initial listing compiled once, N Applies);
  - policy edit: PATCH of the NetworkPolicy's port -> every agent holds the
    new program of all N pods (N compiles, N Applies);
  - peer churn: a new client pod's CNI ADD (ProgramFor at its agent: the
    hand-off latency) -> all N subjects' peer maps hold its address
    (N compiles with unchanged hashes, N UpdateMaps, no reload);
  - no-op: a label change nobody selects -> nothing sent (checked, not timed).

Prints a table and writes JSON (default benchmarks/results/operator_latency.json).
Not a test: nothing here asserts a time.

    python3 benchmarks/operator_latency.py [--pods 100 1000] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "operator"))

from operator_world import World  # noqa: E402

POLL = 0.02


def policy(port: int) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "from-clients", "namespace": "bench"},
            "spec": {"podSelector": {},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                  "ports": [{"port": port, "protocol": "TCP"}]}]}}


def pod(i: int, node_index: int) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"web-{i}", "namespace": "bench",
                         "labels": {"app": f"web-{i % 10}", "role": "server"}},
            "spec": {"nodeName": World.NODES[node_index],
                     "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": "Running",
                       "podIPs": [{"ip": f"10.{100 + node_index}.{i // 250}.{i % 250 + 2}"}]}}


def held(world: World) -> dict[str, tuple[str, dict]]:
    out = {}
    for agent in world.agents.values():
        with agent.core._lock:
            for key, received in agent.core._programs.items():
                out[key] = (received.hash, received.entries)
    return out


def quiet(world: World, timeout: float = 300.0) -> None:
    """No push pending or in flight. (PodProgram statuses may still be
    being written: their pace is the API server's — kmock answers in time
    proportional to the objects it holds — and no agent waits for them.)"""
    engine = world.operator.engine
    for _ in range(2):
        try:
            wait(engine.idle, timeout)
        except TimeoutError:
            raise TimeoutError(f"not quiet: {engine.summary()}") from None
        time.sleep(0.2)


def changed(world: World, keys: list[str], test) -> bool:
    now = held(world)
    return all(test(k, now[k]) for k in keys)


def wait(condition, timeout: float = 600.0) -> float:
    """Seconds until condition() holds (polled)."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the operator did not converge")
        time.sleep(POLL)
    return time.perf_counter() - start


def measure(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="tailor-bench-") as tmp:
        world = World(tmp, reconcile_seconds=60.0, remote_kube=True)
        try:
            world.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
            keys = []
            for i in range(n):
                world.create(pod(i, i % 3))
                keys.append(f"bench/web-{i}")
            world.create(policy(80))

            started = time.perf_counter()
            world.start_operator()
            engine = world.operator.engine
            wait(lambda: len(held(world)) == n and engine.idle())
            initial = time.perf_counter() - started
            applies_initial = engine.counters["applies"]
            quiet(world)

            before = {k: h for k, (h, _) in held(world).items()}
            started = time.perf_counter()
            world.patch("NetworkPolicy", "bench", "from-clients", {"spec": {"ingress": [
                {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                 "ports": [{"port": 8080, "protocol": "TCP"}]}]}})
            edit = wait(lambda: changed(world, keys, lambda k, h: h[0] != before[k]))
            quiet(world)
            compiled_edit = engine.counters["compiled"]

            world.reset_counts()
            client = {"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": "client", "namespace": "bench", "labels": {"role": "client"}},
                      "spec": {"containers": [{"name": "c", "image": "x"}]}}
            made = world.create({**client, "spec": {**client["spec"], "nodeName": "n1"}})
            uid = made["metadata"]["uid"]
            wait(lambda: engine.world.uids.get("bench/client[Pod]") == uid)
            maps_before = {k: e for k, (_, e) in held(world).items()}
            started = time.perf_counter()
            world.agents["n1"].wire("bench", "client", uid, ["10.99.0.2"])
            handoff = time.perf_counter() - started
            churn = wait(lambda: changed(world, keys, lambda k, h: h[1] != maps_before[k])) + handoff
            quiet(world)
            counts = world.counts()
            return {"pods": n, "nodes": len(World.NODES),
                    "initial_sync_s": round(initial, 3), "initial_applies": applies_initial,
                    "policy_edit_to_all_agents_s": round(edit, 3),
                    "cni_handoff_s": round(handoff, 4),
                    "peer_churn_to_all_agents_s": round(churn, 3),
                    "churn_map_updates": sum(counts["map_updates"].values()),
                    "churn_reloads": sum(counts["reloads"].values()) - counts["reloads"]["bench/client"],
                    "compiled_total": compiled_edit}
        finally:
            world.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "operator_latency.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rows = [measure(n) for n in args.pods]
    print(f"{'pods':>6} {'initial sync':>13} {'policy edit':>12} {'CNI hand-off':>13} "
          f"{'peer churn':>11} {'map updates':>12} {'reloads':>8}")
    for r in rows:
        print(f"{r['pods']:>6} {r['initial_sync_s']:>12.2f}s {r['policy_edit_to_all_agents_s']:>11.2f}s "
              f"{r['cni_handoff_s'] * 1000:>11.1f}ms {r['peer_churn_to_all_agents_s']:>10.2f}s "
              f"{r['churn_map_updates']:>12} {r['churn_reloads']:>8}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "operator_latency", "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
