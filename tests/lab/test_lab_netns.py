"""The lab's underlay: switch or router, node namespaces, forwarding, the
outside host; made and removed without leaving anything in the root
namespace. No route to another node's pods: that is the agents' work."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tailor.lab import netns

pytestmark = pytest.mark.kernel
LAB = "tnet"


def _nodes(n: int) -> list[dict]:
    return [{"name": f"node{i}", "netns": f"{LAB}.node{i}", "switch_port": f"n{i}",
             "underlay": [f"192.168.77.{i}/24", f"fd00:77::{i}/64"],
             "pod_cidrs": [f"10.244.{i}.0/24", f"fd00:10:244:{i}::/64"]} for i in range(1, n + 1)]


def _root_links() -> set[str]:
    out = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
    return {link["ifname"] for link in out}


@pytest.fixture
def underlay():
    before = _root_links()
    nodes = _nodes(3)
    try:
        netns.make_switch(f"{LAB}.switch", "br0")
        for node in nodes:
            netns.make_node(f"{LAB}.switch", "br0", node, "eth0")
        netns.make_outside(f"{LAB}.switch", {"netns": f"{LAB}.outside",
                                             "addresses": ["192.168.77.254/24"], "gateways": []},
                           bridge="br0")
        yield nodes
    finally:
        for name in [n["netns"] for n in nodes] + [f"{LAB}.switch", f"{LAB}.outside"]:
            netns.delete(name)
    # Other tests make namespaces and links meanwhile: look only for ours.
    assert [n for n in netns.names() if n.startswith(f"{LAB}.")] == []
    assert {"br0", "n1", "n2", "n3"} & (_root_links() - before) == set()


def _echo(src_netns: str, dst_netns: str, address: str) -> str:
    server = subprocess.Popen(netns.exec_argv(dst_netns, [sys.executable, "-m", "tailor.lab.probing.serve",
                                                          "--udp", "7777"]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        out = subprocess.run(netns.exec_argv(src_netns, [sys.executable, "-m", "tailor.lab.probing.dial"]),
                             input=json.dumps([{"id": 0, "address": address, "protocol": "UDP", "port": 7777}]),
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)["0"]
    finally:
        server.kill()
        server.wait()


def test_nodes_reach_each_other_over_the_switch(underlay):
    assert _echo(underlay[0]["netns"], underlay[2]["netns"], "192.168.77.3") == "open"
    assert _echo(underlay[2]["netns"], underlay[1]["netns"], "fd00:77::2") == "open"


def test_nodes_forward_and_have_no_route_to_other_nodes_pods(underlay):
    node1 = underlay[0]["netns"]
    out = subprocess.run(netns.exec_argv(node1, ["sysctl", "-n", "net.ipv4.ip_forward",
                                                 "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.rp_filter"]),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1", "0"]
    routes = netns.ip("route", netns=node1) + netns.ip("-6", "route", netns=node1)
    assert "10.244." not in routes and "fd00:10:244" not in routes
    assert _echo(node1, f"{LAB}.outside", "192.168.77.254") == "open"


def test_a_routed_underlay_reaches_every_node_and_the_outside_through_the_router():
    router, outside = f"{LAB}r.router", {"netns": f"{LAB}r.outside", "addresses": ["203.0.113.2/24"],
                                          "gateways": ["203.0.113.1/24"]}
    nodes = [{"name": f"node{i}", "netns": f"{LAB}r.node{i}", "switch_port": f"n{i}",
              "underlay": [f"172.31.{i}.2/24"], "gateways": [f"172.31.{i}.1/24"]} for i in (1, 2)]
    try:
        netns.make_router(router)
        for node in nodes:
            netns.make_routed_node(router, node, "eth0")
        netns.make_outside(router, outside, bridge=None)
        assert _echo(nodes[0]["netns"], nodes[1]["netns"], "172.31.2.2") == "open"
        assert _echo(nodes[1]["netns"], outside["netns"], "203.0.113.2") == "open"
    finally:
        for name in [n["netns"] for n in nodes] + [router, outside["netns"]]:
            netns.delete(name)
    assert [n for n in netns.names() if n.startswith(f"{LAB}r.")] == []


def test_pod_namespace_is_empty_but_for_lo():
    name = f"{LAB}.p.x.a"
    try:
        netns.make_pod(name)
        links = json.loads(netns.ip("-j", "link", netns=name))
        assert [(l["ifname"], "UP" in l["flags"]) for l in links] == [("lo", True)]
    finally:
        assert netns.delete(name)
    assert not netns.exists(name)
    assert netns.delete(name) is False
