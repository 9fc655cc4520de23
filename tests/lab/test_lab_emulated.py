"""The emulated lab (no root needed): agents as plain processes with the
userspace VM, pods wired through the lab's stand-in for the CNI, probe
answered by the agents' Trace RPC. Its answer equals the model."""
from __future__ import annotations

import os

import pytest

from tailor.lab import lab
from tailor.lab.probing import probe
from tailor.lab import processes
from tailor.lab import state as state_
from tailor.operator.cluster import manifests
from tailor.operator.policy import reachability

HERE = os.path.dirname(__file__)
TOPOLOGY = os.path.join(HERE, "..", "policy", "cases", "topology.yaml")
POLICIES = os.path.join(HERE, "policies.yaml")


@pytest.fixture
def lab_root(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_LAB_ROOT", str(tmp_path / "labs"))
    return tmp_path / "labs"


def test_emulated_lab_probe_equals_the_model_and_down_removes_it(lab_root):
    lines = []
    data = lab.up([TOPOLOGY, POLICIES], nodes=3, backend="emulated", name="em", echo=lines.append)
    try:
        assert any("emulated" in line and "Trace" in line for line in lines)
        assert "  pods 9/9" in lines
        assert {p["node"] for p in data["pods"]} == {"node1", "node2", "node3"}
        status = lab.status("em")
        assert {p["program"]["state"] for p in status["pods"]} == {"LOADED"}
        got = lab.probe("em")
        assert got["datapath"] == "emulated"
        assert any("Trace" in n for n in got["notes"])
        model = probe.restrict(reachability.connectivity(manifests.load(data["manifests"])),
                               probe.targets(data)[0])
        assert got["connections"] == model
        # Node to pod and pod to outside, by the agents' Trace, as the model says.
        assert got["nodes"] and got["outside"] and probe.check(data, got) == []
    finally:
        lab.down("em", echo=lines.append)
    assert not any(processes.alive(e) for e in data["processes"].values())
    assert not os.path.exists(lab_root / "em")


def test_up_refuses_a_second_lab_of_the_same_name_and_unknown_labs(lab_root):
    lab.up([TOPOLOGY], nodes=1, backend="emulated", name="dup", echo=lambda _: None)
    try:
        with pytest.raises(lab.LabError, match="already exists"):
            lab.up([TOPOLOGY], backend="emulated", name="dup", echo=lambda _: None)
    finally:
        lab.down("dup", echo=lambda _: None)
    with pytest.raises(lab.LabError, match="no lab named dup"):
        lab.probe("dup")


def test_state_file_records_what_down_undoes(lab_root):
    lab.up([TOPOLOGY], nodes=2, backend="emulated", name="st", echo=lambda _: None)
    try:
        saved = state_.load("st")
        assert saved["ready"] and saved["step"] == "sync"
        assert set(saved["processes"]) == {"controller", "agent/node1", "agent/node2"}
        assert all(p["wired"] and p["addresses"] for p in saved["pods"])
        assert saved["manifests"] == [os.path.abspath(TOPOLOGY)]
    finally:
        lab.down("st", echo=lambda _: None)


WORKLOAD = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: y, annotations: {tailor.dev/ip-families: IPv4}}
spec:
  selector: {matchLabels: {pod: web}}
  template:
    metadata: {labels: {pod: web}}
    spec:
      containers:
      - name: web
        image: registry.k8s.io/e2e-test-images/agnhost:2.53
        ports: [{containerPort: 80, name: serve-80-tcp, protocol: TCP}]
"""


@pytest.mark.operator
def test_emulated_lab_with_the_operator_equals_the_model(lab_root, tmp_path):
    """--control operator without root: the API server and `tailor operator`
    compile and push; a Deployment runs as its representative pod."""
    workload = tmp_path / "web.yaml"
    workload.write_text(WORKLOAD)
    lines = []
    data = lab.up([TOPOLOGY, POLICIES, str(workload)], nodes=2, backend="emulated", name="eo",
                  control="operator", echo=lines.append)
    try:
        assert set(data["processes"]) == {"apiserver", "operator", "agent/node1", "agent/node2"}
        assert any(line.startswith("  every PodProgram Loaded: 10 pods") for line in lines)
        got = lab.probe("eo")
        assert got["connections"] == probe.expected(data)
        assert probe.check(data, got) == []
        assert any(c["dst"] == "y/web[Deployment]" for c in got["connections"])
        status = lab.status("eo")
        assert {p["program"]["state"] for p in status["pods"]} == {"LOADED"}
        assert status["control_plane"] == {"apiserver": "running", "operator": "running"}
    finally:
        lab.down("eo", echo=lines.append)
    assert not any(processes.alive(e) for e in data["processes"].values())
    assert lab.leftovers(data) == []


@pytest.mark.operator
def test_an_object_the_api_refuses_fails_up_with_its_name_and_leaves_nothing(lab_root, tmp_path):
    clash = tmp_path / "clash.yaml"
    clash.write_text(WORKLOAD.replace("name: web, namespace: y", "name: a, namespace: x"))
    with pytest.raises(lab.LabError) as failed:
        lab.up([TOPOLOGY, str(clash)], nodes=1, backend="emulated", name="ec", control="operator",
               echo=lambda _: None)
    message = str(failed.value)
    assert "step 'api' failed" in message and "Pod x/a" in message and "409" in message
    assert "apiserver.log" in message
    assert not os.path.exists(lab_root / "ec")


def test_emulated_lab_probes_services_through_the_programs_translation(lab_root):
    """The agents' Trace follows a Service translation: the source's program
    picks a backend, which (on its own node's agent) judges the connection."""
    services = os.path.join(HERE, "services.yaml")
    data = lab.up([TOPOLOGY, POLICIES, services], nodes=2, backend="emulated", name="ems",
                  echo=lambda _: None)
    try:
        got = lab.probe("ems")
        assert probe.check(data, got) == []
        reached = {(c["src"], c["dst"]) for c in got["services"]}
        # Only namespace y reaches x/a (its policy), so only y reaches x/web.
        assert {s for s, d in reached if d == "x/web[Service]"} == {"y/a[Pod]", "y/b[Pod]", "y/c[Pod]"}
        assert not any(d in ("y/isolated[Service]", "y/nobody[Service]") for _, d in reached)
    finally:
        lab.down("ems", echo=lambda _: None)
