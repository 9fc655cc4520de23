"""The Helm chart (charts/tailor): the PodProgram CRD as kubectl users see it,
Helm's own lint, and the chart rendered by Helm itself.

helm-sdkpy (Helm 4 as a shared library) has no template or dry-run call, but
two of its calls render the templates with Helm's engine:
- Lint renders every template with values.yaml and reports, by severity, a
  template that fails to parse, calls an unknown function or template, or
  renders invalid YAML (its error texts come back empty);
- Install renders and creates the objects through the API. Pointed at the
  kmock emulator of tests/operator (which serves CRDs created through the
  API, as Helm's crds/ step needs), it leaves the rendered objects in the
  emulator, where these tests read them. It runs in a child process with
  HELM_DRIVER=memory: Helm's default Secret storage writes the release in
  protobuf, which kmock cannot read, and the Go runtime reads the variable
  only when the library loads.
On top of that, plain-text checks catch what rendering with the default
values cannot: unbalanced actions and blocks, includes of undefined
templates and `.Values` paths that values.yaml lacks.
"""
from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/tailor"
sys.path.insert(0, str(ROOT / "tests/operator"))   # the kmock emulator and kubectl runner
from tailor.datapath.agent import privileges  # noqa: E402
from tailor.lab.apiserver import resources  # noqa: E402
import kubectl_harness  # noqa: E402

try:
    import helm_sdkpy
except ImportError:   # pragma: no cover - depends on the machine
    helm_sdkpy = None

CI = os.environ.get("CI") == "true"


def needs_helm():
    if helm_sdkpy is None:
        if CI:
            pytest.fail("CI=true but helm-sdkpy is not installed (scripts/install-deps.sh --test)")
        pytest.skip("helm-sdkpy is not installed (pip install helm-sdkpy --ignore-requires-python)")


# Helm's lint severities (pkg/lint/support).
INFO, WARNING, ERROR = 1, 2, 3


# --- the CRD ------------------------------------------------------------------

def crd() -> dict:
    return resources.read_crd(resources.PODPROGRAMS_CRD)


