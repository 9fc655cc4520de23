"""kubectl's own output as input: the lab's API server, asked with `kubectl
get ... -A -o json` (and `-o yaml`) as a user would, gives `tailor
connectivity` a cluster whose answer equals what the lab's probe finds on
the running lab — ClusterNetworkPolicies (example 03) included. Emulated
backend with the operator (`--control operator`): no root needed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tailor.lab import lab
from tailor.lab.probing import probe

pytestmark = pytest.mark.operator
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
EXAMPLE = os.path.join(ROOT, "examples", "03-cluster-network-policies")
KINDS = "namespaces,pods,networkpolicies,adminnetworkpolicies,baselineadminnetworkpolicies,clusternetworkpolicies"


@pytest.fixture
def lab_root(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_LAB_ROOT", str(tmp_path / "labs"))
    return tmp_path / "labs"


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_kubectl_output_fed_to_connectivity_equals_the_probe(lab_root, tmp_path, output):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing: install it (the README's test set-up does)")
    data = lab.up([EXAMPLE], nodes=2, backend="emulated", control="operator", name=f"rt{output[0]}",
                  echo=lambda _: None)
    try:
        got = subprocess.run([kubectl, "--kubeconfig", data["api"]["kubeconfig"], "get", KINDS, "-A",
                              "-o", output], capture_output=True, text=True, timeout=60)
        assert got.returncode == 0, got.stderr
        dump = tmp_path / f"cluster.{output}"
        dump.write_text(got.stdout)
        answer = subprocess.run([sys.executable, "-m", "tailor.cli.main", "connectivity", "-f", str(dump),
                                 "--format", "json"], capture_output=True, text=True, timeout=120)
        assert answer.returncode == 0, answer.stderr
        connections = json.loads(answer.stdout)["connections"]
        assert any(c["src"].startswith("z/") and c["dst"].startswith("y/") for c in connections)
        probed = lab.probe(data["name"])
        assert probe.restrict(connections, probe.targets(data)[0]) == probed["connections"]
        assert probed["connections"] == probe.expected(data)
    finally:
        lab.down(data["name"], echo=lambda _: None)
