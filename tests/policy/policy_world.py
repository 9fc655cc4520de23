"""Shared helpers for the policy tests: a small e2e-style cluster (namespaces
x, y, z labelled ns=<name>; pods a, b, c labelled pod=<name>, each serving
TCP/UDP/SCTP on 80 and 81 under the names serve-<port>-<proto>) and short
ways to ask the model about it."""
from __future__ import annotations

import yaml

from tailor.operator import policy
from tailor.operator.cluster import manifests
from tailor.operator.cluster.state import ClusterState

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")


def topology() -> list[dict]:
    docs: list[dict] = []
    for i, ns in enumerate(NAMESPACES):
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"ns": ns}}})
        for j, pod in enumerate(PODS):
            ports = [{"name": f"serve-{p}-{proto.lower()}", "containerPort": p, "protocol": proto}
                     for p in (80, 81) for proto in ("TCP", "UDP", "SCTP")]
            docs.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                         "spec": {"containers": [{"name": "c", "image": "agnhost", "ports": ports}]},
                         "status": {"podIP": f"10.0.{i}.{10 + j}"}})
    return docs


def world(text: str = "", with_topology: bool = True) -> ClusterState:
    """The topology plus the YAML documents in `text`."""
    state = ClusterState()
    docs = [("topology", d) for d in topology()] if with_topology else []
    docs += [("test.yaml", d) for d in yaml.safe_load_all(text) if d]
    manifests.apply(state, docs)
    return state


def allowed(state: ClusterState, src: str, dst: str, protocol: str = "TCP", port: int = 80) -> bool:
    """Is src -> dst allowed? Pods as `ns/name`; a source may be an IP address."""
    source = src if src[0].isdigit() or ":" in src else state.find_pod(src)
    return policy.connection_allowed(state, source, state.find_pod(dst), protocol, port)


def reachable(state: ClusterState, protocol: str = "TCP", port: int = 80) -> set[tuple[str, str]]:
    """All allowed (src, dst) pairs of distinct pods, as `ns/name`."""
    pods = state.sorted_pods()
    return {(f"{s.namespace}/{s.name}", f"{d.namespace}/{d.name}") for s in pods for d in pods
            if s is not d and policy.connection_allowed(state, s, d, protocol, port)}


def all_pairs(state: ClusterState) -> set[tuple[str, str]]:
    names = [f"{p.namespace}/{p.name}" for p in state.sorted_pods()]
    return {(s, d) for s in names for d in names if s != d}
