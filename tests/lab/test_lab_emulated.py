"""The emulated lab (no root needed): agents as plain processes with the
userspace VM, pods wired through the lab's stand-in for the CNI, probe
answered by the agents' Trace RPC. Its answer equals the model."""
from __future__ import annotations

import os

import pytest

from tailor.datapath.lab import lab, probe, processes
from tailor.datapath.lab import state as state_
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
    data = lab.up([TOPOLOGY], nodes=2, backend="emulated", name="st", echo=lambda _: None)
    try:
        saved = state_.load("st")
        assert saved["ready"] and saved["step"] == "sync"
        assert set(saved["processes"]) == {"controller", "agent/node1", "agent/node2"}
        assert all(p["wired"] and p["addresses"] for p in saved["pods"])
        assert saved["manifests"] == [os.path.abspath(TOPOLOGY)]
    finally:
        lab.down("st", echo=lambda _: None)
