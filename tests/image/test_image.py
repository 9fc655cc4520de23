"""The image tailor ships, built here: it holds every part the chart runs
(the `tailor` command, the standalone CNI executable, what the agent drives)
and nothing of the machine it was built on."""
from __future__ import annotations

import json
import re

import pytest

from imagetools import ROOT, run

pytestmark = pytest.mark.kernel


def _version() -> str:
    with open(f"{ROOT}/pyproject.toml") as f:
        return re.search(r'^version = "(.+)"', f.read(), re.M).group(1)


def test_the_image_runs_tailor_version(image):
    got = run(image, "--version")
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == f"tailor {_version()}"
    assert image.endswith(f":{_version()}")


def test_the_cni_executable_answers_version(image):
    got = run(image, entrypoint="/opt/tailor/cni/tailor", env={"CNI_COMMAND": "VERSION"})
    assert got.returncode == 0, got.stderr
    answer = json.loads(got.stdout)
    assert "1.1.0" in answer["supportedVersions"] and answer["cniVersion"] == "1.1.0"


def test_an_unknown_cni_command_is_a_cni_error(image):
    got = run(image, entrypoint="/opt/tailor/cni/tailor", env={"CNI_COMMAND": "FROB"})
    assert got.returncode != 0
    error = json.loads(got.stdout)
    assert error["code"] and "FROB" in error["msg"] + error.get("details", "")


def test_the_image_holds_what_the_agent_drives(image):
    script = ("set -e; test -x /usr/lib/cni/portmap; nft --version; ip -V; "
              "python3 -c 'import ctypes.util; print(ctypes.util.find_library(\"bpf\"))'; "
              "tailor agent --help >/dev/null; tailor operator --help >/dev/null; "
              "python3 -c 'import kopf, grpc, pyroute2, prometheus_client, yaml'")
    got = run(image, "-c", script, entrypoint="/bin/sh")
    assert got.returncode == 0, got.stderr
    assert "nftables" in got.stdout and "iproute2" in got.stdout and "libbpf.so.1" in got.stdout


def test_nothing_of_the_build_is_left_in_the_image(image):
    """No checkout, no build tools, no build-time trust of this machine."""
    got = run(image, "-c", "ls /src 2>&1; command -v objdump pyinstaller; "
              "ls /usr/local/share/ca-certificates", entrypoint="/bin/sh")
    assert "No such file" in got.stdout
    assert "objdump" not in got.stdout and "pyinstaller" not in got.stdout
    assert not got.stdout.strip().endswith(".crt")
