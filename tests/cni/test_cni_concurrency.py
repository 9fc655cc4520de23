"""200 pods start at once on one node, then all are deleted: no address is
handed out twice, and nothing leaks (addresses, veths, namespaces).

Runs the installed plugin (tailor.datapath.cni.install) as 200 concurrent
processes against one agent, as a node's runtime does during a burst of pod
starts. Prints ADD latency (p50/p99, measured from the runtime's side);
never a timed assertion."""
from __future__ import annotations

import concurrent.futures
import os
import statistics
import subprocess
import time

import pytest

import cni_harness
from cni_harness import run_plugin

PODS = 200


def _batch(lines: list[str]) -> None:
    subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True,
                   capture_output=True)


@pytest.mark.kernel
def test_200_concurrent_adds_then_dels(agent, installed_plugin):
    exe = installed_plugin
    names = [f"tailor-test-{cni_harness.PID}-burst{i}" for i in range(PODS)]
    pods = [(cni_harness.container_id(), f"/var/run/netns/{n}") for n in names]
    _batch([f"netns add {n}" for n in names])
    try:
        config = agent.config(timeoutSeconds=120)

        def add(pod):
            cid, ns = pod
            started = time.monotonic()
            rc, result, raw = run_plugin(exe, "ADD", config, CNI_CONTAINERID=cid, CNI_NETNS=ns,
                                         CNI_IFNAME="eth0", CNI_PATH="/opt/cni/bin",
                                         CNI_ARGS=f"K8S_POD_NAMESPACE=burst;K8S_POD_NAME={cid}")
            return rc, result, raw, time.monotonic() - started

        def delete(pod):
            cid, ns = pod
            return run_plugin(exe, "DEL", config, CNI_CONTAINERID=cid, CNI_NETNS=ns,
                              CNI_IFNAME="eth0", CNI_PATH="/opt/cni/bin")

        wall = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=PODS) as pool:
            adds = list(pool.map(add, pods))
        wall = time.monotonic() - wall
        failed = [raw for rc, _, raw, _ in adds if rc != 0]
        assert not failed, failed[:3]
        addresses = [ip["address"] for _, result, _, _ in adds for ip in result["ips"]]
        assert len(addresses) == 2 * PODS
        assert len(set(addresses)) == len(addresses), "an address was handed out twice"
        assert len(agent.ipam.allocated()) == 2 * PODS
        assert len(cni_harness.tailor_veths()) == PODS
        latencies = sorted(seconds for *_, seconds in adds)
        p50 = statistics.median(latencies)
        p99 = latencies[int(0.99 * (len(latencies) - 1))]
        print(f"\nCNI ADD latency over {PODS} concurrent ADDs ({os.cpu_count()} CPUs): "
              f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, all done in {wall:.1f} s")

        with concurrent.futures.ThreadPoolExecutor(max_workers=PODS) as pool:
            dels = list(pool.map(delete, pods))
        assert [(rc, out) for rc, out, _ in dels] == [(0, None)] * PODS, \
            [raw for rc, _, raw in dels if rc != 0][:3]
    finally:
        _batch([f"netns del {n}" for n in names if os.path.exists(f"/var/run/netns/{n}")])
    assert agent.ipam.allocated() == [], "leaked addresses"
    assert sorted(os.listdir(agent.ipam.state_dir)) == [   # no file per address left
        "last_reserved.10.244.1.0_24", "last_reserved.fd00:10:244:1::_64", "lock"]
    assert cni_harness.tailor_veths() == [], "leaked veths"
    assert cni_harness.namespaces_left() == [], "leaked namespaces"
