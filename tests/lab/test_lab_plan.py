"""The lab's plan: names, addresses, placement. Pure."""
from __future__ import annotations

import ipaddress
import os

import pytest

from tailor.lab import plan
from tailor.operator.cluster import manifests

HERE = os.path.dirname(__file__)
TOPOLOGY = os.path.join(HERE, "..", "policy", "cases", "topology.yaml")


def _state(tmp_path, pods: str):
    f = tmp_path / "pods.yaml"
    f.write_text(pods)
    return manifests.load([str(f)])


def _pod(name: str, node: str | None = None, families: str | None = None) -> str:
    ann = f"\n  annotations: {{tailor.dev/ip-families: '{families}'}}" if families else ""
    spec = f"nodeName: {node}\n  " if node else ""
    return (f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: ns{ann}\n"
            f"spec:\n  {spec}containers: [{{name: c, image: i}}]\n---\n")


def test_round_robin_over_two_nodes_by_default():
    p = plan.make(manifests.load([TOPOLOGY]), "lab")
    assert [n.name for n in p.nodes] == ["node1", "node2"]
    counts = {n.name: sum(1 for pod in p.pods if pod.node == n.name) for n in p.nodes}
    assert counts == {"node1": 5, "node2": 4}
    assert not p.ipv6
    assert p.nodes[0].pod_cidrs == ("10.244.1.0/24",)
    assert p.nodes[1].underlay == ("192.168.77.2/24",)


def test_node_name_pins_a_pod_and_names_a_node(tmp_path):
    state = _state(tmp_path, _pod("a", "worker-x") + _pod("b") + _pod("c") + _pod("d"))
    p = plan.make(state, "t", 3)
    assert [n.name for n in p.nodes] == ["worker-x", "node1", "node2"]
    assert p.pods[0].node == "worker-x"
    assert [pod.node for pod in p.pods[1:]] == ["worker-x", "node1", "node2"]


def test_too_few_nodes_for_the_named_ones_says_how_many(tmp_path):
    state = _state(tmp_path, _pod("a", "n-a") + _pod("b", "n-b") + _pod("c", "n-c"))
    with pytest.raises(plan.PlanError, match="--nodes 3"):
        plan.make(state, "t", 2)
    assert len(plan.make(state, "t").nodes) == 3


def test_ipv6_cidrs_only_when_a_pod_asks(tmp_path):
    state = _state(tmp_path, _pod("a", families="IPv4,IPv6") + _pod("b"))
    p = plan.make(state, "t", 2)
    assert p.ipv6
    assert p.nodes[1].pod_cidrs == ("10.244.2.0/24", "fd00:10:244:2::/64")
    assert p.nodes[1].underlay == ("192.168.77.2/24", "fd00:77::2/64")
    a, b = p.pods
    assert a.families == (4, 6) and b.families == (4,)
    # A single-stack pod stays single-stack on a dual-stack node.
    assert plan.pod_ranges(p.nodes[0], b.families) == [[{"subnet": "10.244.1.0/24"}]]
    assert plan.pod_ranges(p.nodes[0], (6, 4)) == [[{"subnet": "fd00:10:244:1::/64"}],
                                                   [{"subnet": "10.244.1.0/24"}]]


def test_names_are_prefixed_unique_and_short():
    state = manifests.load([TOPOLOGY])
    one, two = plan.make(state, "one", 2), plan.make(state, "two", 2)
    names_one = {one.switch_netns} | {n.netns for n in one.nodes} | {p.netns for p in one.pods}
    names_two = {two.switch_netns} | {n.netns for n in two.nodes} | {p.netns for p in two.pods}
    assert len(names_one) == 1 + 2 + 9
    assert not names_one & names_two
    assert all(n.startswith("one.") for n in names_one)
    assert all(len(n.switch_port) <= 15 for n in one.nodes)
    assert len({p.uid for p in one.pods} | {p.uid for p in two.pods}) == 18
    assert len({p.container_id for p in one.pods}) == 9
    # Deterministic: the same manifests and name give the same plan.
    assert plan.make(state, "one", 2) == one


def test_underlay_and_pod_cidrs_do_not_overlap():
    p = plan.make(manifests.load([TOPOLOGY]), "lab", 5)
    nets = [ipaddress.ip_network(c) for n in p.nodes for c in n.pod_cidrs]
    nets.append(plan.UNDERLAY_V4)
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])


@pytest.mark.parametrize("name", ["", "Lab", "a_b", "x" * 17, "-a"])
def test_bad_lab_names_are_refused(name):
    with pytest.raises(plan.PlanError, match="lab name"):
        plan.check_name(name)


def test_no_pods_is_an_error(tmp_path):
    f = tmp_path / "ns.yaml"
    f.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    with pytest.raises(plan.PlanError, match="no pods"):
        plan.make(manifests.load([str(f)]), "t")
