"""What the operator lab creates in its API server (objects.py, pure)."""
from __future__ import annotations

import os

from tailor.lab.control import objects
from tailor.lab import plan as plan_
from tailor.operator.cluster import manifests

HERE = os.path.dirname(__file__)
TOPOLOGY = os.path.join(HERE, "..", "policy", "cases", "topology.yaml")
POLICIES = os.path.join(HERE, "policies.yaml")


def _lab(paths: list[str]) -> dict:
    plan = plan_.make(manifests.load(paths), "t", 2)
    nodes = [{"name": n.name, "underlay": list(n.underlay), "pod_cidrs": list(n.pod_cidrs),
              "agent_socket": f"/run/t/{n.name}/agent.sock"} for n in plan.nodes]
    pods = [{"namespace": p.namespace, "name": p.name, "ref": p.ref, "uid": p.uid, "node": p.node}
            for p in plan.pods]
    return {"manifests": paths, "nodes": nodes, "pods": pods}


def test_objects_come_in_an_order_the_api_accepts_and_say_what_a_cluster_would():
    lab = _lab([TOPOLOGY, POLICIES])
    made = objects.creation_order(lab)
    kinds = [o["kind"] for o in made]
    assert kinds == sorted(kinds, key=["Namespace", "Node", "NetworkPolicy", "Pod"].index)
    assert kinds.count("Pod") == 9 and kinds.count("NetworkPolicy") == 3
    x = next(o for o in made if o["kind"] == "Namespace" and o["metadata"]["name"] == "x")
    assert x["metadata"]["labels"] == {"ns": "x", "kubernetes.io/metadata.name": "x"}
    node1 = next(o for o in made if o["kind"] == "Node" and o["metadata"]["name"] == "node1")
    assert node1["metadata"]["annotations"] == {objects.AGENT_ANNOTATION: "unix:/run/t/node1/agent.sock"}
    assert node1["status"]["addresses"] == [{"type": "InternalIP", "address": "192.168.77.1"}]
    for pod, entry in zip([o for o in made if o["kind"] == "Pod"], lab["pods"]):
        assert pod["metadata"]["uid"] == entry["uid"]
        assert pod["spec"]["nodeName"] == entry["node"]
        assert "status" not in pod                  # addresses come after CNI ADD


def test_a_namespace_only_a_pod_names_is_created_with_its_name_label(tmp_path):
    doc = tmp_path / "pod.yaml"
    doc.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: lonely, labels: {a: b}}\n"
                   "spec: {containers: [{name: c, image: i}]}\n")
    made = objects.creation_order(_lab([str(doc)]))
    assert made[0] == {"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "lonely", "labels": {"kubernetes.io/metadata.name": "lonely"}}}
    assert made[-1]["metadata"]["labels"] == {"a": "b"}
    assert objects.pod_status(["10.244.1.2", "fd00::2"]) == {"status": {
        "phase": "Running", "podIP": "10.244.1.2", "podIPs": [{"ip": "10.244.1.2"}, {"ip": "fd00::2"}]}}
