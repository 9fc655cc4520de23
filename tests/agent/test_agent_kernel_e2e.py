"""`tailor agent --backend kernel` in a node network namespace, driven the
way a cluster drives it: programs by gRPC Apply, pods by CNI ADD over the
unix socket (the agent wires the veth and attaches before answering), real
traffic between the pods, DEL, and a restart that adopts the pinned state."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest

import agent_world as world
import kernel_lab
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.api import agent_pb2_grpc as rpc
from tailor.datapath.cni import protocol
from tailor.datapath.ebpf import kernel

pytestmark = pytest.mark.kernel

TAG = f"e{os.getpid() % 100000}"


def _cni(path, command, name, netns=""):
    config = {"cniVersion": "1.1.0", "name": "tailor", "type": "tailor", "timeoutSeconds": 10,
              "ipam": {"ranges": [[{"subnet": "10.244.0.0/24", "rangeStart": world.ADDRESSES[name],
                                    "rangeEnd": world.ADDRESSES[name]}]]}}
    args = {"K8S_POD_NAMESPACE": "app", "K8S_POD_NAME": name, "K8S_POD_UID": f"uid-{name}"}
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(protocol.encode(protocol.request(command, f"c-{name}", netns, "eth0", args, config)))
        return protocol.read_message(s, time.monotonic() + 15)


def _links(netns: str) -> list[str]:
    import json
    return sorted(i["ifname"] for i in json.loads(kernel_lab.sh("ip", "-j", "-n", netns, "link", "show")))


class _Agent:
    def __init__(self, node_ns, tmp, root):
        self.listen, self.cni = f"{tmp}/agent.sock", f"{tmp}/cni.sock"
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{node_ns}", sys.executable, "-m", "tailor.cli.main",
             "agent", "--node", "e2e", "--backend", "kernel", "--listen", f"unix:{self.listen}",
             "--socket", self.cni, "--state-dir", f"{tmp}/state", "--bpffs-root", root,
             "--pod-cidr", "10.244.0.0/24", "--attach-timeout", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.cni):
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        self.channel = grpc.insecure_channel(f"unix:{self.listen}")
        self.stub = rpc.AgentStub(self.channel)

    def stop(self):
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err
        return out


def test_agent_process_wires_attaches_enforces_and_adopts(tmp_path):
    node = f"tln-{TAG}"
    root = f"/sys/fs/bpf/tailor-test-{TAG}"
    names = ("client", "server", "other")
    lab = kernel_lab.Lab(TAG, dict(world.ADDRESSES))    # for probes; wiring is the agent's
    kernel_lab.sh("ip", "netns", "add", node)
    for n in names:
        kernel_lab.sh("ip", "netns", "add", lab.ns[n])
    agent = None
    try:
        agent = _Agent(node, tmp_path, root)
        programs = world.programs()
        for n in ("client", "server"):
            assert agent.stub.Apply(pb.ApplyRequest(program=programs[n])).status.state == pb.PENDING
        for n in ("client", "server"):
            answer = _cni(agent.cni, "ADD", n, f"/var/run/netns/{lab.ns[n]}")
            assert answer["ok"], answer
            assert answer["result"]["ips"][0]["address"] == f"{world.ADDRESSES[n]}/32"
            assert agent.stub.Get(pb.GetRequest(pod=pb.PodRef(namespace="app", name=n))).state \
                == pb.LOADED
        # No program for `other`, no program source: ADD fails with code 11, nothing left behind.
        links_before = _links(node)
        failed = _cni(agent.cni, "ADD", "other", f"/var/run/netns/{lab.ns['other']}")
        assert not failed["ok"] and failed["code"] == protocol.ERR_TRY_AGAIN, failed
        assert "no program for pod app/other" in failed["details"], failed
        assert _links(node) == links_before
        agent.stub.Apply(pb.ApplyRequest(program=programs["other"]))
        assert _cni(agent.cni, "ADD", "other", f"/var/run/netns/{lab.ns['other']}")["ok"]

        lab.serve("server")
        assert lab.probe("client", "server", "TCP", 80)
        assert not lab.probe("other", "server", "TCP", 80)
        counters = agent.stub.Counters(pb.CountersRequest(pod=pb.PodRef(namespace="app", name="client")))
        assert counters.egress.redirected >= 1

        # Restart: the programs stay in force while no agent runs, and are adopted.
        ids = {p.pod.name: p.ingress.program_id for p in agent.stub.List(pb.ListRequest()).pods}
        assert "0 pods adopted" in agent.stop()
        agent = None
        assert not lab.probe("other", "server", "TCP", 80)
        agent = _Agent(node, tmp_path, root)
        listed = agent.stub.List(pb.ListRequest()).pods
        assert {p.pod.name: p.ingress.program_id for p in listed} == ids
        assert all(p.state == pb.LOADED for p in listed)
        assert lab.probe("client", "server", "TCP", 80) and not lab.probe("other", "server", "TCP", 80)

        for n in names:
            assert _cni(agent.cni, "DEL", n, f"/var/run/netns/{lab.ns[n]}")["ok"]
            assert _cni(agent.cni, "DEL", n)["ok"]                       # idempotent
        assert kernel_lab.tree(os.path.join(root, "pods")) == []
        assert "3 pods adopted" in agent.stop()
        agent = None
    finally:
        if agent is not None:
            agent.proc.kill()
            agent.proc.wait()
        lab.down()
        kernel_lab.sh("ip", "netns", "del", node, check=False)
        if os.path.isdir(root):
            kernel.remove_tree(root)
