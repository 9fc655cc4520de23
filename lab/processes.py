"""The lab's long-running processes: one node agent per node and the
control plane — the lab's controller, or (`--control operator`) an API
server and `tailor operator`.

Called by lab.up/down and by tests (the kill -9 test restarts an agent with
the argv recorded here). Each process runs in its own session (it outlives
`tailor lab up`), logs to `<run_dir>/<name>.log`, and is recorded in the
state file under `processes` with its PID and argv before `up` waits for it.
A PID is only ever signalled after /proc/<pid>/cmdline shows it is still
the process the lab started (PIDs are reused).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tailor.lab import netns as netns_
from tailor.lab import state as state_

READY_SECONDS = 30.0
STOP_SECONDS = 5.0


class ProcessError(Exception):
    """A process did not start or did not become ready; the message quotes its log."""


def python() -> list[str]:
    return [sys.executable]


def agent_argv(data: dict, node: dict) -> list[str]:
    """Kernel: the real agent (`tailor agent`). Emulated: the same core and
    backend behind lab/emulated.py, which stands in for the CNI."""
    source = f"unix:{source_socket(data)}"
    if data["backend"] == "emulated":
        return python() + ["-m", "tailor.lab.emulated", "--node", node["name"],
                           "--listen", f"unix:{node['agent_socket']}",
                           "--wire", f"unix:{node['cni_socket']}", "--program-source", source,
                           *node_ips(node)]
    args = ["agent", "--node", node["name"],
            "--backend", "kernel", "--listen", f"unix:{node['agent_socket']}",
            "--socket", node["cni_socket"], "--program-source", source,
            "--bpffs-root", node["bpffs_root"], "--state-dir", node["state_dir"]]
    for cidr in node["pod_cidrs"]:
        args += ["--pod-cidr", cidr]
    # As in a cluster: the agent routes to the other nodes' pods from the
    # Nodes it is sent, and masquerades what leaves the cluster.
    args += ["--routing", data.get("routing", "native"), "--masquerade"] + node_ips(node)
    return tailor(data, f"agent/{node['name']}", args, netns=node["netns"])


def tailor(data: dict, key: str, args: list[str], *, netns: str | None = None) -> list[str]:
    """`tailor ARGS` from the checkout, or (`lab up --image`) in a container
    of the image, which joins `netns` itself (agent_netns says where the
    process must be started)."""
    if data.get("image"):
        from tailor.lab import image

        return image.run_argv(data, key, args, netns=netns, agent=args[0] == "agent")
    return python() + ["-m", "tailor.cli.main", *args]


def agent_netns(data: dict, node: dict) -> str | None:
    """The namespace to start the node's agent in: none for a container,
    which podman puts into the node's namespace."""
    return None if data.get("image") and data["backend"] == "kernel" else node["netns"]


def node_ips(node: dict) -> list[str]:
    """The node's addresses, as a real node's Node object lists them."""
    return [a for addr in node["underlay"] for a in ("--node-ip", addr.split("/")[0])]


def source_socket(data: dict) -> str:
    """Where the agents ask for a pod's program at CNI ADD: the lab's
    controller, or the operator's ProgramSource."""
    name = "operator-source.sock" if data.get("control") == "operator" else "controller.sock"
    return os.path.join(data["run_dir"], name)


def apiserver_argv(data: dict) -> list[str]:
    api = data["api"]
    return python() + ["-m", "tailor.lab.apiserver", "--port", str(api["port"]),
                       "--kubeconfig", api["kubeconfig"]]


def operator_argv(data: dict) -> list[str]:
    """`tailor operator` against the lab's API server: one replica (no Lease),
    ProgramSource on a unix socket the agents reach from their namespaces,
    drift repaired every few seconds."""
    api = data["api"]
    return tailor(data, "operator", ["operator", "--kubeconfig", api["kubeconfig"],
                                     "--source-listen", f"unix:{source_socket(data)}", "--no-lease",
                                     "--metrics-port", str(api["metrics_port"]),
                                     "--reconcile-seconds", "5"])


def controller_argv(data: dict) -> list[str]:
    return python() + ["-m", "tailor.lab.control.controller", "--state",
                       os.path.join(data["run_dir"], state_.FILE)]


