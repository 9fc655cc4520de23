"""Every manifest the chart renders validates against the Kubernetes OpenAPI
schemas, for the default values and for each documented choice.

What is validated is what Helm submits: the chart is installed with Helm's
own engine into the kmock emulator (test_chart.install), and the manifests
are read from the release Helm returns (its rendered templates) and from the
chart's crds/ files as Helm loaded them. Nothing is stripped from those. A
separate check makes sure that set is complete and exact: every object the
install left in the emulator is one of them, and equal to it once what an
API server adds (uid, resourceVersion, creationTimestamp, generation,
managedFields, status) and Helm's release annotations are taken off the
stored copy.

- Built-in kinds (DaemonSet, Deployment, ConfigMap, Service, ServiceAccount,
  RBAC, CustomResourceDefinition): kubernetes-validate in strict mode, so an
  unknown or misspelt field fails as well as a wrong type, against the
  oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the
  newest the package knows.
- Custom resources (kopf's ClusterKopfPeering): the openAPIV3Schema of their
  CRD in crds/, read as a strict API server reads it (a field the schema
  does not declare is refused, unless x-kubernetes-preserve-unknown-fields),
  their metadata as ObjectMeta.
- A kind that is neither is a failure, never a skip.
"""
from __future__ import annotations

import base64
import copy
import os
import re
import sys

import pytest
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from test_chart import CHART, install, kubectl_harness, needs_helm  # noqa: E402

try:
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate import utils as kubernetes_validate_utils
    from packaging.version import Version
except ImportError:   # pragma: no cover - depends on the machine
    kubernetes_validate = None

CI = os.environ.get("CI") == "true"


def needs_tools():
    needs_helm()
    if kubernetes_validate is None:
        if CI:
            pytest.fail("CI=true but kubernetes-validate is not installed (scripts/install-deps.sh --test)")
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")


def kubernetes_versions() -> list[str]:
    """The oldest version the chart supports that the package has schemas
    for, and the newest it has."""
    if kubernetes_validate is None:
        return ["oldest", "newest"]   # the tests skip (or fail in CI) in needs_tools
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    minimum = Version(re.fullmatch(r">=\s*(\d+\.\d+)(?:\.\d+)?(?:-0)?", chart["kubeVersion"]).group(1))
    shipped = sorted({Version(v) for v in kubernetes_validate_utils.all_versions()})
    supported = [v for v in shipped if v >= minimum]
    assert supported, f"kubernetes-validate has no schemas for Kubernetes >= {minimum}"
    return [f"{v.major}.{v.minor}" for v in sorted({supported[0], supported[-1]})]


VERSIONS = kubernetes_versions()

