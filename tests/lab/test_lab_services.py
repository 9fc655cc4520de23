"""Services on a kernel lab whose nodes carry kube-proxy's nftables rules
(`--kube-proxy`): every Service connection gets the verdict the model gives
its backend, on the backend's node and across nodes (the replies of a
same-node backend go back through the node, which undoes the DNAT); a
Service with no endpoint rejects at once."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tailor.lab import lab
from tailor.lab import netns
from tailor.lab.probing import probe
from tailor.lab import state as state_

pytestmark = pytest.mark.kernel
HERE = os.path.dirname(__file__)
TOPOLOGY = os.path.join(HERE, "..", "policy", "cases", "topology.yaml")
POLICIES = os.path.join(HERE, "policies.yaml")
SERVICES = os.path.join(HERE, "services.yaml")
NAME = "tsvc"


@pytest.fixture(scope="module")
def up():
    if state_.exists(NAME):
        lab.down(NAME, echo=lambda _: None)
    data = lab.up([TOPOLOGY, POLICIES, SERVICES], nodes=2, backend="kernel", name=NAME, kube_proxy=True,
                  echo=lambda _: None)
    yield data
    lab.down(NAME, echo=lambda _: None)
    assert lab.leftovers(data) == []


def test_service_connections_are_judged_on_their_backends(up):
    data = state_.load(NAME)
    assert {s["ref"]: s["cluster_ips"] for s in data["services"]} == {
        "x/web[Service]": ["10.96.0.10"], "y/isolated[Service]": ["10.96.5.5"],
        "y/nobody[Service]": ["10.96.0.11"]}
    got = lab.probe(NAME)
    assert probe.check(data, got) == []
    reached = {(c["src"], c["dst"], c["protocol"]) for c in got["services"]}
    # a-from-y: only namespace y reaches x/a, so only y reaches x/web, on TCP.
    assert {s for s, d, p in reached if d == "x/web[Service]"} == {"y/a[Pod]", "y/b[Pod]", "y/c[Pod]"}
    assert not any(d == "y/isolated[Service]" for _, d, _ in reached)
    # The backend's own node among the clients: its replies were not redirected past the DNAT.
    where = {p["ref"]: p["node"] for p in data["pods"]}
    assert any(where[s] == where["x/a[Pod]"] for s, d, _ in reached if d == "x/web[Service]")


def test_a_service_without_endpoints_rejects_at_once(up):
    data = state_.load(NAME)
    client = next(p for p in data["pods"] if p["ref"] == "y/a[Pod]")
    out = subprocess.run(netns.exec_argv(client["netns"], [sys.executable, "-m", "tailor.lab.probing.dial",
                                                           "--timeout", "5"]),
                         input=json.dumps([{"id": 0, "address": "10.96.0.11", "protocol": "TCP", "port": 80}]),
                         capture_output=True, text=True, check=True).stdout
    # A reset, not silence: "timeout" would be the 5 s running out.
    assert json.loads(out)["0"] == "refused"
