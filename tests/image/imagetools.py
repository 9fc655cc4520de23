"""Helpers of the image tests: where the checkout is, how this machine runs a
container, and skipping (failing with CI=true) without the tools."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What this kind of machine needs to run a container (crun refuses its
# cgroups, the default limits are refused).
RUN = ["podman", "run", "--rm", "--runtime", "runc",
       "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def missing_tools(*tools: str) -> None:
    """Skip (fail with CI=true) when a tool the test needs is not installed."""
    gone = [t for t in tools if shutil.which(t) is None]
    if os.geteuid() != 0:
        gone.append("root")
    if gone:
        message = f"needs {', '.join(gone)} (scripts/install-deps.sh --test installs the tools)"
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but " + message)
        pytest.skip(message)



def run(image: str, *argv: str, entrypoint: str | None = None, env: dict | None = None,
        network: str = "none") -> subprocess.CompletedProcess:
    cmd = RUN + ["--network", network]
    for k, v in (env or {}).items():
        cmd += ["--env", f"{k}={v}"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run(cmd + [image, *argv], capture_output=True, text=True, timeout=120)
