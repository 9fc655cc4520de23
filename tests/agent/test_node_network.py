"""The agent's node networking: which routes to other nodes' pods
(node/routes.py, pure), and their being made, changed and removed in real
network namespaces with the VXLAN device and the masquerade
(node/network.py, kernel)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import pytest

from tailor.datapath.agent.node import routes
from tailor.datapath.agent.node.routes import ClusterNode

A = ClusterNode("a", ("10.1.1.2", "fd00:1::2"), ("10.244.1.0/24", "fd00:10:244:1::/64"))
B = ClusterNode("b", ("10.1.1.3", "fd00:1::3"), ("10.244.2.0/24", "fd00:10:244:2::/64"))
C = ClusterNode("c", ("10.9.9.9",), ("10.244.3.0/24", "fd00:10:244:3::/64"))
EMPTY = ClusterNode("d", ("10.1.1.4",), ())


def on_link(address: str) -> bool:
    return address.startswith(("10.1.1.", "fd00:1::"))


def test_native_routes_each_other_node_via_its_address_of_the_family():
    plan = routes.plan("a", [C, EMPTY, B, A], "native", on_link)
    assert [(r.cidr, r.gateway, r.overlay) for r in plan.routes if r.node == "b"] == [
        ("10.244.2.0/24", "10.1.1.3", False), ("fd00:10:244:2::/64", "fd00:1::3", False)]
    assert not plan.vxlan and {r.node for r in plan.routes} == {"b"}
    # c is off link and has no IPv6 address: named, with the fix.
    assert any("node c" in p and "not on any subnet" in p and "--routing" in p for p in plan.problems)
    assert any("node c" in p and "no IPv6 address" in p for p in plan.problems)


def test_auto_goes_native_on_link_and_vxlan_elsewhere():
    plan = routes.plan("a", [A, B, C], "auto", on_link)
    native = {r.cidr for r in plan.routes if not r.overlay}
    overlay = [r for r in plan.routes if r.overlay]
    assert native == {"10.244.2.0/24", "fd00:10:244:2::/64"}
    assert {r.cidr for r in overlay} == {"10.244.3.0/24", "fd00:10:244:3::/64"}
    assert plan.vxlan and plan.vtep == "10.1.1.2" and not plan.problems
    # The remote VTEP's MAC is computed from its address; IPv6 pods ride the IPv4 VTEP.
    assert all(r.vtep == "10.9.9.9" and r.mac == "0e:74:0a:09:09:09" for r in overlay)
    assert plan.fdb == {"0e:74:0a:09:09:09": "10.9.9.9"}
    assert plan.neighbours == {"10.244.3.0": "0e:74:0a:09:09:09", "fd00:10:244:3::": "0e:74:0a:09:09:09"}


def test_vxlan_needs_ipv4_on_both_ends_and_off_routes_nothing():
    v6only = ClusterNode("e", ("fd00:1::5",), ("fd00:10:244:5::/64",))
    plan = routes.plan("a", [A, v6only], "vxlan", on_link)
    assert not plan.routes and "node e" in plan.problems[0] and "IPv4" in plan.problems[0]
    assert routes.plan("a", [A, B], "off", on_link) == routes.Plan((), (), False, None)
    with pytest.raises(ValueError, match="routing mode 'bgp'"):
        routes.plan("a", [A], "bgp", on_link)


def test_exempt_destinations_and_digest():
    assert routes.masquerade_exempt([A, B], ["10.96.0.0/12"]) == [
        "10.96.0.0/12", "10.244.1.0/24", "10.244.2.0/24", "fd00:10:244:1::/64", "fd00:10:244:2::/64"]
    assert routes.digest([A, B], ["10.96.0.0/12"]) == routes.digest([B, A], ["10.96.0.0/12"])
    assert routes.digest([A, B], []) != routes.digest([A], [])


# -- kernel ------------------------------------------------------------------------------

APPLY = textwrap.dedent("""
    import json, sys
    from tailor.datapath.agent.node import network, routes
    req = json.load(sys.stdin)
    nodes = [routes.ClusterNode(n["name"], tuple(n["addresses"]), tuple(n["pod_cidrs"]))
             for n in req["nodes"]]
    net = network.NodeNetwork(req["me"], mode=req["mode"], masquerade=True,
                              pod_cidrs=tuple(req["pod_cidrs"]), state_dir=req.get("state"))
    if req.get("remove"):
        net.remove()
        print(json.dumps({"routes": 0}))
    else:
        print(json.dumps({"routes": net.apply(nodes, req["cluster"]), "problems": net.problems}))
