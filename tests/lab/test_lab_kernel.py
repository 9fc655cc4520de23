"""A 2-node kernel lab on the e2e topology: real agents, the real CNI
plugin, real TCP/UDP connections. The probe equals the model; same-node
traffic is redirected; an agent killed with -9 and restarted keeps a TCP
stream going and adopts its pods; `down` leaves nothing behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import grpc
import pytest

from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.api import agent_pb2_grpc as pb_grpc
from tailor.lab import lab
from tailor.lab import netns
from tailor.lab.probing import probe
from tailor.lab import processes
from tailor.lab import state as state_
from tailor.operator.cluster import manifests
from tailor.operator.policy import reachability

pytestmark = pytest.mark.kernel
HERE = os.path.dirname(__file__)
TOPOLOGY = os.path.join(HERE, "..", "policy", "cases", "topology.yaml")
POLICIES = os.path.join(HERE, "policies.yaml")
NAME = "tk"
BPFFS = "/sys/fs/bpf"


def _root_links() -> list[dict]:
    return json.loads(subprocess.run(["ip", "-j", "-d", "link"], capture_output=True, text=True,
                                     check=True).stdout)


def _ours(links: list[dict]) -> set[str]:
    """Root-namespace links the lab could have made (it must make none):
    the switch's names, or a pod veth whose alias names one of our containers."""
    return {link["ifname"] for link in links
            if link["ifname"] in ("br0", "n1", "n2") or f"tailor:{NAME}-" in link.get("ifalias", "")}


def _snapshot() -> dict:
    return {"netns": [n for n in netns.names() if n.startswith(f"{NAME}.")],
            "links": _ours(_root_links()),
            "bpffs": [e for e in os.listdir(BPFFS) if e.startswith(f"tailor-lab-{NAME}")],
            "run": os.path.exists(state_.run_dir(NAME))}


@pytest.fixture(scope="module")
def up():
    if state_.exists(NAME):
        lab.down(NAME, echo=lambda _: None)
    before = _snapshot()
    assert before == {"netns": [], "links": set(), "bpffs": [], "run": False}
    started = time.monotonic()
    data = lab.up([TOPOLOGY, POLICIES], nodes=2, backend="kernel", name=NAME, echo=lambda _: None)
    data["seconds"] = time.monotonic() - started
    yield data
    if state_.exists(NAME):
        lab.down(NAME, echo=lambda _: None)


def _stub(data: dict, node: str) -> pb_grpc.AgentStub:
    return pb_grpc.AgentStub(grpc.insecure_channel(f"unix:{state_.node(data, node)['agent_socket']}"))


def test_up_wires_every_pod_on_both_nodes(up):
    data = state_.load(NAME)
    assert data["ready"] and len(data["pods"]) == 9
    assert {p["node"] for p in data["pods"]} == {"node1", "node2"}
    for pod in data["pods"]:
        subnet = state_.node(data, pod["node"])["pod_cidrs"][0].rsplit(".", 2)[0]
        assert pod["addresses"][0].startswith(subnet + "."), pod
        assert pod["interface"].startswith("tl")
    status = lab.status(NAME)
    assert {p["program"]["state"] for p in status["pods"]} == {"LOADED"}
    assert status["controller"] == "running"


def test_probe_equals_the_model_on_the_probed_ports(up):
    data = state_.load(NAME)
    got = lab.probe(NAME)
    model = probe.restrict(reachability.connectivity(manifests.load(data["manifests"])),
                           probe.targets(data)[0])
    assert got["connections"] == model
    assert got["probed"] == ["TCP 80-81", "UDP 80-81", "outside TCP/UDP 8080"]
    # Node to pod, pod to the outside host, and the masquerade, against the model too.
    assert probe.check(data, got) == []
    assert any("SCTP not probed" in n for n in got["notes"])
    node = {p["ref"]: p["node"] for p in data["pods"]}
    pairs = {(c["src"], c["dst"]) for c in got["connections"]}
    assert any(node[s] != node[d] for s, d in pairs) and any(node[s] == node[d] for s, d in pairs)
    # The policies took effect: something was denied.
    assert ("x/b[Pod]", "y/b[Pod]") not in pairs
    assert {"src": "z/c[Pod]", "dst": "x/b[Pod]", "protocol": "UDP", "ports": "81"} in got["connections"]


