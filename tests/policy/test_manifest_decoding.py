"""Manifests read as the API server and its clients read them: what `kubectl
get ... -o json|yaml` prints is input as it is, and a field the API's Go
types hold by value decodes, when absent, as their zero value."""
import json

import pytest

from tailor.operator import policy
from tailor.operator.cluster import manifests
from tailor.operator.errors import ManifestError

POD = {"metadata": {"name": "a", "namespace": "x", "labels": {"app": "a"}},
       "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "name": "web"}]}]},
       "status": {"podIP": "10.0.0.10", "podIPs": [{"ip": "10.0.0.10"}]}}



def test_typed_list_items_take_their_kind_from_the_list(tmp_path):
    # `kubectl get namespaces -o json` is a NamespaceList whose items carry no kind.
    namespaces = {"apiVersion": "v1", "kind": "NamespaceList",
                  "items": [{"metadata": {"name": "x", "labels": {"team": "a"}}}, {"metadata": {"name": "y"}}]}
    pods = {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": [POD]}
    state = manifests.load([str(_write(tmp_path, "ns.json", namespaces)), str(_write(tmp_path, "p.json", pods))])
    assert state.namespaces["x"].labels == {"team": "a", "kubernetes.io/metadata.name": "x"}
    assert "y" in state.namespaces
    assert state.find_pod("x/a").ips == ("10.0.0.10",)


def test_plain_list_items_must_name_their_kind(tmp_path):
    with pytest.raises(ManifestError, match="kind: Required value"):
        manifests.load([str(_write(tmp_path, "l.json", {"apiVersion": "v1", "kind": "List", "items": [POD]}))])


def test_kubectl_get_output_with_server_fields(tmp_path):
    served = dict(POD, apiVersion="v1", kind="Pod",
                  metadata={**POD["metadata"], "uid": "u1", "resourceVersion": "12",
                            "creationTimestamp": "2026-01-01T00:00:00Z",
                            "managedFields": [{"manager": "kubectl", "operation": "Update"}]})
    netpol = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "deny", "namespace": "x", "generation": 1},
              "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}, "status": {}}
    state = manifests.load([str(_write(tmp_path, "all.json", {"apiVersion": "v1", "kind": "List",
                                                              "items": [served, netpol]}))])
    assert policy.isolation(state, state.find_pod("x/a")) == (True, False)


@pytest.mark.parametrize("spec", [{"policyTypes": ["Ingress"]}, {"podSelector": None}, None])
def test_networkpolicy_without_pod_selector_selects_every_pod(tmp_path, spec):
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "deny", "namespace": "x"}}
    if spec is not None:
        doc["spec"] = spec
    state = manifests.load([str(_write(tmp_path, "np.json", dict(POD, apiVersion="v1", kind="Pod"))),
                            str(_write(tmp_path, "p.json", doc))])
    assert policy.isolation(state, state.find_pod("x/a")) == (True, False)


@pytest.mark.parametrize("pods", [{"podSelector": {"matchLabels": {"app": "a"}}},   # no namespaceSelector
                                  {"namespaceSelector": {}}])                         # no podSelector
def test_anp_pods_without_a_selector_mean_every_namespace_or_pod(tmp_path, pods):
    anp = {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
           "metadata": {"name": "deny"},
           "spec": {"priority": 1, "subject": {"pods": pods},
                    "ingress": [{"action": "Deny", "from": [{"pods": pods}]}]}}
    state = manifests.load([str(_write(tmp_path, "p.json", dict(POD, apiVersion="v1", kind="Pod"))),
                            str(_write(tmp_path, "b.json", dict(POD, apiVersion="v1", kind="Pod",
                                                                metadata={**POD["metadata"], "name": "b"},
                                                                status={"podIP": "10.0.0.11"}))),
                            str(_write(tmp_path, "anp.json", anp))])
    a, b = state.find_pod("x/a"), state.find_pod("x/b")
    assert not policy.connection_allowed(state, b, a, "TCP", 80)


def test_container_port_without_a_number_is_no_port(tmp_path):
    pod = dict(POD, apiVersion="v1", kind="Pod",
               spec={"containers": [{"name": "c", "image": "i",
                                     "ports": [{"name": "metrics"}, {"containerPort": 80, "name": "web"}]}]})
    state = manifests.load([str(_write(tmp_path, "p.json", pod))])
    assert [(p.name, p.port) for p in state.find_pod("x/a").ports] == [("web", 80)]


def test_workloads_are_represented_by_their_own_pods(tmp_path):
    template = {"metadata": {"labels": {"app": "web"}}, "spec": POD["spec"]}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "x",
                                                                             "uid": "d1"},
                  "spec": {"template": template}}
    replicaset = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                  "metadata": {"name": "web-5f", "namespace": "x", "uid": "r1",
                               "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "d1"}]},
                  "spec": {"template": template}}
    pod = dict(POD, apiVersion="v1", kind="Pod",
               metadata={"name": "web-5f-abc", "namespace": "x", "labels": {"app": "web"},
                         "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5f", "uid": "r1"}]})
    old = {"apiVersion": "apps/v1", "kind": "ReplicaSet",      # an old revision, scaled to zero
           "metadata": {"name": "web-4a", "namespace": "x", "uid": "r0",
                        "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "d1"}]},
           "spec": {"replicas": 0, "template": template}}
    lone = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "x"},
            "spec": {"template": template}}
    state = manifests.load([str(_write(tmp_path, "all.json", {"apiVersion": "v1", "kind": "List",
                                                              "items": [deployment, replicaset, old, pod,
                                                                        lone]}))])
    assert sorted(p.ref for p in state.pods.values()) == ["x/db[StatefulSet]", "x/web-5f-abc[Pod]"]


def _write(tmp_path, name, doc):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path
