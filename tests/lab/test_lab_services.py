"""Services on a kernel lab, translated by the pods' own programs — alone,
and with the nodes also carrying kube-proxy's nftables rules
(`--kube-proxy`), which must then neither break nor translate anything
twice: every Service connection gets the verdict the model gives its
backend, on the backend's node and across nodes; a Service with no
endpoint rejects at once (tailor's node rules, or kube-proxy's)."""
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


@pytest.fixture(scope="module", params=[False, True], ids=["tailor-alone", "with-kube-proxy"])
def up(request):
    name = "tsvk" if request.param else "tsvn"
    if state_.exists(name):
        lab.down(name, echo=lambda _: None)
    data = lab.up([TOPOLOGY, POLICIES, SERVICES], nodes=2, backend="kernel", name=name,
                  kube_proxy=request.param, echo=lambda _: None)
    yield data
    lab.down(name, echo=lambda _: None)
    assert lab.leftovers(data) == []


def test_service_connections_are_judged_on_their_backends(up):
    data = state_.load(up["name"])
    assert {s["ref"]: s["cluster_ips"] for s in data["services"]} == {
        "x/web[Service]": ["10.96.0.10"], "y/isolated[Service]": ["10.96.5.5"],
        "y/nobody[Service]": ["10.96.0.11"]}
    got = lab.probe(data["name"])
    assert probe.check(data, got) == []
    reached = {(c["src"], c["dst"], c["protocol"]) for c in got["services"]}
    # a-from-y: only namespace y reaches x/a, so only y reaches x/web, on TCP.
    assert {s for s, d, p in reached if d == "x/web[Service]"} == {"y/a[Pod]", "y/b[Pod]", "y/c[Pod]"}
    assert not any(d == "y/isolated[Service]" for _, d, _ in reached)
    # The backend's own node among the clients: its replies were not redirected past the DNAT.
    where = {p["ref"]: p["node"] for p in data["pods"]}
    assert any(where[s] == where["x/a[Pod]"] for s, d, _ in reached if d == "x/web[Service]")


def test_a_service_without_endpoints_rejects_at_once(up):
    data = state_.load(up["name"])
    client = next(p for p in data["pods"] if p["ref"] == "y/a[Pod]")
    out = subprocess.run(netns.exec_argv(client["netns"], [sys.executable, "-m", "tailor.lab.probing.dial",
                                                           "--timeout", "5"]),
                         input=json.dumps([{"id": 0, "address": "10.96.0.11", "protocol": "TCP", "port": 80}]),
                         capture_output=True, text=True, check=True).stdout
    # A reset, not silence: "timeout" would be the 5 s running out.
    assert json.loads(out)["0"] == "refused"


NODE_PORTS = os.path.join(HERE, "nodeports.yaml")


def test_node_ports_kube_proxy_serves_meet_the_backends_ingress_policy():
    """kube-proxy keeps node ports: from the outside host to every node's
    node port, each connection judged by its backend's ingress policy on
    the address kube-proxy leaves it (masqueraded to the node the
    connection arrived at; the client's own with externalTrafficPolicy
    Local), as the model says."""
    name = "tsnp"
    if state_.exists(name):
        lab.down(name, echo=lambda _: None)
    data = lab.up([TOPOLOGY, POLICIES, NODE_PORTS], nodes=2, backend="kernel", name=name, kube_proxy=True,
                  echo=lambda _: None)
    try:
        got = lab.probe(name)
        assert probe.check(data, got) == []
        where = {p["ref"]: p["node"] for p in data["pods"]}
        reached = {(c["dst"], c["protocol"]) for c in got["node_ports"]}
        # x/a: only through its own node (masqueraded to it: the node is always let in).
        assert {d for d, _ in reached if d.startswith("x/np-a")} == {f"x/np-a[Service]@{where['x/a[Pod]']}"}
        # z/b, Local: only through the node it runs on, both protocols, from the client's address.
        assert {(d, p) for d, p in reached if d.startswith("z/np-b-local")} == {
            (f"z/np-b-local[Service]@{where['z/b[Pod]']}", p) for p in ("TCP", "UDP")}
        lb = [s for s in data["services"] if s["ref"] == "y/lb-b[Service]"][0]
        assert lb["node_ports"][0] in range(30000, 32768)
    finally:
        lab.down(name, echo=lambda _: None)
    assert lab.leftovers(data) == []