""")


def sh(*argv, check=True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(argv)}: {proc.stderr}")
    return proc.stdout


def in_ns(ns: str, *argv, stdin: str | None = None, check=True) -> str:
    proc = subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", "--", *argv], input=stdin,
                          capture_output=True, text=True, timeout=30)
    if check and proc.returncode:
        raise AssertionError(f"{ns}: {' '.join(argv)}: {proc.stderr}")
    return proc.stdout


@pytest.fixture
def two_subnets():
    """Nodes a (10.77.1.2) and b (10.77.2.2) behind router r (which has no
    route to any pod), each with one pod (10.244.1.5, 10.244.2.5) on a veth."""
    tag = uuid.uuid4().hex[:6]
    ns = {k: f"tn-{tag}-{k}" for k in ("r", "a", "b", "pa", "pb")}
    for name in ns.values():
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
    try:
        for i, node in ((1, "a"), (2, "b")):
            sh("ip", "-n", ns["r"], "link", "add", f"to{node}", "type", "veth", "peer", "name", "eth0",
               "netns", ns[node])
            sh("ip", "-n", ns["r"], "addr", "add", f"10.77.{i}.1/24", "dev", f"to{node}")
            sh("ip", "-n", ns["r"], "link", "set", f"to{node}", "up")
            sh("ip", "-n", ns[node], "addr", "add", f"10.77.{i}.2/24", "dev", "eth0")
            sh("ip", "-n", ns[node], "link", "set", "eth0", "up")
            sh("ip", "-n", ns[node], "route", "add", "default", "via", f"10.77.{i}.1")
            pod = ns[f"p{node}"]
            sh("ip", "-n", ns[node], "link", "add", "pod0", "type", "veth", "peer", "name", "eth0",
               "netns", pod)
            sh("ip", "-n", ns[node], "addr", "add", f"10.244.{i}.1/24", "dev", "pod0")
            sh("ip", "-n", ns[node], "link", "set", "pod0", "up")
            sh("ip", "-n", pod, "addr", "add", f"10.244.{i}.5/24", "dev", "eth0")
            sh("ip", "-n", pod, "link", "set", "eth0", "up")
            sh("ip", "-n", pod, "route", "add", "default", "via", f"10.244.{i}.1")
        for name in (ns["r"], ns["a"], ns["b"]):
            in_ns(name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        yield ns
    finally:
        for name in ns.values():
            sh("ip", "netns", "delete", name, check=False)


def apply(ns: str, me: str, nodes, mode: str = "auto", **extra) -> dict:
    request = {"me": me, "mode": mode, "cluster": [], "nodes": [n.__dict__ for n in nodes],
               "pod_cidrs": [c for n in nodes if n.name == me for c in n.pod_cidrs], **extra}
    return json.loads(in_ns(ns, sys.executable, "-c", APPLY, stdin=json.dumps(request)))


def connect(ns: str, server_ns: str, address: str, port: int) -> str:
    """TCP connect from `ns` to a one-shot server in `server_ns`, which
    answers with the peer address it saw."""
    server = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{server_ns}", "--", sys.executable, "-c",
                               textwrap.dedent(f"""
        import socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", {port})); s.listen(); print("ready", flush=True)
        s.settimeout(10); c, a = s.accept(); c.sendall(a[0].encode()); c.close()
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        return in_ns(ns, sys.executable, "-c", textwrap.dedent(f"""
            import socket
            s = socket.create_connection(("{address}", {port}), timeout=3)
            print(s.recv(64).decode())
        """), check=False).strip()
    finally:
        server.kill()
        server.wait()