# The choices values.yaml, values.schema.json and README ("Installing in a
# cluster", kind/up.sh) document, one at a time, then all the non-defaults at once.
POD_CIDRS = {"worker-1": ["10.244.1.0/24", "fd00:10:244:1::/64"], "worker-2": ["10.244.2.0/24"]}
COMBINATIONS = {
    "defaults": {},
    "backend-emulated": {"agent": {"backend": "emulated"}},
    "pod-cidrs-from-values": {"podCIDRs": {"source": "values", "nodes": POD_CIDRS}},
    "routing-native": {"agent": {"routing": "native"}},
    "routing-vxlan": {"agent": {"routing": "vxlan"}},
    "routing-off-non-masquerade-cidrs": {"agent": {"routing": "off",
                                                   "nonMasqueradeCIDRs": ["10.96.0.0/12", "fd00:10:96::/112"]}},
    "no-masquerade": {"agent": {"masquerade": False}},
    "bpffs-premounted": {"agent": {"mountBpffs": False}},
    "no-portmap": {"cni": {"portmap": False}},
    "conflist-kept-on-uninstall": {"cni": {"uninstall": False}},
    "program-source-pinned": {"agent": {"programSource": "[fd00::5]:9502"}},
    "single-operator": {"operator": {"replicas": 1}},
    "readme-registry-image": {"image": {"repository": "registry.example.com/tailor", "tag": "0.1.0"}},
    "kind-local-image": {"image": {"repository": "localhost/tailor", "tag": "0.1.0", "pullPolicy": "Never"}},
    "pull-secrets-and-sa-annotations": {
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "tailor@p.iam.gserviceaccount.com"}}},
    "debug-logs-and-extra-args": {"agent": {"logLevel": "debug", "extraArgs": ["--state-dir=/var/lib/tailor"]},
                                  "operator": {"logLevel": "debug", "extraArgs": ["--verbose"]}},
    "other-ports-and-cni-paths": {
        "ports": {"agentGrpc": 19501, "operatorSource": 19502, "metrics": 19503, "operatorMetrics": 19504},
        "cni": {"binDir": "/home/kubernetes/bin", "confDir": "/etc/cni/conf.d",
                "confName": "01-tailor.conflist", "networkName": "pods", "timeoutSeconds": 5},
        "agent": {"attachTimeoutSeconds": 2.5}},
    "scheduling-and-resources": {
        "agent": {"nodeSelector": None, "tolerations": [{"key": "dedicated", "operator": "Equal",
                                                          "value": "net", "effect": "NoExecute"}],
                  "resources": None, "priorityClassName": "tailor-node"},
        "operator": {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}, "tolerations": [],
                     "resources": {"requests": {"cpu": 1, "memory": "1Gi"}},
                     "priorityClassName": "tailor-cluster"}},
    "every-non-default": {
        "image": {"repository": "localhost/tailor", "tag": "dev", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry"}],
        "agent": {"backend": "emulated", "routing": "off", "masquerade": False,
                  "nonMasqueradeCIDRs": ["10.96.0.0/12"], "mountBpffs": False,
                  "programSource": "tailor-operator.kube-system:9502", "logLevel": "warning",
                  "extraArgs": ["--state-dir=/x"]},
        "podCIDRs": {"source": "values", "nodes": POD_CIDRS},
        "cni": {"portmap": False, "uninstall": False},
        "operator": {"replicas": 1, "peering": "tailor-net", "logLevel": "error", "extraArgs": ["--x"]},
        "serviceAccount": {"annotations": {"a": "b"}}},
}


# --- rendering ----------------------------------------------------------------

# Set by an API server (or kmock) on what it stores, never by the chart.
SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")
HELM_ANNOTATIONS = ("meta.helm.sh/release-name", "meta.helm.sh/release-namespace")

_renders: dict[str, dict] = {}


async def render(name: str) -> dict:
    """The chart installed with COMBINATIONS[name], once per module:
    {"manifests": the rendered templates, "crds": crds/ as Helm loaded it,
     "stored": what the emulator holds afterwards}."""
    if name not in _renders:
        async with kubectl_harness.kube(tailor=False) as kube:
            release = await install(kube, COMBINATIONS[name])
            stored = [copy.deepcopy(obj.raw) for obj in kube.emulator.objects.values()]
        documents = [release["manifest"], *(hook["manifest"] for hook in release.get("hooks") or [])]
        manifests = [doc for text in documents for doc in yaml.safe_load_all(text) if doc]
        crds = [doc for file in release["chart"]["files"] if file["name"].startswith("crds/")
                for doc in yaml.safe_load_all(base64.b64decode(file["data"])) if doc]
        _renders[name] = {"manifests": manifests, "crds": crds, "stored": stored}
    return _renders[name]


def identity(obj: dict) -> tuple:
    return obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]


def as_submitted(stored: dict) -> dict:
    """A stored object without what the server and Helm's release bookkeeping added."""
    obj = copy.deepcopy(stored)
    obj.pop("status", None)
    meta = obj["metadata"]
    for key in SERVER_METADATA:
        meta.pop(key, None)
    annotations = meta.get("annotations", {})
    for key in HELM_ANNOTATIONS:
        annotations.pop(key, None)
    if "annotations" in meta and not annotations:
        del meta["annotations"]
    return obj


# --- validation ---------------------------------------------------------------

