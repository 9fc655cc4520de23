"""README's set-up on a stock Debian bookworm: Debian's own python3, which
refuses `pip install` into the system (PEP 668) and cannot make a virtual
environment until python3-venv is installed. The install step (`make
install`, scripts/install-deps.sh) runs there from a copy of the checkout's
files (tracked and not ignored: nothing this machine built, no `.venv`), and
the `tailor` it installs answers."""
from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile

import pytest

from imagetools import ROOT, RUN, missing_tools

pytestmark = pytest.mark.kernel

IMAGE = "localhost/tailor-stock-debian:bookworm"
# What the user has before README's first command: Debian's minimal system,
# its python3, make (README's commands are make targets) and ca-certificates
# (python3-venv pulls it in anyway; present here so the host's bundle mounted
# over its file below is never rewritten by its postinst). Not python3-venv,
# not python3-pip.
PACKAGES = ["python3", "make", "ca-certificates"]
# The host's trust (a proxy's CA, say), for pip in the container only.
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
INSTALL_TIMEOUT = 900

SCRIPT = f"""
set -u
test -f /usr/lib/python3.11/EXTERNALLY-MANAGED || {{ echo "@@ no EXTERNALLY-MANAGED: PEP 668 not in force"; exit 10; }}
if python3 -m venv /tmp/v >/dev/null 2>&1; then echo "@@ python3 -m venv works without python3-venv"; exit 11; fi
if dpkg -s python3-venv >/dev/null 2>&1; then echo "@@ python3-venv already installed"; exit 12; fi
echo "@@ pep668=in-force"
mkdir /root/tailor && tar -x -C /root/tailor || exit 13
cd /root/tailor
test -e .venv && {{ echo "@@ .venv came with the copy"; exit 14; }}
start=$(date +%s)
timeout {INSTALL_TIMEOUT} make install </dev/null 2>&1
echo "@@ install-exit=$?"
echo "@@ install-seconds=$(($(date +%s) - start))"
test -x .venv/bin/python && echo "@@ venv=created"
dpkg -s python3-venv >/dev/null 2>&1 && echo "@@ python3-venv=installed"
.venv/bin/tailor connectivity -f examples/01-namespaces-and-ports --format json >/tmp/out.json 2>/tmp/err.txt
echo "@@ connectivity-exit=$?"
cat /tmp/err.txt
echo "@@ json-begin"
cat /tmp/out.json
echo "@@ json-end"
"""


def _checkout_tar() -> bytes:
    """The checkout as `git ls-files` sees it: tracked files and untracked ones
    not ignored (a tracked file deleted in the work tree is left out)."""
    names = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], capture_output=True, check=True).stdout
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(set(names.decode().split("\0")) - {""}):
            path = os.path.join(ROOT, name)
            if os.path.lexists(path):
                tar.add(path, arcname=name, recursive=False)
    return buf.getvalue()


def _containers(name: str) -> list[str]:
    out = subprocess.run(["podman", "ps", "--all", "--format", "{{.Names}}"],
                         capture_output=True, text=True, check=True).stdout.split()
    return [c for c in out if c == name]


def _marks(out: str) -> dict[str, str]:
    marks = {}
    for line in out.splitlines():
        if line.startswith("@@ ") and "=" in line:
            key, _, value = line[3:].partition("=")
            marks[key] = value
    return marks


def test_readme_install_step_works_on_stock_debian():
    missing_tools("podman", "mmdebstrap", "runc")
    built = subprocess.run([os.path.join(ROOT, "scripts", "debian-rootfs.sh"), IMAGE, *PACKAGES],
                           cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]

    name = f"tailor-stock-debian-{os.getpid()}"
    cmd = RUN + ["--name", name, "--network", "host", "--interactive",
                 # The step mounts bpffs, as root on a machine may; in a
                 # container that takes CAP_SYS_ADMIN (the mount is the
                 # container's own and goes with it).
                 "--cap-add", "SYS_ADMIN"]
    if os.path.isfile(BUNDLE):
        cmd += ["--volume", f"{BUNDLE}:{BUNDLE}:ro", "--env", f"PIP_CERT={BUNDLE}"]
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        if os.environ.get(var):
            cmd += ["--env", f"{var}={os.environ[var]}"]
    cmd += [IMAGE, "/bin/sh", "-c", SCRIPT]
    try:
        got = subprocess.run(cmd, input=_checkout_tar(), capture_output=True,
                             timeout=INSTALL_TIMEOUT + 300)
    finally:
        subprocess.run(["podman", "rm", "--force", "--ignore", name], capture_output=True)
    out = got.stdout.decode(errors="replace")
    # The container's last lines before the JSON.
    log = out.split("@@ json-begin\n", 1)[0] + got.stderr.decode(errors="replace")
    tail = "\n".join(log.splitlines()[-40:])
    marks = _marks(out)

    assert marks.get("pep668") == "in-force", f"exit {got.returncode}:\n{tail}"
    assert marks.get("install-exit") == "0", f"make install failed:\n{tail}"
    assert marks.get("venv") == "created", f"no .venv/bin/python:\n{tail}"
    assert marks.get("python3-venv") == "installed", f"python3-venv not installed:\n{tail}"
    assert marks.get("connectivity-exit") == "0", f"tailor connectivity failed:\n{tail}"
    assert got.returncode == 0, f"exit {got.returncode}:\n{tail}"

    text = out.split("@@ json-begin\n", 1)[1].split("@@ json-end", 1)[0]
    try:
        answer = json.loads(text)
    except ValueError as e:
        pytest.fail(f"connectivity's output is not JSON ({e}):\n{tail}")
    connections = answer["connections"]
    assert connections, f"no connections:\n{text[-2000:]}"
    for c in connections:
        assert c["src"] and c["dst"] and c["protocol"] in ("TCP", "UDP", "SCTP"), c
    assert _containers(name) == []
