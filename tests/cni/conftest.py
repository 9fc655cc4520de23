"""Fixtures for the CNI tests: the plugin executables (the console script,
the PyInstaller build and the `python3 -IS` script tailor.datapath.cni.install
writes, which every plugin test runs against), a running agent-side server,
and network namespaces that are always removed."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile

import pytest

import cni_harness
from tailor.datapath.agent.cni import wiring as cni_wiring
from tailor.datapath.cni import install as cni_install

PLUGIN_SOURCES = [cni_harness.ROOT / p for p in (
    "datapath/cni/__init__.py", "datapath/cni/main.py", "datapath/cni/protocol.py",
    "scripts/build-cni.sh")]


@pytest.fixture(scope="session")
def pyinstaller_plugin() -> str:
    """build/cni/tailor, rebuilt only when the plugin's sources change."""
    root = cni_harness.ROOT
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in PLUGIN_SOURCES)).hexdigest()
    exe, stamp = root / "build/cni/tailor", root / "build/cni/tailor.srchash"
    if exe.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return str(exe)
    if shutil.which("pyinstaller") is None:
        pytest.fail("pyinstaller is missing: pip install -e '.[test]'")
    run = subprocess.run([str(root / "scripts/build-cni.sh")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    stamp.write_text(digest + "\n")
    return str(exe)


@pytest.fixture(scope="session")
def installed_plugin(tmp_path_factory) -> str:
    """The plugin as a node's installer puts it into its CNI bin dir."""
    return cni_install.install(str(tmp_path_factory.mktemp("cni-bin")))


@pytest.fixture(params=["script", "pyinstaller", "installed"])
def plugin(request) -> str:
    if request.param == "script":
        return cni_harness.console_script()
    return request.getfixturevalue(f"{request.param}_plugin")


@pytest.fixture
def agent():
    root = tempfile.mkdtemp(prefix="tl-agent-")   # short: a unix socket path is < 108 bytes
    a = cni_harness.Agent(root)
    a.server.start()
    yield a
    a.server.stop()
    # Whatever a failing test left behind: this run's veths, then the state.
    wiring = cni_wiring.Wiring()
    for (container_id, ifname) in wiring.host_attachments():
        if container_id.startswith(f"tt{cni_harness.PID}x"):
            wiring.teardown(container_id, ifname)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def netns():
    spaces = cni_harness.Namespaces()
    yield spaces
    spaces.cleanup()
