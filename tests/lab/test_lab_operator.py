"""The operator end to end on the kernel datapath: a 2-node kernel lab whose
control plane is an API server (kmock, over HTTP) and `tailor operator`
(`tailor lab up --control operator`), not the lab's controller.

Objects go in through the API; the agents (kernel backend, in their node
namespaces) ask the operator at CNI ADD; the real CNI plugin wires the pods.
Every PodProgram reaches Loaded with the features and hash the compiler
gives for that pod, the agents hold those hashes, real TCP/UDP traffic
equals the model; then policy and label changes made through the API reach
exactly the affected pods' kernel programs, and traffic follows; kubectl
lists the PodPrograms; `down` leaves nothing.
"""
from __future__ import annotations

import copy
import os
import shutil
import subprocess

import grpc
import pytest
import yaml
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.api import agent_pb2_grpc as pb_grpc
from tailor.lab import agents, lab
from tailor.lab.control import objects
from tailor.lab.control import operated
from tailor.lab.probing import probe
from tailor.lab import processes
from tailor.lab import state as state_
from tailor.operator.compiler import build

pytestmark = [pytest.mark.kernel, pytest.mark.operator]
HERE = os.path.dirname(__file__)
TOPOLOGY = os.path.join(HERE, "..", "policy", "cases", "topology.yaml")
POLICIES = os.path.join(HERE, "policies.yaml")
NAME = "top"


@pytest.fixture(scope="module")
def up():
    if state_.exists(NAME):
        lab.down(NAME, echo=lambda _: None)
    lines = []
    data = lab.up([TOPOLOGY, POLICIES], nodes=2, backend="kernel", name=NAME, control="operator",
                  echo=lines.append)
    data["echo"] = lines
    yield data
    if state_.exists(NAME):
        lab.down(NAME, echo=lambda _: None)


@pytest.fixture(scope="module")
def current(up):
    """The manifests that say what the API holds now (tests edit both)."""
    return {"topology": TOPOLOGY, "policies": POLICIES}


def _pod_key(pod: dict) -> str:
    return f"{pod['namespace']}/{pod['name']}"


def _compiled(data: dict, manifests: list[str] | None = None) -> dict[str, build.Built]:
    """{"ns/name": Built} as the compiler makes them from the lab's manifests
    (or `manifests`) at the lab's addresses: what the operator must load."""
    lab_view = dict(data, manifests=manifests or data["manifests"])
    return {ref.split("[")[0]: built for ref, built in build.build(probe.model(lab_view)).items()}


def _check_matches_compiler(data: dict, compiled: dict[str, build.Built]) -> None:
    pps = operated.podprograms(data)
    held = agents.held(data)
    assert set(pps) == {_pod_key(p) for p in data["pods"]}
    for pod in data["pods"]:
        key = _pod_key(pod)
        status, want = pps[key]["status"], compiled[key].programs
        assert status["state"] == "Loaded", (key, status)
        assert status["node"] == pod["node"], key
        assert status["features"] == list(want.features), key
        assert status["instructions"] == want.instructions, key
        assert status["hash"] == want.hash == held[key], key
        assert pps[key]["metadata"]["ownerReferences"][0]["uid"] == pod["uid"], key


def _probe_equals_model(data: dict, manifests: list[str] | None = None) -> list[dict]:
    result = probe.run(data)
    assert probe.check(dict(data, manifests=manifests or data["manifests"]), result) == []
    return result["connections"]


def test_every_podprogram_is_loaded_with_what_the_compiler_gives_and_the_agents_hold_it(up):
    data = state_.load(NAME)
    assert data["ready"] and data["control"] == "operator" and len(data["pods"]) == 9
    _check_matches_compiler(data, _compiled(data))
    # Every pod's program was handed out at its CNI ADD, none pushed twice.
    assert data["pushes"]["handed"] == 9
    assert data["pushes"]["push_failures"] == 0
    status = lab.status(NAME)
    assert status["control_plane"] == {"apiserver": "running", "operator": "running"}
    assert {p["program"]["state"] for p in status["pods"]} == {"LOADED"}


def test_real_traffic_equals_the_model(up):
    connections = _probe_equals_model(state_.load(NAME))
    assert {"src": "y/a[Pod]", "dst": "x/a[Pod]", "protocol": "TCP", "ports": "80"} in connections
    assert not [c for c in connections if c["dst"] == "y/b[Pod]"]      # deny-ingress


