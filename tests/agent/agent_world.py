"""Shared helpers for the agent tests: a small namespace `app` with pods
client, server and other, a policy that lets only `client` reach `server`
on port 80 (TCP and UDP), and the programs the compiler makes for them,
as the agent API's messages."""
from __future__ import annotations

from tailor.datapath.agent import wire
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.operator.cluster import manifests
from tailor.operator.cluster.state import ClusterState
from tailor.datapath.groups import HOST, GroupChange
from tailor.operator import groups
from tailor.operator.compiler import build

NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app", "labels": {"team": "a"}}}
ADDRESSES = {"client": "10.244.0.11", "server": "10.244.0.12", "other": "10.244.0.13"}
ROLES = {"client": "client", "server": "server", "other": "other"}


def pod_doc(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "app", "labels": {"role": ROLES[name]},
                         "uid": f"uid-{name}"},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
            "status": {"podIPs": [{"ip": ADDRESSES[name]}]}}


def policy(ports=(80,)) -> dict:
    """Ingress to server: only from client, on `ports` (TCP and UDP)."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "server-in", "namespace": "app"},
            "spec": {"podSelector": {"matchLabels": {"role": "server"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                  "ports": [{"port": p, "protocol": proto}
                                            for p in ports for proto in ("TCP", "UDP")]}]}}


def programs(ports=(80,), with_policy: bool = True) -> dict[str, pb.PodProgram]:
    """{pod name: PodProgram message} for the three pods."""
    state = ClusterState()
    docs = [NS] + [pod_doc(n) for n in ADDRESSES] + ([policy(ports)] if with_policy else [])
    manifests.apply(state, [("test", d) for d in docs])
    out = {}
    members = groups.Memberships(state)
    for ref, built in build.build(state).items():
        name = ref.split("/")[1].split("[")[0]
        members.define(built.spec.definitions.values())
        changes = [GroupChange(g, tuple(sorted(members.members(g), key=str)), replace=True)
                   for g in sorted(built.spec.group_ids())]
        out[name] = wire.to_proto("app", name, f"uid-{name}", built.programs, {},
                                  (ADDRESSES[name],), changes)
    return out


def group_of(received) -> str:
    """The one group a received program tests (the server's: its clients)."""
    (gid,) = {i.group for insns in received.insns.values() for i in insns if i.group} - {HOST}
    return gid
