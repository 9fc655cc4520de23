"""kind/: the cluster config, up.sh and down.sh, checked without a cluster.

kind/up.sh needs kind, a container engine, kubectl and helm, which this
repository does not install, so nothing here starts a cluster. What is
checked instead (shellcheck: tests/project/test_scripts.py): kind-config.yaml is what the
chart's defaults expect (kind's CNI off, one pod subnet the nodes'
spec.podCIDRs come from, tailor's conflist sorting before kindnet's); up.sh
installs charts/tailor with the image scripts/build-image.sh builds, at the
chart's appVersion; and its first step, the tool check, run with an empty
PATH, names every missing tool.
"""
from __future__ import annotations

import ipaddress
import os
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
KIND = ROOT / "kind"
CHART = ROOT / "charts/tailor"
UP = KIND / "up.sh"
DOWN = KIND / "down.sh"
SCRIPTS = [UP, DOWN]
BUILD_IMAGE = ROOT / "scripts/build-image.sh"
# kind's own CNI config (kindnet), which tailor's must sort before.
KINDNET_CONF = "10-kindnet.conflist"
BASH = shutil.which("bash")


def kind_config() -> dict:
    return yaml.safe_load((KIND / "kind-config.yaml").read_text())


def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def up_text() -> str:
    return UP.read_text()


def assignment(text: str, name: str) -> str:
    """The value of a top-level `name=value` line of a script."""
    found = re.findall(rf"^{name}=(\S+)$", text, re.M)
    assert len(found) == 1, f"{name}= is assigned {len(found)} times"
    return found[0].strip("\"'")


def helm_install_command(text: str) -> str:
    """up.sh's `helm upgrade --install` call, continuation lines joined."""
    joined = text.replace("\\\n", " ")
    (line,) = [ln for ln in joined.splitlines() if re.match(r"\s*helm upgrade --install\b", ln)]
    return " ".join(line.split())


# --- the scripts as scripts ---------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_scripts_are_strict_bash_executables(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert re.search(r"^set -euo pipefail$", text, re.M)
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    # The same cluster, by the same variable and default, in both.
    assert '"${TAILOR_KIND_CLUSTER:-tailor}"' in text


# --- kind-config.yaml against the chart's defaults ----------------------------

def test_kind_config_is_a_kind_cluster_without_default_cni():
    config = kind_config()
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["networking"]["disableDefaultCNI"] is True
    # kube-proxy stays: tailor leaves Services and node traffic to it.
    assert config["networking"].get("kubeProxyMode", "iptables") != "none"


def test_kind_config_nodes():
    roles = [node["role"] for node in kind_config()["nodes"]]
    assert roles.count("control-plane") == 1
    assert roles.count("worker") == 2
    assert len(roles) == 3


def test_pod_subnet_feeds_the_nodes_pod_cidrs():
    networking = kind_config()["networking"]
    pods = ipaddress.ip_network(networking["podSubnet"])   # raises on an invalid CIDR
    assert pods.version == 4 and networking.get("ipFamily", "ipv4") == "ipv4"
    # kube-controller-manager gives each node a /24 (its default IPv4 mask)
    # out of podSubnet: there must be one for every node.
    assert pods.prefixlen <= 24
    assert 2 ** (24 - pods.prefixlen) >= len(kind_config()["nodes"])
    # ... and the chart uses exactly those (the Nodes' spec.podCIDRs).
    assert values()["podCIDRs"]["source"] == "node"


def test_service_subnet_is_apart_from_the_pods():
    networking = kind_config()["networking"]
    pods = ipaddress.ip_network(networking["podSubnet"])
    services = ipaddress.ip_network(networking["serviceSubnet"])
    assert services == ipaddress.ip_network("10.96.0.0/16")
    assert not pods.overlaps(services)


def test_tailor_conflist_sorts_before_kindnets():
    # The runtime takes the lowest-sorting file of the conf dir (byte order).
    conf = values()["cni"]["confName"]
    assert conf.endswith(".conflist")
    assert sorted([KINDNET_CONF, conf])[0] == conf and conf != KINDNET_CONF


# --- up.sh: the chart, the image, the version ---------------------------------

