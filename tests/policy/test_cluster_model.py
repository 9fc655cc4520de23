"""The cluster model read from manifests: pods, workloads, namespaces,
addresses, lists, folders and warnings."""
import json

import pytest

from tailor.operator.cluster import manifests
from tailor.operator.cluster.objects import NAMESPACE_NAME_LABEL, Pod
from tailor.operator.cluster.ports import ContainerPort
from tailor.operator.cluster.state import ClusterState

POD = """apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}{extra}}}
spec:
  nodeName: node-1
  containers:
  - name: c
    image: i
    ports: [{{containerPort: 8080, name: http}}, {{containerPort: 53, protocol: UDP}}]
"""


def _load(tmp_path, text, name="m.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return manifests.load([str(path)])


def test_pod_fields(tmp_path):
    state = _load(tmp_path, POD.format(name="a", ns="x", extra=""))
    pod = state.pod("x", "a")
    assert pod == Pod("x", "a", {"app": "a"}, "node-1", ("10.244.0.1",),
                      (ContainerPort("http", 8080, "TCP"), ContainerPort(None, 53, "UDP")), "Pod")
    assert pod.ref == "x/a[Pod]"
    assert not pod.has_ipv6


def test_referenced_namespace_exists_with_name_label(tmp_path):
    state = _load(tmp_path, POD.format(name="a", ns="x", extra=""))
    assert state.namespaces["x"].labels == {NAMESPACE_NAME_LABEL: "x"}


def test_declared_namespace_always_gets_name_label(tmp_path):
    state = _load(tmp_path, "kind: Namespace\napiVersion: v1\nmetadata: {name: x, labels: {team: a, "
                            "kubernetes.io/metadata.name: wrong}}\n")
    assert state.namespaces["x"].labels == {"team": "a", NAMESPACE_NAME_LABEL: "x"}


def test_default_namespace_when_missing(tmp_path):
    state = _load(tmp_path, "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\n")
    assert state.find_pod("default/a").namespace == "default"


@pytest.mark.parametrize("kind, api, spec, ref", [
    ("Deployment", "apps/v1", {"template": "T"}, "prod/web[Deployment]"),
    ("StatefulSet", "apps/v1", {"template": "T"}, "prod/web[StatefulSet]"),
    ("DaemonSet", "apps/v1", {"template": "T"}, "prod/web[DaemonSet]"),
    ("ReplicaSet", "apps/v1", {"template": "T"}, "prod/web[ReplicaSet]"),
    ("ReplicationController", "v1", {"template": "T"}, "prod/web[ReplicationController]"),
    ("Job", "batch/v1", {"template": "T"}, "prod/web[Job]"),
    ("CronJob", "batch/v1", {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": "T"}}},
     "prod/web[CronJob]"),
])
def test_workload_becomes_one_representative_pod(tmp_path, kind, api, spec, ref):
    template = {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "name": "http"}]}]}}
    text = json.dumps(spec).replace('"T"', json.dumps(template))
    obj = {"apiVersion": api, "kind": kind, "metadata": {"name": "web", "namespace": "prod"}, "spec": json.loads(text)}
    state = _load(tmp_path, json.dumps(obj), "w.json")
    [pod] = state.sorted_pods()
    assert pod.ref == ref
    assert pod.labels == {"app": "web"}
    assert pod.ports == (ContainerPort("http", 80, "TCP"),)


def test_list_flattens_and_unknown_kinds_warn(tmp_path):
    text = """apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: s, namespace: x}}
- apiVersion: v1
  kind: List
  items:
  - {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x}, spec: {containers: []}}
"""
    state = _load(tmp_path, text)
    assert [p.ref for p in state.sorted_pods()] == ["x/a[Pod]"]
    assert len(state.warnings) == 1 and "ignored ConfigMap x/s" in state.warnings[0]


def test_folders_recursive_multi_document_yml_and_json(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "pods.yml").write_text(
        POD.format(name="a", ns="x", extra="") + "---\n" + POD.format(name="b", ns="x", extra=""))
    (tmp_path / "a" / "c.json").write_text(json.dumps(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c", "namespace": "y"}, "spec": {"containers": []}}))
    (tmp_path / "notes.txt").write_text("not a manifest")
    state = manifests.load([str(tmp_path)])
    assert [p.ref for p in state.sorted_pods()] == ["x/a[Pod]", "x/b[Pod]", "y/c[Pod]"]


def test_stated_addresses_win_and_pool_skips_them(tmp_path):
    text = (POD.format(name="a", ns="x", extra="")
            + "---\n" + POD.format(name="b", ns="x", extra="") + "status: {podIP: 10.244.0.1}\n")
    state = _load(tmp_path, text)
    assert state.pod("x", "b").ips == ("10.244.0.1",)
    assert state.pod("x", "a").ips == ("10.244.0.2",)
    assert state.pod_by_ip("10.244.0.1").name == "b"


def test_pod_ips_dual_stack_from_status(tmp_path):
    state = _load(tmp_path, POD.format(name="a", ns="x", extra="")
                  + "status: {podIP: 10.1.0.5, podIPs: [{ip: 10.1.0.5}, {ip: 'fd00::5'}]}\n")
    pod = state.pod("x", "a")
    assert pod.ips == ("10.1.0.5", "fd00::5") and pod.has_ipv6 and pod.ip(6) == "fd00::5"


@pytest.mark.parametrize("families, ips", [
    ("IPv4", ("10.244.0.1",)),
    ("IPv6", ("fd00:10:244::1",)),
    ("IPv4,IPv6", ("10.244.0.1", "fd00:10:244::1")),
    ("IPv6,IPv4", ("fd00:10:244::1", "10.244.0.1")),
])
def test_ip_families_annotation(tmp_path, families, ips):
    extra = f", annotations: {{tailor.dev/ip-families: '{families}'}}"
    state = _load(tmp_path, POD.format(name="a", ns="x", extra=extra))
    assert state.pod("x", "a").ips == ips


def test_addresses_are_deterministic(tmp_path):
    text = "---\n".join(POD.format(name=n, ns="x", extra="") for n in "abcde")
    first = [p.ips for p in _load(tmp_path, text).sorted_pods()]
    second = [p.ips for p in _load(tmp_path, text, "again.yaml").sorted_pods()]
    assert first == second and len({ips for ips in first}) == 5


def test_relabel_keeps_address_and_delete_namespace_cascades():
    state = ClusterState()
    pod = state.add_pod(Pod("x", "a", {"v": "1"}, None, ()))
    again = state.add_pod(Pod("x", "a", {"v": "2"}, None, ()))
    assert again.ips == pod.ips and state.pod("x", "a").labels == {"v": "2"}
    assert state.delete("Namespace", None, "x")
    assert not state.pods and state.pod_by_ip(pod.ips[0]) is None
    assert not state.delete("Pod", "x", "a")


def test_duplicate_address_is_a_warning():
    state = ClusterState()
    state.add_pod(Pod("x", "a", {}, None, ("10.0.0.1",)))
    state.add_pod(Pod("x", "b", {}, None, ("10.0.0.1",)))
    assert any("share the address 10.0.0.1" in w for w in state.warnings)