def test_every_node_reaches_its_own_pods_and_pods_reach_the_outside_as_their_node(up):
    data = state_.load(NAME)
    got = lab.probe(NAME)
    nodes = {(c["src"], c["dst"], c["protocol"]): c["ports"] for c in got["nodes"]}
    for pod in data["pods"]:
        # Isolated or not: a kubelet's probe gets in on every declared port.
        for protocol in ("TCP", "UDP"):
            assert nodes[(f"{pod['node']}[Node]", pod["ref"], protocol)] == "80-81", pod["ref"]
    assert got["outside"], "no pod reached the outside host"
    node_ips = {a.split("/")[0] for n in data["nodes"] for a in n["underlay"]}
    assert got["outside_seen"] and set(got["outside_seen"]) <= node_ips
    # The routes between nodes are the agents', not the lab's.
    for node in data["nodes"]:
        routes = netns.ip("route", netns=node["netns"])
        assert "10.244." in routes and all("proto 116" in line for line in routes.splitlines()
                                           if line.startswith("10.244.") and "/24" in line)


E2E_SERVICES = os.path.join(HERE, "..", "policy", "cases", "services.yaml")


def _backend_of(service_ref: str) -> str:
    """x/s-x-a[Service] -> x/a[Pod]: the e2e model's per-pod Service's pod."""
    namespace, name = service_ref.removesuffix("[Service]").split("/")
    return f"{namespace}/{name.removeprefix(f's-{namespace}-')}[Pod]"


@pytest.mark.parametrize("nodes,underlay", [(1, "switched"), (2, "routed")])
def test_other_layouts_probe_as_the_model(nodes, underlay):
    """With the e2e model's per-pod Services: every pod to every other pod
    directly and through its Service, as the upstream suite probes."""
    name = f"tk{nodes}{underlay[0]}"
    if state_.exists(name):
        lab.down(name, echo=lambda _: None)
    data = lab.up([TOPOLOGY, POLICIES, E2E_SERVICES], nodes=nodes, backend="kernel", name=name,
                  underlay=underlay, echo=lambda _: None)
    try:
        got = lab.probe(name)
        assert probe.check(data, got) == []
        assert got["connections"] and got["nodes"] and got["outside"]
        # Through the Services, the same pairs as directly (one backend each).
        direct = {(c["src"], c["dst"], c["protocol"], c["ports"]) for c in got["connections"]}
        via = {(c["src"], _backend_of(c["dst"]), c["protocol"], c["ports"]) for c in got["services"]}
        assert via == direct
        if underlay == "routed":
            assert data["routing"] == "vxlan"
            routes = netns.ip("route", netns=data["nodes"][0]["netns"])
            assert "dev tailor.vxlan proto 116 onlink" in routes
            assert set(got["outside_seen"]) == {"172.31.1.2", "172.31.2.2"}
    finally:
        lab.down(name, echo=lambda _: None)
    assert lab.leftovers(data) == []


VIP = "10.96.0.10"


def _kube_proxy_dnat(node: dict, backend: dict) -> None:
    """A Service as kube-proxy's nftables mode would translate it: VIP:80 ->
    the backend, in prerouting (pods) and output (the node itself)."""
    rules = textwrap.dedent(f"""
        table ip kube-proxy-test {{
          chain prerouting {{
            type nat hook prerouting priority dstnat; policy accept;
            ip daddr {VIP} tcp dport 80 dnat to {backend["addresses"][0]}:80
          }}
          chain output {{
            type nat hook output priority -100; policy accept;
            ip daddr {VIP} tcp dport 80 dnat to {backend["addresses"][0]}:80
          }}
        }}""")
    subprocess.run(netns.exec_argv(node["netns"], ["nft", "-f", "-"]), input=rules, text=True, check=True)