def test_a_policy_edit_through_the_api_reloads_exactly_its_subjects(current, tmp_path):
    data = state_.load(NAME)
    before = agents.held(data)
    # x/a: allow y on TCP 81 instead of 80.
    docs = list(yaml.safe_load_all(open(current["policies"])))
    edited = copy.deepcopy(docs)
    edited[0]["spec"]["ingress"][0]["ports"] = [{"protocol": "TCP", "port": 81}]
    path = tmp_path / "policies.yaml"
    path.write_text(yaml.safe_dump_all(edited))
    seen = operated.events(data)
    operated.client(data).patch(objects.path("NetworkPolicy", "x", "a-from-y"),
                                {"spec": edited[0]["spec"]})
    operated.sync(data, lambda: agents.held(data), events_after=seen)
    after = agents.held(data)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"x/a"}
    current["policies"] = str(path)
    manifests = [current["topology"], current["policies"]]
    _check_matches_compiler(data, _compiled(data, manifests))
    connections = _probe_equals_model(data, manifests)
    assert {"src": "y/a[Pod]", "dst": "x/a[Pod]", "protocol": "TCP", "ports": "81"} in connections


def test_a_label_change_through_the_api_moves_a_pod_out_of_a_policy(current, tmp_path):
    """z/c's egress allows UDP serve-81-udp only to x/b (pod=b in ns x):
    relabel x/b, and the group z/c's rule tests loses x/b (an UpdateGroups to
    the nodes holding it) while every program stays; traffic z/c -> x/b UDP stops."""
    data = state_.load(NAME)
    before = agents.held(data)
    assert {"src": "z/c[Pod]", "dst": "x/b[Pod]", "protocol": "UDP", "ports": "81"} in probe.run(data)["connections"]
    seen, sent = operated.events(data), operated.metrics(data)["tailor_operator_group_updates_total"]
    operated.client(data).patch(objects.path("Pod", "x", "b"), {"metadata": {"labels": {"pod": "b2"}}})
    operated.sync(data, lambda: agents.held(data), events_after=seen)
    assert operated.metrics(data)["tailor_operator_group_updates_total"] > sent   # z/c's peers
    after = agents.held(data)
    # Peers are node data: a selector's member leaving updates the node's groups, not z/c's program.
    assert after == before
    topology = list(yaml.safe_load_all(open(current["topology"])))
    for doc in topology:
        for item in doc.get("items", [doc]):
            meta = item.get("metadata", {})
            if item.get("kind") == "Pod" and (meta.get("namespace"), meta.get("name")) == ("x", "b"):
                meta["labels"]["pod"] = "b2"
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump_all(topology))
    current["topology"] = str(path)
    manifests = [current["topology"], current["policies"]]
    _check_matches_compiler(data, _compiled(data, manifests))
    connections = _probe_equals_model(data, manifests)
    assert not [c for c in connections if c["src"] == "z/c[Pod]" and c["dst"] == "x/b[Pod]"
                and c["protocol"] == "UDP"]


def _program_ids(data: dict) -> dict[str, tuple[int, int]]:
    """{"ns/name": (ingress program id, egress program id)} as the agents report them."""
    out = {}
    for node in data["nodes"]:
        with grpc.insecure_channel(f"unix:{node['agent_socket']}") as channel:
            stub = pb_grpc.AgentStub(channel)
            for pod in (p for p in data["pods"] if p["node"] == node["name"]):
                got = stub.Get(pb.GetRequest(pod=pb.PodRef(namespace=pod["namespace"], name=pod["name"])),
                               timeout=5)
                out[_pod_key(pod)] = (got.ingress.program_id, got.egress.program_id)
    return out


def test_an_operator_restart_reloads_no_kernel_program(current):
    data = state_.load(NAME)
    before = _program_ids(data)
    assert all(i and e for i, e in before.values())
    assert processes.stop(data, "operator")
    processes.restart(data, "operator")
    processes.wait_socket(data, "operator", processes.source_socket(data))
    counters = operated.sync(data, lambda: agents.held(data))
    assert counters["applies"] == 0 and counters["repairs"] == 0     # adopted, not loaded again
    assert _program_ids(data) == before
    _probe_equals_model(data, [current["topology"], current["policies"]])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_lists_the_podprograms(up):
    data = state_.load(NAME)
    out = subprocess.run(["kubectl", "--kubeconfig", data["api"]["kubeconfig"], "get", "pp", "-A",
                          "--no-headers"], capture_output=True, text=True, timeout=30,
                         env={k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
                         | {"HOME": str(data["run_dir"])})
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert len(rows) == 9
    assert {r[-2] for r in rows} == {"Loaded"}            # STATE, then AGE
    assert {(r[0], r[1], r[2]) for r in rows} == {(p["namespace"], p["name"], p["node"])
                                                  for p in data["pods"]}


def test_down_leaves_nothing(up):
    data = state_.load(NAME)
    lab.down(NAME, echo=lambda _: None)
    assert lab.leftovers(data) == []
    assert not os.path.exists(data["api"]["kubeconfig"])