def test_up_installs_the_chart_with_the_local_image():
    text = up_text()
    command = helm_install_command(text)
    assert re.search(r'"\$root/charts/tailor"|\bcharts/tailor\b', command), command
    assert "-n \"$namespace\"" in command and assignment(text, "namespace") == "kube-system"
    sets = dict(re.findall(r"--set ([\w.]+)=(\S+)", command))
    repository = sets["image.repository"]
    if repository.startswith('"$'):
        repository = assignment(text, repository.strip('"$'))
    assert repository == "localhost/tailor"
    assert sets["image.tag"] == '"$version"'
    assert sets["image.pullPolicy"] == "Never"
    assert "--wait" in command.split()
    # Built, then loaded from an archive (no registry).
    assert re.search(r'scripts/build-image\.sh" --tag "\$version" --save "\$archive"', text)
    assert 'kind load image-archive "$archive" --name "$cluster"' in text
    assert '--config "$root/kind/kind-config.yaml"' in text


def test_up_image_repository_is_what_build_image_builds():
    if not BUILD_IMAGE.exists():
        pytest.skip("scripts/build-image.sh does not exist yet")
    built = re.search(r'^image="([^":$]+):\$tag"$', BUILD_IMAGE.read_text(), re.M)
    assert built, "scripts/build-image.sh no longer sets image=\"REPOSITORY:$tag\""
    assert assignment(up_text(), "repository") == built.group(1)


def test_up_waits_for_the_charts_objects():
    text = up_text()
    release = assignment(text, "release")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    # The chart names its objects <release>-agent / -operator when the release
    # name contains the chart's (_helpers.tpl tailor.fullname).
    assert chart["name"] in release
    helpers = (CHART / "templates/_helpers.tpl").read_text()
    assert 'printf "%s-agent" (include "tailor.fullname" .)' in helpers
    assert 'rollout status "ds/$release-agent"' in text
    assert 'rollout status "deploy/$release-operator"' in text
    assert "wait --for=condition=Ready nodes --all" in text
    assert "get pp -A" in text


def test_up_smoke_test_is_bounded_and_overridable():
    text = up_text()
    assert assignment(text, "smoke_ns") == "tailor-smoke"
    assert '"${TAILOR_SMOKE_IMAGE:-' in text
    assert "kind: NetworkPolicy" in text and "policyTypes: [Ingress]" in text
    assert "--http-port=8080" in text
    # Every attempt under `timeout`, every retry loop against a deadline.
    assert re.search(r"\btimeout \$\(\(", text)
    assert "deadline=$((SECONDS + smoke_timeout))" in text
    assert re.search(r"\(\(SECONDS < deadline\)\)", text)


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_up_reads_the_chart_app_version():
    got = subprocess.run([BASH, "-c", 'source kind/up.sh && chart_version'],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert got.returncode == 0, got.stderr
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert got.stdout.strip() == str(chart["appVersion"])


def run_with_path(script: pathlib.Path, path: pathlib.Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={"PATH": str(path), "HOME": str(path), **env})


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_up_names_every_missing_tool(tmp_path):
    got = run_with_path(UP, tmp_path)
    assert got.returncode != 0
    for tool in ("kind", "docker", "podman", "kubectl", "helm", "timeout"):
        assert f"error: {tool} is not on PATH" in got.stderr, got.stderr
    assert got.stdout == ""


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_up_names_only_the_missing_tool(tmp_path):
    for tool in ("kind", "docker", "podman", "kubectl", "timeout"):
        stub = tmp_path / tool
        stub.write_text("#!/bin/sh\necho called >&2\nexit 1\n")
        stub.chmod(0o755)
    got = run_with_path(UP, tmp_path)
    assert got.returncode != 0
    assert "error: helm is not on PATH" in got.stderr
    assert "kind is not on PATH" not in got.stderr and "called" not in got.stderr, got.stderr


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_up_honours_the_kind_provider(tmp_path):
    got = run_with_path(UP, tmp_path, KIND_EXPERIMENTAL_PROVIDER="podman")
    assert got.returncode != 0
    assert "error: podman is not on PATH" in got.stderr
    assert "docker" not in got.stderr.replace("KIND_EXPERIMENTAL_PROVIDER", "")
    got = run_with_path(UP, tmp_path, KIND_EXPERIMENTAL_PROVIDER="lxc")
    assert got.returncode != 0 and "KIND_EXPERIMENTAL_PROVIDER=lxc" in got.stderr


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_down_names_missing_kind(tmp_path):
    got = run_with_path(DOWN, tmp_path)
    assert got.returncode != 0
    assert "error: kind is not on PATH" in got.stderr