def crd_schema(crd: dict, version: str) -> dict:
    """A CRD version's openAPIV3Schema as JSON Schema (draft 4, which OpenAPI
    3.0 schemas follow), read strictly: an object's undeclared fields are
    errors (the API server prunes them, or refuses them with
    fieldValidation=Strict) unless it preserves unknown fields."""
    def strict(node):
        node = dict(node)
        preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
        if node.pop("x-kubernetes-int-or-string", False):
            node["type"] = ["integer", "string"]
        if node.pop("nullable", False) and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        if "properties" in node:
            node["properties"] = {k: strict(v) for k, v in node["properties"].items()}
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                node[key] = strict(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            if key in node:
                node[key] = [strict(v) for v in node[key]]
        if node.get("type") == "object" and not preserve and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node

    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = strict(served["schema"]["openAPIV3Schema"])
    # The API server sets these three itself; metadata is checked as ObjectMeta.
    schema["properties"] = {**schema.get("properties", {}),
                            "apiVersion": {"enum": [f"{crd['spec']['group']}/{version}"]},
                            "kind": {"enum": [crd["spec"]["names"]["kind"]]},
                            "metadata": {"type": "object"}}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return schema


def builtin_problem(obj: dict, version: str) -> str | None:
    try:
        validated = kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message}"
    # The schemas of exactly this version, not an older one the package falls back to.
    assert validated == version, (validated, version)
    return None


def problems(manifests: list[dict], crds: list[dict], version: str) -> list[str]:
    """Every way `manifests` fail Kubernetes `version`'s schemas, one line each."""
    found = []
    custom = {(c["spec"]["group"], c["spec"]["names"]["kind"]): c for c in crds}
    for obj in manifests:
        name = "/".join(filter(None, (obj.get("kind"), obj.get("metadata", {}).get("namespace"),
                                      obj.get("metadata", {}).get("name"))))
        group, _, api = str(obj.get("apiVersion")).rpartition("/")
        crd = custom.get((group, obj.get("kind")))
        if crd is None:
            try:
                problem = builtin_problem(obj, version)
            except kubernetes_validate.SchemaNotFoundError:
                problem = f"no schema: {obj.get('apiVersion')} {obj.get('kind')} is neither built in " \
                          f"to Kubernetes {version} nor defined by the chart's CRDs"
            if problem:
                found.append(f"{name}: {problem}")
            continue
        if api not in [v["name"] for v in crd["spec"]["versions"] if v["served"]]:
            found.append(f"{name}: {crd['metadata']['name']} serves no version {api}")
            continue
        validator = jsonschema.Draft4Validator(crd_schema(crd, api))
        found += [f"{name}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}"
                  for e in sorted(validator.iter_errors(obj), key=str)]
        if crd["spec"]["scope"] == "Cluster" and "namespace" in obj.get("metadata", {}):
            found.append(f"{name}: cluster-scoped, but has metadata.namespace")
        # ObjectMeta is the same for every kind: check it as a ConfigMap's.
        problem = builtin_problem({"apiVersion": "v1", "kind": "ConfigMap",
                                   "metadata": obj.get("metadata")}, version)
        if problem:
            found.append(f"{name}: {problem}")
    return found


# --- the chart's manifests ------------------------------------------------------

@pytest.mark.operator
@pytest.mark.asyncio
@pytest.mark.parametrize("combination", COMBINATIONS)
async def test_validated_manifests_are_what_helm_created(combination):
    """The manifests validated below are all the install created, as created."""
    needs_tools()
    result = await render(combination)
    submitted = {identity(obj): obj for obj in result["manifests"] + result["crds"]}
    assert len(submitted) == len(result["manifests"]) + len(result["crds"]), "an object rendered twice"
    stored = {identity(obj): as_submitted(obj) for obj in result["stored"]}
    assert set(stored) == set(submitted)
    for key, obj in submitted.items():
        assert stored[key] == obj, key
    kinds = {obj["kind"] for obj in result["manifests"]}
    assert {"DaemonSet", "Deployment", "ConfigMap", "Service", "ServiceAccount", "ClusterRole",
            "ClusterRoleBinding", "Role", "RoleBinding", "ClusterKopfPeering"} <= kinds
    assert {crd["spec"]["names"]["kind"] for crd in result["crds"]} == {"PodProgram", "ClusterKopfPeering"}
    if COMBINATIONS[combination]:   # the values took effect
        assert result["manifests"] != (await render("defaults"))["manifests"]