def test_crd_names_scope_and_version():
    spec = crd()["spec"]
    assert crd()["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd()["metadata"]["name"] == "podprograms.tailor.dev"
    assert spec["group"] == "tailor.dev" and spec["scope"] == "Namespaced"
    assert spec["names"] == {"kind": "PodProgram", "listKind": "PodProgramList",
                             "plural": "podprograms", "singular": "podprogram",
                             "shortNames": ["pp"], "categories": ["tailor"]}
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_crd_printer_columns():
    (version,) = crd()["spec"]["versions"]
    shown = [(c["name"].upper(), c["type"], c["jsonPath"])
             for c in version["additionalPrinterColumns"] if c.get("priority", 0) == 0]
    assert shown == [("NODE", "string", ".status.node"),
                     ("FEATURES", "string", ".status.featureList"),
                     ("INSTRUCTIONS", "integer", ".status.instructions"),
                     ("STATE", "string", ".status.state"),
                     ("AGE", "date", ".metadata.creationTimestamp")]


def test_crd_schema_describes_spec_and_status():
    (version,) = crd()["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]["properties"]
    assert spec["podName"]["type"] == spec["podUID"]["type"] == "string"
    status = schema["properties"]["status"]["properties"]
    assert status["state"]["enum"] == ["Pending", "Loaded", "Failed"]
    assert status["features"] == {**status["features"], "type": "array", "items": {"type": "string"}}
    assert status["policies"]["items"] == {"type": "string"}
    assert status["instructions"]["type"] == status["observedGeneration"]["type"] == "integer"
    for name in ("node", "featureList", "hash", "message", "observedHash"):
        assert status[name]["type"] == "string", name
    assert status["conditions"]["type"] == "array"
    # Every status column points at a field the schema declares.
    for column in version["additionalPrinterColumns"]:
        top, *rest = column["jsonPath"].strip(".").split(".")
        if top == "status":
            (leaf,) = rest
            assert leaf in status, column["jsonPath"]


def test_kopf_peering_crd():
    peering = resources.read_crd(CHART / "crds/clusterkopfpeerings.kopf.dev.yaml")
    (served,) = resources.custom_resources(peering)
    assert (served.group, served.version, served.plural, served.kind, served.namespaced) == \
        ("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", False)


# --- templates as text --------------------------------------------------------

TEMPLATES = sorted((CHART / "templates").iterdir())
ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)
OPENS = re.compile(r"^-?\s*(if|range|with|define|block)\b")
ENDS = re.compile(r"^-?\s*end\s*-?$")


def actions(text: str) -> list[str]:
    return [a.strip() for a in ACTION.findall(text)]


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_template_actions_and_blocks_balance(path):
    text = path.read_text()
    # Every {{ closes before the next one opens. (A lone }} may be YAML: a
    # flow mapping such as {fieldRef: {fieldPath: spec.nodeName}}.)
    assert all("{{" not in action for action in ACTION.findall(text)), "{{ inside an action"
    assert "{{" not in ACTION.sub("", text), "{{ never closed"
    depth = 0
    for action in actions(text):
        if action.startswith("/*") or action.startswith("- /*"):
            continue
        if OPENS.match(action):
            depth += 1
        elif ENDS.match(action):
            depth -= 1
            assert depth >= 0, "end without a block"
    assert depth == 0, "a block is not closed"


def test_includes_name_defined_templates():
    texts = "".join(p.read_text() for p in TEMPLATES)
    defined = set(re.findall(r'define\s+"([^"]+)"', texts))
    used = set(re.findall(r'include\s+"([^"]+)"', texts))
    assert used <= defined, used - defined


def test_values_referenced_exist():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    texts = "".join(p.read_text() for p in TEMPLATES)
    for path in sorted(set(re.findall(r"\.Values((?:\.\w+)+)", texts))):
        node = values
        for step in path.strip(".").split("."):
            assert isinstance(node, dict) and step in node, f".Values{path} is not in values.yaml"
            node = node[step]


def test_every_value_is_read_by_some_template():
    """A value no template reads would be a setting that silently does nothing."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    texts = "".join(p.read_text() for p in TEMPLATES)
    read = {path.strip(".") for path in re.findall(r"\.Values((?:\.\w+)+)", texts)}

    def leaves(node, prefix=""):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                yield from leaves(v, f"{prefix}.{k}" if prefix else k)
        else:
            yield prefix

    unread = [leaf for leaf in leaves(values)
              if not any(leaf == r or leaf.startswith(r + ".") for r in read)]
    assert unread == [], f"values no template reads: {unread}"


def test_values_defaults():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["ports"] == {"agentGrpc": 9501, "operatorSource": 9502, "metrics": 9503, "operatorMetrics": 9504}
    assert values["agent"]["backend"] in ("kernel", "emulated")
    assert values["operator"]["replicas"] == 2 and values["operator"]["peering"] == "tailor"
    assert values["podCIDRs"]["source"] == "node"


# --- Helm: show, lint, package ------------------------------------------------

def helm(call):
    return asyncio.run(call)


def lint(chart: pathlib.Path) -> list[dict]:
    result = helm(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(str(chart)))
    assert result["TotalChartsLinted"] == 1
    return result["Messages"]


def test_show_reads_chart_and_values():
    needs_helm()
    config = helm_sdkpy.Configuration()
    chart = yaml.safe_load(helm(helm_sdkpy.Show(config).chart(str(CHART))))
    assert (chart["apiVersion"], chart["name"], chart["version"]) == ("v2", "tailor", "0.1.0")
    assert chart["appVersion"]
    values = yaml.safe_load(helm(helm_sdkpy.Show(config).values(str(CHART))))
    assert values == yaml.safe_load((CHART / "values.yaml").read_text())


def test_lint_is_clean():
    needs_helm()
    messages = lint(CHART)
    assert [m for m in messages if m["Severity"] >= WARNING] == []


def with_values(tmp_path, **changes) -> pathlib.Path:
    copy = tmp_path / "tailor"
    shutil.copytree(CHART, copy)
    values = yaml.safe_load((copy / "values.yaml").read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = values
        for step in parents:
            node = node[step]
        node[leaf] = value
    (copy / "values.yaml").write_text(yaml.safe_dump(values))
    return copy


def test_lint_is_clean_with_the_other_choices(tmp_path):
    needs_helm()
    chart = with_values(tmp_path, agent__backend="emulated", podCIDRs__source="values",
                        podCIDRs__nodes={"worker-1": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
                        imagePullSecrets=[{"name": "registry"}], agent__extraArgs=["--state-dir=/x"])
    assert [m for m in lint(chart) if m["Severity"] >= WARNING] == []


def test_lint_reports_a_broken_template(tmp_path):
    # The check above means something: lint renders, and a template that
    # does not parse is an error.
    needs_helm()
    chart = with_values(tmp_path)
    with open(chart / "templates/services.yaml", "a") as f:
        f.write("{{ if .Values.ports }}\n")
    assert any(m["Severity"] == ERROR for m in lint(chart))


def test_package(tmp_path):
    needs_helm()
    archive = helm(helm_sdkpy.Package(helm_sdkpy.Configuration()).run(str(CHART), str(tmp_path)))
    assert pathlib.Path(archive).name == "tailor-0.1.0.tgz"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"tailor/Chart.yaml", "tailor/values.yaml", "tailor/templates/NOTES.txt",
            "tailor/crds/podprograms.tailor.dev.yaml",
            "tailor/crds/clusterkopfpeerings.kopf.dev.yaml",
            "tailor/templates/agent-daemonset.yaml"} <= names


# --- Helm: install into the emulator ------------------------------------------

INSTALL = textwrap.dedent("""
    import asyncio, json, sys
    import helm_sdkpy
    kubeconfig, chart, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    config = helm_sdkpy.Configuration(namespace="kube-system", kubeconfig=kubeconfig)
    release = asyncio.run(helm_sdkpy.Install(config).run("tailor", chart, values=values, wait=False))
    print(json.dumps(release, default=str))
""")


async def install(kube, values: dict | None = None) -> dict:
    """`helm install tailor charts/tailor -n kube-system` against the emulator."""
    env = dict(os.environ, HELM_DRIVER="memory")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", INSTALL, str(kube.kubeconfig), str(CHART), json.dumps(values or {}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-3000:]
    return json.loads(out)


def rendered(kube, key: str, name: str, namespace: str | None = "kube-system") -> dict:
    return kube.emulator.objects[key, namespace, name].raw


def agent_script(daemonset: dict) -> str:
    (agent,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert agent["command"] == ["/bin/sh", "-c"]
    return " ".join(agent["args"][0].split())


@pytest.mark.operator
@pytest.mark.asyncio
async def test_install_renders_the_agent_daemonset():
    needs_helm()
    async with kubectl_harness.kube(tailor=False) as kube:
        release = await install(kube)
        assert release["info"]["status"] == "deployed"
        ds = rendered(kube, "apps/v1/daemonsets", "tailor-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["serviceAccountName"] == "tailor-agent"
    (agent,) = pod["containers"]
    # Not privileged: exactly the capabilities the agent is measured to need.
    security = agent["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": sorted(privileges.CAPABILITIES)}
    # No --program-source: the active operator tells the agents where it is
    # (no cluster DNS, no Service). The agent owns the conflist.
    assert agent_script(ds) == (
        'exec tailor agent --node "$NODE_NAME" --backend kernel --listen 0.0.0.0:9501 '
        "--socket /run/tailor/cni.sock "
        "--metrics-port 9503 --attach-timeout 10 --log-level info --routing auto "
        "--proc-sys-net /host/proc/sys/net --cni-conf /etc/tailor/05-tailor.conflist "
        "--cni-conf-dir /host/etc/cni/net.d --cni-conf-remove --masquerade")
    # grpc.health.v1 probes on the agent's port.
    assert agent["readinessProbe"]["grpc"] == {"port": 9501} == agent["livenessProbe"]["grpc"]
    # Pod CIDRs from the Node (the node table): no init container calls the API.
    assert [c["name"] for c in pod["initContainers"]] == ["mount-bpffs", "install-cni"]
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert set(mounts) >= {"/sys/fs/bpf", "/run/tailor", "/var/lib/tailor", "/host/proc/sys/net",
                           "/host/etc/cni/net.d", "/etc/tailor"}
    # Bidirectional propagation needs a privileged container: only the bpffs init container's.
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "HostToContainer"
    assert {(p["name"], p["containerPort"]) for p in agent["ports"]} == {("grpc", 9501), ("metrics", 9503)}
    bpffs, install_cni = pod["initContainers"]
    assert bpffs["securityContext"] == {"privileged": True}
    assert install_cni["name"] == "install-cni" and "privileged" not in install_cni["securityContext"]
    assert {m["mountPath"] for m in install_cni["volumeMounts"]} == {"/host/opt/cni/bin"}
    assert "portmap" in install_cni["args"][0] and "if [ ! -e /host/opt/cni/bin/portmap ]" in install_cni["args"][0]
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert set(host.values()) >= {"/sys/fs/bpf", "/run/tailor", "/var/lib/tailor", "/opt/cni/bin", "/etc/cni/net.d"}


@pytest.mark.operator
@pytest.mark.asyncio
async def test_install_renders_operator_rbac_and_cni_config():
    needs_helm()
    async with kubectl_harness.kube(tailor=False) as kube:
        release = await install(kube)
        deployment = rendered(kube, "apps/v1/deployments", "tailor-operator")
        operator_role = rendered(kube, "rbac.authorization.k8s.io/v1/clusterroles", "tailor-operator", None)
        kube_keys = list(kube.emulator.objects)
        agent_roles = [k for k in kube_keys if "rbac.authorization.k8s.io" in str(k[0]) and k[2] == "tailor-agent"]
        configmap = rendered(kube, "v1/configmaps", "tailor-agent")
        service = rendered(kube, "v1/services", "tailor-operator")
        lease_role = rendered(kube, "rbac.authorization.k8s.io/v1/roles", "tailor-operator")
        peering = rendered(kube, "kopf.dev/v1/clusterkopfpeerings", "tailor", None)
    assert deployment["spec"]["replicas"] == 2
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    assert operator["command"] == ["tailor", "operator", "--source-listen", "0.0.0.0:9502",
                                   "--source-advertise", "$(POD_IP)", "--peering", "tailor",
                                   "--agent-selector", "app.kubernetes.io/component=agent,"
                                   "app.kubernetes.io/instance=tailor,app.kubernetes.io/name=tailor",
                                   "--metrics-port", "9504", "--log-level", "info"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in operator["env"]}
    assert env["POD_IP"] == "status.podIP"
    # Both replicas answer grpc.health.v1 (the standby too): both report ready.
    assert operator["readinessProbe"]["grpc"] == {"port": 9502} == operator["livenessProbe"]["grpc"]
    assert peering["kind"] == "ClusterKopfPeering"
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("source", 9502), ("metrics", 9504)}

    def allowed(role, group, resource):
        return {verb for rule in role["rules"] if group in rule["apiGroups"]
                and resource in rule["resources"] for verb in rule["verbs"]}
    for group, resource in (("", "pods"), ("", "namespaces"), ("", "nodes"),
                            ("networking.k8s.io", "networkpolicies"),
                            ("policy.networking.k8s.io", "adminnetworkpolicies"),
                            ("policy.networking.k8s.io", "baselineadminnetworkpolicies"),
                            ("policy.networking.k8s.io", "clusternetworkpolicies"),
                            ("apiextensions.k8s.io", "customresourcedefinitions")):
        assert allowed(operator_role, group, resource) >= {"get", "list", "watch"}, resource
    for resource in ("adminnetworkpolicies", "baselineadminnetworkpolicies", "clusternetworkpolicies"):
        assert allowed(operator_role, "policy.networking.k8s.io", f"{resource}/status") >= {"patch"}
    assert allowed(operator_role, "tailor.dev", "podprograms") >= {"create", "patch"}
    assert allowed(operator_role, "tailor.dev", "podprograms/status") >= {"patch"}
    assert allowed(operator_role, "", "events") >= {"create"}
    assert allowed(operator_role, "kopf.dev", "clusterkopfpeerings") >= {"get", "list", "watch", "patch"}
    assert agent_roles == []                          # the agents hold no API rights
    assert [k for k in kube_keys if "rbac.authorization.k8s.io" in str(k[0]) and k[2] == "tailor-operator"]
    assert allowed(lease_role, "coordination.k8s.io", "leases") >= {"get", "create", "update"}

    conflist = json.loads(configmap["data"]["05-tailor.conflist"])
    assert conflist == {"cniVersion": "1.0.0", "name": "tailor", "plugins": [
        {"type": "tailor", "agentSocket": "/run/tailor/cni.sock", "timeoutSeconds": 30},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}   # hostPort
    assert "kubectl get pp -A" in release["info"]["notes"]


@pytest.mark.operator
@pytest.mark.asyncio
async def test_install_with_emulated_backend_and_cidrs_from_values():
    needs_helm()
    values = {"agent": {"backend": "emulated"},
              "podCIDRs": {"source": "values", "nodes": {"worker-1": ["10.244.1.0/24", "fd00::/64"]}}}
    async with kubectl_harness.kube(tailor=False) as kube:
        release = await install(kube, values)
        ds = rendered(kube, "apps/v1/daemonsets", "tailor-agent")
        configmap = rendered(kube, "v1/configmaps", "tailor-agent")
    assert "--backend emulated" in agent_script(ds)
    assert configmap["data"]["pod-cidrs.worker-1"] == "10.244.1.0/24,fd00::/64"
    cidrs = ds["spec"]["template"]["spec"]["initContainers"][-1]
    assert cidrs["name"] == "pod-cidrs" and "pod-cidrs.$NODE_NAME" in cidrs["args"][0]
    assert "enforces nothing in the kernel" in release["info"]["notes"]


@pytest.mark.operator
@pytest.mark.asyncio
async def test_after_install_kubectl_serves_podprograms_from_the_charts_crd():
    # The emulator starts without PodPrograms: Helm's crds/ step declares them.
    needs_helm()
    async with kubectl_harness.kube(tailor=False) as kube:
        await install(kube)
        established = rendered(kube, "apiextensions.k8s.io/v1/customresourcedefinitions",
                               "podprograms.tailor.dev", None)
        assert {c["type"] for c in established["status"]["conditions"]} >= {"Established"}
        obj = {"apiVersion": "tailor.dev/v1alpha1", "kind": "PodProgram",
               "metadata": {"name": "a", "namespace": "x"}, "spec": {"podName": "a"},
               "status": {"node": "worker-1", "featureList": "ipv4", "instructions": 118,
                          "state": "Loaded"}}
        await kube.kubectl("create", "-f", "-", stdin=json.dumps(obj))
        out = (await kube.kubectl("get", "pp", "-A")).stdout
    header, row = out.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "NODE", "FEATURES", "INSTRUCTIONS", "STATE", "AGE"]
    assert row.split()[:6] == ["x", "a", "worker-1", "ipv4", "118", "Loaded"]


@pytest.mark.operator
@pytest.mark.asyncio
async def test_the_operator_finds_the_agents_the_chart_runs():
    """Agent discovery is defined once: the operator is told the labels the
    chart gives its agent pods, and a pod made from the rendered DaemonSet's
    template (scheduled and running, as a kubelet reports it) is found."""
    import copy

    from tailor.operator.controller import events

    needs_helm()
    async with kubectl_harness.kube(tailor=False) as kube:
        await install(kube)
        ds = rendered(kube, "apps/v1/daemonsets", "tailor-agent")
        deployment = rendered(kube, "apps/v1/deployments", "tailor-operator")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    selector = events.parse_selector(command[command.index("--agent-selector") + 1])
    template = copy.deepcopy(ds["spec"]["template"])
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {**template["metadata"], "name": "tailor-agent-x1", "namespace": "kube-system"},
           "spec": {**template["spec"], "nodeName": "node-1"},
           "status": {"phase": "Running", "podIP": "192.168.77.1"}}
    world = events.World(selector)
    world.apply(events.POD, None, events.essence(events.POD, pod))
    assert world.agent_address("node-1") == "192.168.77.1:9501"
    # The operator's default is the chart's labels of any release.
    assert events.World().agent_selector.items() <= selector.items()


@pytest.mark.operator
@pytest.mark.asyncio
@pytest.mark.parametrize("values, named", [
    ({"agent": {"routing": "bgp"}}, "routing"),
    ({"agent": {"logLevel": "loud"}}, "logLevel"),
    ({"ports": {"agentGrpc": 70000}}, "agentGrpc"),
    ({"agnet": {"backend": "kernel"}}, "agnet"),
])
async def test_install_refuses_bad_values_by_name(values, named):
    """values.schema.json: a value the chart cannot use, or a misspelt key, is
    refused at install with the field named — never rendered into a broken pod."""
    needs_helm()
    async with kubectl_harness.kube(tailor=False) as kube:
        env = dict(os.environ, HELM_DRIVER="memory")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", INSTALL, str(kube.kubeconfig), str(CHART), json.dumps(values),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        _, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode != 0 and named in err.decode(), err.decode()[-2000:]