def _dial_one(pod_or_node: dict, address: str, port: int) -> str:
    out = subprocess.run(netns.exec_argv(pod_or_node["netns"], [sys.executable, "-m", "tailor.lab.probing.dial"]),
                         input=json.dumps([{"id": 0, "address": address, "protocol": "TCP", "port": port}]),
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return json.loads(out)["0"]


def test_a_service_kube_proxy_translates_works_from_the_backends_own_node(up):
    # The measured failure: a backend's reply to a client of its own node was
    # redirected straight to the client, past the node's conntrack, and kept
    # the backend's address where the client expected the Service's.
    from tailor.operator import policy

    data = state_.load(NAME)
    state = probe.model(data)
    pods = {p["ref"]: p for p in data["pods"]}
    ok = [(c, b) for c in state.sorted_pods() for b in state.sorted_pods()
          if c is not b and pods[c.ref]["node"] == pods[b.ref]["node"]
          and policy.connection_allowed(state, c, b, "TCP", 80)
          and policy.egress_verdict(state, c, VIP, "TCP", 80).allowed]
    assert ok, "the topology has no same-node pair the policies allow"
    client, backend = (pods[p.ref] for p in ok[0])
    node = state_.node(data, backend["node"])
    _kube_proxy_dnat(node, backend)
    server = subprocess.Popen(netns.exec_argv(backend["netns"], [sys.executable, "-m", "tailor.lab.probing.serve",
                                                                  "--tcp", "80"]), stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        assert _dial_one(client, VIP, 80) == "open"
        # Pod to pod, by address, is still redirected, and still works.
        assert _dial_one(client, backend["addresses"][0], 80) == "open"
        # The node itself (a hostNetwork client) through the Service too.
        assert _dial_one(node, VIP, 80) == "open"
    finally:
        server.kill()
        server.wait()
        subprocess.run(netns.exec_argv(node["netns"], ["nft", "delete", "table", "ip", "kube-proxy-test"]))


def test_same_node_traffic_is_redirected(up):
    data = state_.load(NAME)
    lab.probe(NAME)
    for node in ("node1", "node2"):
        stub = _stub(data, node)
        redirected = sum(stub.Counters(pb.CountersRequest(pod=pb.PodRef(
            namespace=p["namespace"], name=p["name"]))).egress.redirected
            for p in data["pods"] if p["node"] == node)
        assert redirected > 0, node


def test_agent_kill_9_keeps_a_tcp_stream_and_adopts_its_pods(up):
    data = state_.load(NAME)
    src, dst = state_.pod(data, "x/c"), state_.pod(data, "x/b")   # node1 -> node2, TCP 80 allowed
    assert (src["node"], dst["node"]) == ("node1", "node2")
    server = subprocess.Popen(netns.exec_argv(dst["netns"], [sys.executable, "-m", "tailor.lab.probing.serve",
                                                             "--tcp", "80"]), stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert server.stdout.readline().strip() == "ready"
        client = subprocess.Popen(netns.exec_argv(src["netns"], [
            sys.executable, "-m", "tailor.lab.probing.dial", "--stream", dst["addresses"][0], "80",
            "--seconds", "4", "--interval", "0.05"]), stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "connected"
        time.sleep(0.7)
        for node in ("node1", "node2"):
            entry = data["processes"][f"agent/{node}"]
            assert processes.signal_process(entry, signal.SIGKILL)
            while processes.alive(entry):
                time.sleep(0.02)
        time.sleep(0.5)
        for node in ("node1", "node2"):
            processes.restart(data, f"agent/{node}")
            processes.wait_agent(data, state_.node(data, node))
        out, _ = client.communicate(timeout=15)
        result = json.loads(out.strip().splitlines()[-1])
        assert result["error"] is None, result
        assert result["max_gap"] < 1.0, result
        assert result["received"] >= result["sent"] - 2 > 50, result
    finally:
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    for node in ("node1", "node2"):
        listed = _stub(data, node).List(pb.ListRequest()).pods
        mine = {f"{p['namespace']}/{p['name']}" for p in data["pods"] if p["node"] == node}
        assert {f"{s.pod.namespace}/{s.pod.name}" for s in listed} == mine
        assert {pb.State.Name(s.state) for s in listed} == {"LOADED"}
    # The restarted agents still enforce: the probe is unchanged.
    got = lab.probe(NAME)
    model = probe.restrict(reachability.connectivity(manifests.load(data["manifests"])),
                           probe.targets(data)[0])
    assert got["connections"] == model


def test_down_leaves_nothing(up):
    lab.down(NAME, echo=lambda _: None)
    assert _snapshot() == {"netns": [], "links": set(), "bpffs": [], "run": False}
    assert up["seconds"] < 30


def test_a_failed_up_takes_down_what_it_made(monkeypatch):
    name = "tkf"
    monkeypatch.setattr(processes, "agent_argv", lambda data, node: [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(lab.LabError) as e:
        lab.up([TOPOLOGY], name=name, backend="kernel", echo=lambda _: None)
    assert "step 'agents' failed" in str(e.value) and "fix:" in str(e.value)
    kept = str(e.value).rsplit("logs kept in ", 1)[1].strip()
    assert os.path.exists(os.path.join(kept, "agent-node1.log"))
    shutil.rmtree(kept)
    assert [n for n in netns.names() if n.startswith(f"{name}.")] == []
    assert not os.path.exists(state_.run_dir(name))
    assert not os.path.exists(os.path.join(BPFFS, f"tailor-lab-{name}"))
