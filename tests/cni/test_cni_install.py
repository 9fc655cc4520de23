"""tailor.datapath.cni.install: the plugin as a `python3 -IS` script in a CNI
bin dir, with its own copy of the plugin's modules. (Every plugin test in
test_cni_spec.py runs against it as well; here: the install itself, and
that the installed plugin starts without `site` and without the json and
socket packages, checked on what it imports, not with a timer.)"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tailor.datapath.cni import install

ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAME=p"}
CONFIG = ('{"cniVersion": "1.1.0", "name": "n", "type": "tailor", '
          '"agentSocket": "/run/tailor-test-no-agent.sock", "timeoutSeconds": 1}')
# What a plain interpreter start or the json and socket packages would load.
NOT_LOADED = {"site", "json", "re", "enum", "socket", "selectors", "collections", "typing",
              "importlib.metadata", "encodings.utf_8_sig"}


def copies(bin_dir) -> list[str]:
    return sorted(n for n in os.listdir(bin_dir) if n.startswith(install.COPY_PREFIX))


def test_the_script_runs_its_interpreter_isolated_from_site(tmp_path):
    script = install.install(str(tmp_path))
    assert script == str(tmp_path / "tailor") and os.access(script, os.X_OK)
    with open(script) as f:
        assert f.readline() == f"#!{sys.executable} -IS\n"
    (copy,) = copies(tmp_path)
    package = tmp_path / copy / "tailor" / "datapath" / "cni"
    assert sorted(p.name for p in package.glob("*.py")) == ["__init__.py", "main.py", "protocol.py"]
    assert list((package / "__pycache__").glob("main.*.pyc"))   # compiled at install


def test_installing_again_is_idempotent_and_an_upgrade_drops_the_old_copy(tmp_path):
    first = install.install(str(tmp_path))
    before = (copies(tmp_path), open(first).read())
    install.install(str(tmp_path))
    assert (copies(tmp_path), open(first).read()) == before
    # Another interpreter is another copy; the one no script names goes.
    other = tmp_path / "python3-link"
    other.symlink_to(sys.executable)
    install.install(str(tmp_path), python=str(other))
    assert len(copies(tmp_path)) == 1 and copies(tmp_path) != before[0]
    assert subprocess.run([first], env={"CNI_COMMAND": "VERSION"}, capture_output=True).returncode == 0


@pytest.mark.parametrize("python", ["python3", "/opt/my python/bin/python3", "/" + "p" * 300])
def test_an_interpreter_a_shebang_cannot_name_is_refused(tmp_path, python):
    with pytest.raises(install.InstallError):
        install.install(str(tmp_path), python=python)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["VERSION", "ADD"])
def test_a_run_imports_neither_site_nor_json_nor_socket(tmp_path, command):
    script = install.install(str(tmp_path))
    # The script's own flags, plus -X importtime to list what it imports.
    run = subprocess.run([sys.executable, "-IS", "-X", "importtime", script], input=CONFIG,
                         capture_output=True, text=True, env={"CNI_COMMAND": command, **ENV})
    assert run.returncode == (0 if command == "VERSION" else 1), run.stdout + run.stderr
    assert ('"code": 11' in run.stdout) == (command == "ADD"), run.stdout
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if "|" in line}
    assert "tailor.datapath.cni.main" in imported
    assert imported & NOT_LOADED == set()


def test_the_command_line_installs_and_reports_failures(tmp_path):
    run = subprocess.run([sys.executable, "-m", "tailor.datapath.cni.install", str(tmp_path / "bin")],
                         capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == str(tmp_path / "bin" / "tailor"), run.stderr
    run = subprocess.run([sys.executable, "-m", "tailor.datapath.cni.install", str(tmp_path),
                          "--python", "python3"], capture_output=True, text=True)
    assert run.returncode == 1 and "absolute path" in run.stderr
