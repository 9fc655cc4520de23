"""The lab as Kubernetes objects, from its manifests and state: what a
cluster would hold before its pods start.

Called by both control planes — the lab's controller loads them into the
operator's engine (`--control lab`), operated creates them in the API server
(`--control operator`) — and by tests. Pure: no I/O.

- Namespaces: each declared one, and one for every namespace a pod or a
  NetworkPolicy names without declaring it; each carries
  `kubernetes.io/metadata.name` as the API server sets it.
- Nodes: the lab's nodes (labels as declared, else `kubernetes.io/hostname`),
  their underlay InternalIPs and the annotation `tailor.dev/agent-address`
  saying where the node's agent listens (a unix socket the operator reaches
  from the root namespace).
- NetworkPolicies, AdminNetworkPolicies, the BaselineAdminNetworkPolicy,
  ClusterNetworkPolicies: as written.
- Pods: each lab pod bound to its node (`spec.nodeName`, as the scheduler
  leaves it) with the lab's uid, no status: the lab reports the addresses
  after CNI ADD, as a kubelet does. A workload becomes its representative pod
  (its template, named after the workload), since the lab runs no workload
  controllers.

- Services: as written, at the ClusterIPs the lab allocated (headless and
  ExternalName ones, which the lab leaves out, are not created).

Anything else in the manifests (ConfigMaps...) is not created.
"""
from __future__ import annotations

import copy
import ipaddress
from collections.abc import Mapping

from tailor.operator.cluster import adminpolicy, manifests, pods
from tailor.operator.cluster.state import NAMESPACE_NAME_LABEL

AGENT_ANNOTATION = "tailor.dev/agent-address"
POLICY_KINDS = ("NetworkPolicy", *adminpolicy.KINDS)
API_VERSIONS = {"Namespace": "v1", "Node": "v1", "Pod": "v1", "Service": "v1",
                "NetworkPolicy": "networking.k8s.io/v1", **adminpolicy.API_VERSIONS}
PATHS = {
    "Namespace": "/api/v1/namespaces",
    "Node": "/api/v1/nodes",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Service": "/api/v1/namespaces/{ns}/services",
    "EndpointSlice": "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "AdminNetworkPolicy": "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies",
    "BaselineAdminNetworkPolicy": "/apis/policy.networking.k8s.io/v1alpha1/baselineadminnetworkpolicies",
    "ClusterNetworkPolicy": "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies",
    "PodProgram": "/apis/tailor.dev/v1alpha1/namespaces/{ns}/podprograms",
}
ALL_PODPROGRAMS = "/apis/tailor.dev/v1alpha1/podprograms"


def path(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    """The API path of `kind` (in `namespace`), or of one object when `name` is given."""
    base = PATHS[kind].format(ns=namespace or "default")
    return f"{base}/{name}" if name else base


def creation_order(lab: dict) -> list[dict]:
    """Every object to create, in an order the API accepts: namespaces, nodes,
    policies, Services (at the ClusterIPs the lab gave them), then pods."""
    found = manifests.objects(lab["manifests"])
    declared_ns = {o["metadata"]["name"]: o for _, o in found if o.get("kind") == "Namespace"}
    policies = [o for _, o in found if o.get("kind") in POLICY_KINDS]
    by_ref = {}
    for _, obj in found:
        kind = obj.get("kind")
        if kind == "Pod" or kind in manifests.WORKLOAD_KINDS:
            ns = obj["metadata"].get("namespace") or "default"
            by_ref[f"{ns}/{obj['metadata']['name']}[{kind}]"] = obj
    declared_nodes = {o["metadata"]["name"]: o for _, o in found if o.get("kind") == "Node"}

    used = {p["namespace"] for p in lab["pods"]}
    used |= {o["metadata"].get("namespace") or "default" for o in policies
             if o["kind"] == "NetworkPolicy"}
    namespaces = [namespace(name, declared_ns.get(name)) for name in sorted(set(declared_ns) | used)]
    nodes = [node(n, declared_nodes.get(n["name"])) for n in lab["nodes"]]
    ips = {(s_["namespace"], s_["name"]): s_["cluster_ips"] for s_ in lab.get("services", [])}
    services = [service(o, ips.get((o["metadata"].get("namespace") or "default", o["metadata"]["name"])))
                for _, o in found if o.get("kind") == "Service"]
    return namespaces + nodes + [_clean(o) for o in policies] + [s_ for s_ in services if s_] + \
        [pod(p, by_ref[p["ref"]]) for p in lab["pods"]]


def service(declared: Mapping, cluster_ips: list[str] | None) -> dict | None:
    """A Service as the API holds it once its ClusterIPs are allocated
    (None for one the lab left out: headless, ExternalName)."""
    if not cluster_ips:
        return None
    obj = _clean(declared)
    obj["metadata"].setdefault("namespace", "default")
    obj["spec"] = {**obj.get("spec", {}), "clusterIP": cluster_ips[0], "clusterIPs": list(cluster_ips)}
    return obj


def namespace(name: str, declared: Mapping | None) -> dict:
    meta = dict(declared["metadata"]) if declared else {"name": name}
    meta["labels"] = {**(meta.get("labels") or {}), NAMESPACE_NAME_LABEL: name}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(meta)}


def node(entry: dict, declared: Mapping | None) -> dict:
    labels = dict((declared or {}).get("metadata", {}).get("labels") or {}) \
        or {"kubernetes.io/hostname": entry["name"]}
    addresses = [{"type": "InternalIP", "address": str(ipaddress.ip_interface(a).ip)}
                 for a in entry["underlay"]]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": entry["name"], "labels": labels,
                         "annotations": {AGENT_ANNOTATION: f"unix:{entry['agent_socket']}"}},
            "spec": {"podCIDRs": list(entry["pod_cidrs"]), "podCIDR": entry["pod_cidrs"][0]},
            "status": {"addresses": addresses}}


def pod(entry: dict, declared: Mapping) -> dict:
    """The lab pod `entry` as the API holds it once scheduled."""
    template, _ = pods.template(declared, declared["kind"])
    meta = dict(template.get("metadata") or {})
    if declared["kind"] != "Pod":
        # The workload's own annotations (ip-families) apply to its pods too.
        meta["annotations"] = {**(declared["metadata"].get("annotations") or {}),
                               **(meta.get("annotations") or {})}
    meta.update(name=entry["name"], namespace=entry["namespace"], uid=entry["uid"])
    spec = copy.deepcopy(dict(template.get("spec") or {}))
    spec["nodeName"] = entry["node"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(meta), "spec": spec}


def pod_status(addresses: list[str]) -> dict:
    """The status patch a kubelet sends once the pod's sandbox has its addresses."""
    return {"status": {"phase": "Running", "podIP": addresses[0],
                       "podIPs": [{"ip": a} for a in addresses]}}


def _clean(obj: Mapping) -> dict:
    out = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
    out["apiVersion"] = API_VERSIONS[obj["kind"]]
    out["metadata"] = _meta(dict(obj.get("metadata") or {}))
    return out


def _meta(meta: dict) -> dict:
    """Metadata without what only the API server may set."""
    return {k: copy.deepcopy(v) for k, v in meta.items()
            if k not in ("resourceVersion", "creationTimestamp", "generation", "managedFields")
            and v not in (None, {})}
