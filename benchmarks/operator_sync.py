"""operator: from a Kubernetes API change to every affected agent updated.

Runs the operator as its end-to-end tests do (tests/operator/operator_world.py,
through adapters.operator_world_class): kmock as the API server over real
HTTP, in a child process so its CPU does not compete with the operator's
threads; the operator (kopf, pusher, reconcile, ProgramSource, PodProgram
writer) in a thread; three in-process agents with the emulated backend.
Each phase starts once the previous one's pushes are all done. Each size
runs in a fresh process (`python -m benchmarks.operator_sync --pods N`,
one row as JSON on stdout), and a phase that has not converged within the
mode's CAP ends that size with `timed_out` in its row. For each size N
(pods over three nodes, one NetworkPolicy selecting every pod):

  - initial sync: operator start -> every agent holds every pod's program
    (the initial listing compiled once, N Applies);
  - policy edit: PATCH of the NetworkPolicy's port -> every agent holds the
    new program of all N pods (N compiles, N Applies);
  - peer churn: a new client pod's CNI ADD (ProgramFor at its agent: the
    hand-off latency) -> every node's identity maps hold its address (one
    group update per node, no reload).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks import adapters
from benchmarks.common import Progress, Skip, pick

SIZES = {"full": [100, 1000, 10000], "quick": [100, 1000], "smoke": [20]}
POLL = 0.02
TIMEOUT = 1200.0
# Seconds a phase may take before the size is given up (its row says so):
# on 2 CPUs the initial sync of 10,000 pods took about 1,000 s, which alone
# would push the full run past an hour.
CAP = {"full": 400.0, "quick": 300.0, "smoke": 120.0}
ROOT = pathlib.Path(__file__).resolve().parents[1]
CLIENT_IP = "10.99.0.2"


def run(mode: str, say) -> dict:
    try:
        world_class = adapters.operator_world_class()
    except ImportError as e:
        raise Skip(f"the operator's API server is kmock, which is missing ({e.name}): "
                   "pip install -e '.[lab]' (scripts/install-deps.sh)") from None
    sizes, cap = pick(mode, SIZES), pick(mode, CAP)
    rows = []
    for i, n in enumerate(sizes, 1):
        say(f"{n:,} pods in a fresh process", i, len(sizes))
        rows.append(_child(n, cap))
    return {"nodes": len(world_class.NODES), "agents": "emulated", "api": "kmock (child process)",
            "phase_cap_s": cap, "rows": rows}


def _child(n: int, cap: float) -> dict:
    """One size in its own process (and session): an operator still busy when
    a phase times out goes with it, and cannot slow the sections after."""
    argv = [sys.executable, "-m", "benchmarks.operator_sync", "--pods", str(n), "--cap", str(cap)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=5 * cap + 600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)       # the child's session: it, its API server, nothing else
        proc.communicate()
        return {"pods": n, "timed_out": f"the {n}-pod process did not finish in {5 * cap + 600:g} s"}
    if proc.returncode != 0:
        raise RuntimeError(f"the {n}-pod operator process failed (exit {proc.returncode}); "
                           "its error is on stderr above")
    return json.loads(out)


def _policy(port: int) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "from-clients", "namespace": "bench"},
            "spec": {"podSelector": {},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                  "ports": [{"port": port, "protocol": "TCP"}]}]}}


def _pod(i: int, node: str, node_index: int) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"web-{i}", "namespace": "bench",
                         "labels": {"app": f"web-{i % 10}", "role": "server"}},
            "spec": {"nodeName": node,
                     "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": "Running",
                       "podIPs": [{"ip": f"10.{100 + node_index}.{i // 250}.{i % 250 + 2}"}]}}


def _wait(condition, timeout: float = TIMEOUT) -> float:
    """Seconds until condition() holds (polled)."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the operator did not converge")
        time.sleep(POLL)
    return time.perf_counter() - start


def _quiet(world, timeout: float = TIMEOUT) -> None:
    """No push pending or in flight. (PodProgram statuses may still be
    being written: their pace is the API server's, and no agent waits for them.)"""
    engine = world.operator.engine
    for _ in range(2):
        try:
            _wait(engine.idle, timeout)
        except TimeoutError:
            raise TimeoutError(f"not quiet: {engine.summary()}") from None
        time.sleep(0.2)


