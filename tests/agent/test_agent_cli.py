"""`tailor agent` as a process: it serves gRPC on a unix socket, metrics over
HTTP and the CNI socket, and stops cleanly on SIGTERM."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import grpc

from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.api import agent_pb2_grpc as rpc
from tailor.datapath.cni import protocol


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(path: str, proc: subprocess.Popen, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_agent_serves_and_stops_on_sigterm(tmp_path):
    listen, cni = tmp_path / "agent.sock", tmp_path / "cni.sock"
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tailor.cli.main", "agent", "--node", "n1", "--backend", "emulated",
         "--listen", f"unix:{listen}", "--socket", str(cni), "--state-dir", str(tmp_path / "state"),
         "--pod-cidr", "10.244.1.0/24", "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(str(cni), proc)
        with grpc.insecure_channel(f"unix:{listen}") as channel:
            health = rpc.AgentStub(channel).Health(pb.HealthRequest(), timeout=5)
        assert (health.node, health.backend, health.ready) == ("n1", "emulated", True)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'tailor_agent_pods_by_state{state="Loaded"} 0.0' in text
        assert "tailor_agent_cni_attach_seconds" in text
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(cni))
            s.sendall(protocol.encode(protocol.request("STATUS", "", "", "", {},
                                                       {"cniVersion": "1.1.0", "type": "tailor"})))
            assert protocol.read_message(s, time.monotonic() + 5) == protocol.ok()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "stopped" in out and not cni.exists()


CONFLIST = '{"cniVersion": "1.1.0", "name": "tailor", "plugins": [{"type": "tailor"}, ' \
           '{"type": "portmap", "capabilities": {"portMappings": true}}]}'


def _agent(tmp_path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tailor.cli.main", "agent", "--node", "n1", "--backend", "emulated",
         "--listen", f"unix:{tmp_path / 'agent.sock'}", "--socket", str(tmp_path / "cni.sock"),
         "--state-dir", str(tmp_path / "state"), "--pod-cidr", "10.244.1.0/24", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_agent_owns_the_nodes_cni_config(tmp_path):
    """Installed once the CNI socket serves, removed at stop: the kubelet
    sees a network exactly while an agent can wire pods, and an uninstall
    leaves none behind."""
    source, confdir = tmp_path / "05-tailor.conflist", tmp_path / "net.d"
    source.write_text(CONFLIST)
    proc = _agent(tmp_path, "--cni-conf", str(source), "--cni-conf-dir", str(confdir))
    try:
        _wait_for(str(confdir / "05-tailor.conflist"), proc)
        assert (tmp_path / "cni.sock").exists()
        assert (confdir / "05-tailor.conflist").read_text() == CONFLIST
        assert os.listdir(confdir) == ["05-tailor.conflist"]   # no temporary left
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert not (confdir / "05-tailor.conflist").exists()


def test_the_cni_config_can_be_kept_across_restarts(tmp_path):
    source, confdir = tmp_path / "05-tailor.conflist", tmp_path / "net.d"
    source.write_text(CONFLIST)
    proc = _agent(tmp_path, "--cni-conf", str(source), "--cni-conf-dir", str(confdir),
                  "--no-cni-conf-remove")
    try:
        _wait_for(str(confdir / "05-tailor.conflist"), proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert (confdir / "05-tailor.conflist").exists()


def test_a_bad_cni_config_stops_the_agent_naming_the_file(tmp_path):
    source = tmp_path / "05-tailor.conflist"
    source.write_text('{"cniVersion": "1.1.0", "type": "tailor"}')   # a single config, not a list
    proc = _agent(tmp_path, "--cni-conf", str(source), "--cni-conf-dir", str(tmp_path / "net.d"))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert str(source) in err and "network list" in err
    assert not (tmp_path / "cni.sock").exists(), "the CNI socket was left behind"
    assert not (tmp_path / "net.d" / "05-tailor.conflist").exists()