@pytest.mark.kernel
def test_vxlan_routes_masquerade_and_their_removal(two_subnets, tmp_path):
    ns = two_subnets
    a = ClusterNode("a", ("10.77.1.2",), ("10.244.1.0/24",))
    b = ClusterNode("b", ("10.77.2.2",), ("10.244.2.0/24",))
    # Before: no route between the nodes' pods.
    assert connect(ns["pa"], ns["pb"], "10.244.2.5", 7001) == ""
    assert apply(ns["a"], "a", [a, b], state=str(tmp_path / "a")) == {"routes": 1, "problems": []}
    assert apply(ns["b"], "b", [a, b])["routes"] == 1
    assert "tailor.vxlan proto 116 onlink" in in_ns(ns["a"], "ip", "route")
    # Pod to pod across the router, with the pod's own address; to the router
    # (outside the cluster) with the node's.
    assert connect(ns["pa"], ns["pb"], "10.244.2.5", 7002) == "10.244.1.5"
    assert connect(ns["pa"], ns["r"], "10.77.1.1", 7003) == "10.77.1.2"
    # Applying again changes nothing; b leaving takes its route, FDB entry,
    # neighbour and the device with it.
    assert apply(ns["a"], "a", [a, b])["routes"] == 1
    assert apply(ns["a"], "a", [a])["routes"] == 0
    assert "proto 116" not in in_ns(ns["a"], "ip", "route")
    assert "tailor.vxlan" not in in_ns(ns["a"], "ip", "link")
    assert (tmp_path / "a" / "nodes.json").exists()
    apply(ns["a"], "a", [a], remove=True)
    assert "tailor-nat" not in in_ns(ns["a"], "nft", "list", "ruleset")


@pytest.mark.kernel
def test_native_routing_refuses_a_node_off_link(two_subnets):
    ns = two_subnets
    a = ClusterNode("a", ("10.77.1.2",), ("10.244.1.0/24",))
    b = ClusterNode("b", ("10.77.2.2",), ("10.244.2.0/24",))
    answer = apply(ns["a"], "a", [a, b], mode="native")
    assert answer["routes"] == 0 and "node b: 10.77.2.2 is not on any subnet" in answer["problems"][0]


LEARN = textwrap.dedent("""
    import json
    from tailor.datapath.agent.cni import ipam
    from tailor.datapath.agent.node import network, routes
    net = network.NodeNetwork("n1", mode="off", masquerade=True)
    pool = ipam.Ipam.from_cidrs("STATE", [])
    net.on_pod_cidrs = pool.set_cidrs
    before = [str(r) for rs in pool.rangesets for r in rs]
    net.apply([routes.ClusterNode("n1", ("192.168.77.1",), ("10.244.1.0/24", "fd00:10:244:1::/64")),
               routes.ClusterNode("n2", ("192.168.77.2",), ("10.244.2.0/24",))], [])
    got = pool.allocate("c1", "eth0")
    print(json.dumps({"before": before, "learnt": list(net.pod_cidrs),
                      "allocated": [str(a.address) for a in got]}))
""")


@pytest.mark.kernel
def test_an_agent_without_pod_cidrs_takes_its_nodes_from_the_node_table(tmp_path):
    """No --pod-cidr (the chart's default): the node's own spec.podCIDRs, as
    the operator's SetNodes carries them, become the IPAM's ranges and what
    the masquerade covers."""
    ns = "tnl-learn"
    sh("ip", "netns", "add", ns)
    try:
        out = json.loads(in_ns(ns, sys.executable, "-c", LEARN.replace("STATE", str(tmp_path / "ipam"))))
        assert out["before"] == [] and out["learnt"] == ["10.244.1.0/24", "fd00:10:244:1::/64"]
        assert out["allocated"][0].startswith("10.244.1.") and out["allocated"][1].startswith("fd00:10:244:1:")
        assert "10.244.1.0/24" in in_ns(ns, "nft", "list", "table", "ip", "tailor-nat")
    finally:
        sh("ip", "netns", "delete", ns, check=False)