def _changed(world, keys: list[str], test) -> bool:
    now = adapters.operator_held(world)
    return all(k in now and test(k, now[k]) for k in keys)


def measure(world_class, n: int, say, label: str, position: tuple[int, int], cap: float = TIMEOUT) -> dict:
    """One size's row. A phase that has not converged within `cap` seconds
    ends the size: its figure and the later ones stay None and `timed_out`
    says which phase (the next phase would start from an operator still busy)."""
    nodes = world_class.NODES
    row = {"pods": n, "nodes": len(nodes), "initial_sync_s": None, "initial_applies": None,
           "policy_edit_to_all_agents_s": None, "cni_handoff_s": None, "peer_churn_to_all_agents_s": None,
           "churn_group_updates": None, "churn_map_updates": None, "churn_reloads": None,
           "compiled_total": None}
    phase = "creating the objects"
    with tempfile.TemporaryDirectory(prefix="tailor-bench-") as tmp:
        say(f"{label}: {phase}", *position)
        world = world_class(tmp, reconcile_seconds=60.0, remote_kube=True)
        try:
            world.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
            keys = []
            for i in range(n):
                world.create(_pod(i, nodes[i % len(nodes)], i % len(nodes)))
                keys.append(f"bench/web-{i}")
            world.create(_policy(80))

            phase = "initial sync"
            say(f"{label}: {phase}", *position)
            started = time.perf_counter()
            world.start_operator()
            engine = world.operator.engine
            _wait(lambda: len(adapters.operator_held(world)) == n and engine.idle(), cap)
            row["initial_sync_s"] = round(time.perf_counter() - started, 3)
            row["initial_applies"] = engine.counters["applies"]
            _quiet(world, cap)

            phase = "policy edit"
            say(f"{label}: {phase}", *position)
            before = adapters.operator_held(world)
            world.patch("NetworkPolicy", "bench", "from-clients", {"spec": {"ingress": [
                {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                 "ports": [{"port": 8080, "protocol": "TCP"}]}]}})
            row["policy_edit_to_all_agents_s"] = round(
                _wait(lambda: _changed(world, keys, lambda k, h: h != before[k]), cap), 3)
            _quiet(world, cap)
            row["compiled_total"] = engine.counters["compiled"]

            phase = "peer churn"
            say(f"{label}: {phase}", *position)
            world.reset_counts()
            client = {"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": "client", "namespace": "bench", "labels": {"role": "client"}},
                      "spec": {"nodeName": nodes[0], "containers": [{"name": "c", "image": "x"}]}}
            uid = world.create(client)["metadata"]["uid"]
            _wait(lambda: engine.world.uids.get("bench/client[Pod]") == uid, cap)
            started = time.perf_counter()
            world.agents[nodes[0]].wire("bench", "client", uid, [CLIENT_IP])
            handoff = time.perf_counter() - started
            churn = _wait(lambda: adapters.operator_peer_everywhere(world, CLIENT_IP), cap) + handoff
            _quiet(world, cap)
            counts = adapters.operator_counts(world, but="bench/client")
            row.update(cni_handoff_s=round(handoff, 4), peer_churn_to_all_agents_s=round(churn, 3),
                       churn_group_updates=counts.get("group_updates"), churn_map_updates=counts.get("map_updates"),
                       churn_reloads=counts.get("reloads"))
        except TimeoutError:
            row["timed_out"] = f"{phase}: not converged within {cap:g} s"
            say(f"{label}: {row['timed_out']}", *position)
        finally:
            world.close()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one operator size, as JSON on stdout")
    parser.add_argument("--pods", type=int, required=True)
    parser.add_argument("--cap", type=float, default=TIMEOUT, help="seconds a phase may take")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    world_class = adapters.operator_world_class()
    row = measure(world_class, args.pods, Progress(f"operator {args.pods:,}"), f"{args.pods:,} pods", (1, 1),
                  args.cap)
    json.dump(row, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