def start(data: dict, key: str, argv: list[str], netns: str | None = None) -> int:
    """Start `argv` (inside `netns` if given), record it, return its PID."""
    log = os.path.join(data["run_dir"], key.replace("/", "-") + ".log")
    full = netns_.exec_argv(netns, argv) if netns else list(argv)
    with open(log, "ab") as out:
        out.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(full)}\n".encode())
        out.flush()
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=_env())
    # `ip netns exec` execs the command, so this PID is the process itself.
    data.setdefault("processes", {})[key] = {"pid": proc.pid, "argv": argv, "netns": netns, "log": log}
    state_.save(data)
    _children[proc.pid] = proc
    return proc.pid


def restart(data: dict, key: str) -> int:
    """Start a recorded process again with the same arguments (the old one must be gone)."""
    entry = data["processes"][key]
    return start(data, key, entry["argv"], entry.get("netns"))


def alive(entry: dict | None) -> bool:
    """Whether the recorded process is still running (not a zombie) and is ours."""
    if not entry:
        return False
    pid = entry["pid"]
    proc = _children.get(pid)
    if proc is not None:
        # Our own child: its PID cannot be reused before we reap it, and
        # until it has exec'd, /proc/<pid>/cmdline is still ours — checking
        # that raced with a slow exec under load ("apiserver exited").
        return proc.poll() is None
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    wanted = [a.encode() for a in entry["argv"][1:5]]
    return all(w in cmdline for w in wanted)


def signal_process(entry: dict, sig: int) -> bool:
    if not alive(entry):
        return False
    try:
        os.kill(entry["pid"], sig)
    except ProcessLookupError:
        return False
    return True


def stop(data: dict, key: str, timeout: float = STOP_SECONDS) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; False if it was not running."""
    entry = data.get("processes", {}).get(key)
    if not signal_process(entry, signal.SIGTERM):
        return False
    deadline = time.monotonic() + timeout
    while alive(entry) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(entry):
        signal_process(entry, signal.SIGKILL)
        while alive(entry) and time.monotonic() < deadline + 2:
            time.sleep(0.05)
    return True


def log_tail(entry: dict | None, lines: int = 15) -> str:
    if not entry:
        return ""
    try:
        with open(entry["log"], errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except FileNotFoundError:
        return ""


def wait_agent(data: dict, node: dict, timeout: float = READY_SECONDS) -> None:
    """Until the node's agent answers Health with ready=true."""
    import grpc
    from tailor.datapath.agent.api import agent_pb2 as pb
    from tailor.datapath.agent.api import agent_pb2_grpc as pb_grpc

    key = f"agent/{node['name']}"
    entry = data["processes"][key]
    deadline = time.monotonic() + timeout
    last = "no answer"
    with grpc.insecure_channel(f"unix:{node['agent_socket']}") as channel:
        stub = pb_grpc.AgentStub(channel)
        while time.monotonic() < deadline:
            if not alive(entry):
                raise ProcessError(f"the agent of {node['name']} exited; its log "
                                   f"({entry['log']}) ends:\n{log_tail(entry)}")
            try:
                health = stub.Health(pb.HealthRequest(), timeout=1)
                if health.ready:
                    return
                last = "answered ready=false"
            except grpc.RpcError as e:
                last = e.details() or str(e.code())
            time.sleep(0.1)
    raise ProcessError(f"the agent of {node['name']} was not ready after {timeout:g}s ({last}); "
                       f"its log ({entry['log']}) ends:\n{log_tail(entry)}")


def wait_until(data: dict, key: str, attempt, what: str, timeout: float = READY_SECONDS,
               interval: float = 0.05):
    """Call `attempt()` until it returns something other than None, while
    the process `key` runs; `what` says what was awaited, for the error."""
    entry = data["processes"][key]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(entry):
            raise ProcessError(f"{key} exited; its log ({entry['log']}) ends:\n{log_tail(entry)}")
        found = attempt()
        if found is not None:
            return found
        time.sleep(interval)
    raise ProcessError(f"{key} {what} after {timeout:g}s; its log ({entry['log']}) ends:\n{log_tail(entry)}")


def wait_socket(data: dict, key: str, path: str, timeout: float = READY_SECONDS) -> None:
    """Until a unix socket accepts connections (the controller, the operator)."""
    import socket

    def connect():
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(path)
                return True
            except OSError:
                return None

    wait_until(data, key, connect, f"did not listen on {path}", timeout)


# Popen objects of the processes this Python process started, so that
# alive() can reap them instead of seeing zombies.
_children: dict[int, subprocess.Popen] = {}


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
