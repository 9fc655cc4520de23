"""Helpers for the CNI tests (fixtures in conftest.py): running the plugin
like a runtime does, a real agent-side server with real IPAM and wiring and a
fake program hand-off, and network namespaces.

Every name the tests create carries this process's id (`tailor-test-<pid>-n`
namespaces, `tt<pid>x<n>` container ids), so the finalizers remove exactly
what this run made.
"""
from __future__ import annotations

import itertools
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

from tailor.datapath.agent.cni import handler as cni_handler
from tailor.datapath.agent.cni import ipam as cni_ipam
from tailor.datapath.agent.cni import server as cni_server
from tailor.datapath.agent.cni import wiring as cni_wiring

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE_CIDRS = ["10.244.1.0/24", "fd00:10:244:1::/64"]
PID = os.getpid()
_counter = itertools.count()


# -- the plugin ---------------------------------------------------------------------

def console_script() -> str:
    """The installed `tailor-cni` (the venv's own script, not a pyenv shim)."""
    exe = os.path.join(os.path.dirname(sys.executable), "tailor-cni")
    if not os.access(exe, os.X_OK):
        pytest.fail(f"{exe} is missing: pip install -e '.[test]'")
    return exe


def run_plugin(exe: str, command: str | None, config: dict | str | None = None, **env) -> tuple[int, dict | None, str]:
    """Run the plugin like a runtime: CNI_* from `env`, the config on stdin.
    Returns (exit code, parsed stdout or None when empty, raw stdout)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    if command is not None:
        environ["CNI_COMMAND"] = command
    environ.update({k: v for k, v in env.items() if v is not None})
    data = config if isinstance(config, str) else json.dumps(config or {})
    done = subprocess.run([exe], input=data, capture_output=True, text=True, env=environ, timeout=120)
    out = done.stdout.strip()
    return done.returncode, (json.loads(out) if out else None), done.stdout + done.stderr


# -- the agent side ----------------------------------------------------------------

class FakeAttach:
    """Stands in for the agent core's program hand-off."""

    def __init__(self):
        self.attached: list[tuple[dict, cni_wiring.Endpoint]] = []
        self.detached: list[tuple[str, str]] = []
        self.mode = "ok"          # ok | reject | unavailable | slow
        self.delay = 0.0
        self.ready = cni_handler.Readiness.READY
        self._lock = threading.Lock()

    def attach(self, pod: dict, endpoint: cni_wiring.Endpoint) -> None:
        if self.mode == "slow":
            time.sleep(self.delay)
        if self.mode == "reject":
            raise RuntimeError("verifier rejected the program")
        if self.mode == "unavailable":
            raise cni_handler.AttachUnavailable("backend not connected")
        with self._lock:
            self.attached.append((pod, endpoint))

    def detach(self, container_id: str, ifname: str) -> None:
        with self._lock:
            self.detached.append((container_id, ifname))


class Agent:
    def __init__(self, root: str):
        self.root = root
        self.socket = os.path.join(root, "cni.sock")
        self.ipam = cni_ipam.Ipam.from_cidrs(os.path.join(root, "ipam"), NODE_CIDRS)
        self.fake = FakeAttach()
        self.handler = cni_handler.CniHandler(self.ipam, cni_wiring.Wiring(), self.fake.attach,
                                              self.fake.detach, lambda: self.fake.ready)
        self.server = cni_server.CniSocketServer(self.socket, self.handler)

    def config(self, version: str = "1.1.0", **extra) -> dict:
        return {"cniVersion": version, "name": "tailor-test", "type": "tailor",
                "agentSocket": self.socket, "timeoutSeconds": 20, **extra}


def container_id() -> str:
    return f"tt{PID}x{next(_counter)}"


# -- network namespaces --------------------------------------------------------------

class Namespaces:
    def __init__(self):
        self.names: list[str] = []

    def new(self) -> str:
        name = f"tailor-test-{PID}-{next(_counter)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        return f"/var/run/netns/{name}"

    def delete(self, path: str) -> None:
        subprocess.run(["ip", "netns", "del", os.path.basename(path)], capture_output=True)

    def cleanup(self) -> None:
        for name in self.names:
            if os.path.exists(f"/var/run/netns/{name}"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)


def namespaces_left() -> list[str]:
    if not os.path.isdir("/var/run/netns"):
        return []
    return [n for n in os.listdir("/var/run/netns") if n.startswith(f"tailor-test-{PID}-")]


def tailor_veths() -> list[str]:
    """This run's host-side veths still in the node."""
    return [name for (cid, _), name in cni_wiring.Wiring().host_attachments().items()
            if cid.startswith(f"tt{PID}x")]