@pytest.mark.operator
@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"k8s-{v}")
@pytest.mark.parametrize("combination", COMBINATIONS)
async def test_rendered_manifests_validate(combination, version):
    needs_tools()
    result = await render(combination)
    assert problems(result["manifests"], result["crds"], version) == []


@pytest.mark.operator
@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"k8s-{v}")
async def test_crds_validate(version):
    """The CRDs in crds/ (not templated: the same for every value), as
    apiextensions.k8s.io/v1 objects, and each version's schema as a schema."""
    needs_tools()
    crds = (await render("defaults"))["crds"]
    assert problems(crds, [], version) == []
    for crd in crds:
        for served in crd["spec"]["versions"]:
            jsonschema.Draft4Validator.check_schema(crd_schema(crd, served["name"]))


# --- the check can fail -----------------------------------------------------------

async def default_daemonset() -> tuple[dict, list[dict]]:
    result = await render("defaults")
    (ds,) = [obj for obj in result["manifests"] if obj["kind"] == "DaemonSet"]
    return copy.deepcopy(ds), result["crds"]


@pytest.mark.operator
@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"k8s-{v}")
async def test_a_misspelt_field_is_refused(version):
    needs_tools()
    ds, crds = await default_daemonset()
    assert problems([ds], crds, version) == []
    agent = ds["spec"]["template"]["spec"]["containers"][0]
    agent["imagePullPolcy"] = agent.pop("imagePullPolicy")
    (problem,) = problems([ds], crds, version)
    assert problem.startswith("DaemonSet/kube-system/tailor-agent: spec.template.spec.containers.0:")
    assert "imagePullPolcy" in problem


@pytest.mark.operator
@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"k8s-{v}")
async def test_a_wrong_type_is_refused(version):
    needs_tools()
    ds, crds = await default_daemonset()
    port = copy.deepcopy(ds)
    port["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9501"
    (problem,) = problems([port], crds, version)
    assert "spec.template.spec.containers.0.ports.0.containerPort: '9501' is not of type 'integer'" in problem
    label = copy.deepcopy(ds)
    label["metadata"]["labels"]["app.kubernetes.io/version"] = 0.1   # an unquoted number
    (problem,) = problems([label], crds, version)
    assert "metadata.labels.app.kubernetes.io/version: 0.1 is not of type 'string'" in problem


@pytest.mark.operator
@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"k8s-{v}")
async def test_a_custom_resource_is_held_to_its_crd(version):
    needs_tools()
    result = await render("defaults")
    (peering,) = [obj for obj in result["manifests"] if obj["kind"] == "ClusterKopfPeering"]
    crds = result["crds"]
    assert problems([peering], crds, version) == []
    assert problems([{**peering, "status": {"anything": {"goes": 1}}}], crds, version) == []  # preserved
    assert "spec" in problems([{**peering, "spec": {"priority": 1}}], crds, version)[0]
    assert "v2" in problems([{**peering, "apiVersion": "kopf.dev/v2"}], crds, version)[0]
    namespaced = copy.deepcopy(peering)
    namespaced["metadata"]["namespace"] = "kube-system"
    assert problems([namespaced], crds, version) == [
        "ClusterKopfPeering/kube-system/tailor: cluster-scoped, but has metadata.namespace"]
    bad_meta = copy.deepcopy(peering)
    bad_meta["metadata"]["lables"] = bad_meta["metadata"].pop("labels")
    assert "lables" in problems([bad_meta], crds, version)[0]
    program = {"apiVersion": "tailor.dev/v1alpha1", "kind": "PodProgram", "metadata": {"name": "a", "namespace": "x"},
               "spec": {"podName": "a"}, "status": {"state": "Loaded", "instructions": 118}}
    assert problems([program], crds, version) == []
    program["status"] = {"state": "Bogus", "instructions": "118", "nodeName": "n"}
    assert len(problems([program], crds, version)) == 3


@pytest.mark.operator
@pytest.mark.asyncio
async def test_a_kind_without_a_schema_is_refused_not_skipped():
    needs_tools()
    crds = (await render("defaults"))["crds"]
    (problem,) = problems([{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}],
                          crds, VERSIONS[-1])
    assert problem.startswith("Widget/w: no schema")
