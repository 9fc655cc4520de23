"""Read Kubernetes manifests from files and folders into a ClusterState.

Called by the CLI (`tailor connectivity -f`, `tailor programs -f`), the lab and
the policy case runner. This is the only module of tailor.operator.cluster that
touches files.

Files: *.yaml, *.yml and *.json, folders recursively (sorted, so the result is
deterministic), YAML files with several documents. Kinds read: Namespace,
Node, Pod, workloads (see cluster.pods), NetworkPolicy,
AdminNetworkPolicy, BaselineAdminNetworkPolicy, ClusterNetworkPolicy, and
`List` (or any `*List` with `items`), which flattens. Other kinds are ignored
with a note in `state.warnings`. An invalid object raises `ManifestError`
naming the file, the object and the field.

Objects are read as the API server and its clients read them, so that what
`kubectl get ... -o json|yaml` prints is input as it is: a typed list's
items (`PodList`, `NamespaceList`: the API server leaves their kind and
apiVersion out) take their kind from the list's kind and their apiVersion
from the list's; fields the API only sets (status, managedFields,
resourceVersion, ...) are ignored; a workload whose own pods (or
ReplicaSets, Jobs) are in the input, by their ownerReferences, is
represented by them instead of by a pod made from its template.
"""
from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable, Iterator, Mapping

import yaml

from tailor.operator import selectors
from tailor.operator.cluster import adminpolicy, networkpolicy, pods, services
from tailor.operator.cluster.objects import WORKLOAD_KINDS, Node
from tailor.operator.cluster.state import ClusterState
from tailor.operator.errors import InvalidSpec, ManifestError

SUFFIXES = (".yaml", ".yml", ".json")
CLUSTER_SCOPED = ("Namespace", "Node", *adminpolicy.KINDS)
_API_VERSIONS = {"NetworkPolicy": networkpolicy.API_VERSION, "Service": services.API_VERSION,
                 "EndpointSlice": services.SLICE_API_VERSION,
                 **adminpolicy.API_VERSIONS}


def load(paths: Iterable[str]) -> ClusterState:
    """A ClusterState from the manifests under `paths` (files or folders)."""
    state = ClusterState()
    apply(state, [doc for path in paths for doc in read(path)])
    return state


def objects(paths: Iterable[str]) -> list[tuple[str, Mapping]]:
    """(file, object) pairs from the manifests under `paths`, `List`s flattened."""
    return list(_flatten(doc for path in paths for doc in read(path)))


def read(path: str) -> list[tuple[str, object]]:
    """(file, document) pairs from a file or, recursively, a folder."""
    if os.path.isdir(path):
        found = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(SUFFIXES):
                    found.extend(read(os.path.join(root, name)))
        return found
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ManifestError(path, None, None, f"cannot read: {exc.strerror}") from None
    try:
        if path.endswith(".json"):
            docs = [json.loads(text)]
        else:
            docs = list(yaml.safe_load_all(text))
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ManifestError(path, None, None, f"not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                                              f"{exc}") from None
    return [(path, doc) for doc in docs if doc is not None]


def apply(state: ClusterState, docs: Iterable[tuple[str, object]]) -> None:
    """Create or replace each object in `state`. Pods that state their
    addresses go first, so pods without get addresses none of them holds.
    Workloads whose own objects are in the input are left to them."""
    objects = _without_represented(list(_flatten(docs)))
    stated = [(f, o) for f, o in objects if _states_addresses(o)]
    rest = [(f, o) for f, o in objects if not _states_addresses(o)]
    for file, obj in stated + rest:
        apply_object(state, obj, file)


def _states_addresses(obj: Mapping) -> bool:
    status = obj.get("status")
    return obj.get("kind") == "Pod" and isinstance(status, Mapping) and bool(
        status.get("podIP") or status.get("podIPs"))


def apply_object(state: ClusterState, obj: Mapping, file: str = "<object>") -> None:
    """Create or replace one object (already flattened) in `state`."""
    kind = obj.get("kind")
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name = meta.get("name")
    namespace = None if kind in CLUSTER_SCOPED else (meta.get("namespace") or "default")
    what = describe(kind, namespace, name)
    try:
        if not name or not isinstance(name, str):
            raise InvalidSpec("metadata.name", "Required value")
        want = _API_VERSIONS.get(kind)
        if want and obj.get("apiVersion") not in (None, want):
            raise InvalidSpec("apiVersion", f"{obj.get('apiVersion')!r} is not supported for {kind}; "
                                            f"use {want}")
        if kind == "Namespace":
            state.add_namespace(name, selectors.parse_labels(meta.get("labels"), "metadata.labels"))
        elif kind == "Node":
            state.add_node(node_from(obj, name))
        elif kind == "Pod" or kind in WORKLOAD_KINDS:
            pod, families = pods.from_manifest(obj, namespace, name)
            state.add_pod(pod, families)
        elif kind == "NetworkPolicy":
            state.add_network_policy(networkpolicy.parse(obj, namespace, name))
        elif kind == "Service" and services.untranslated(obj):
            state.warnings.append(f"{file}: ignored {what}: {services.untranslated(obj)}")
        elif kind == "Service":
            state.add_service(services.parse(obj, namespace, name))
        elif kind == "EndpointSlice":
            state.add_endpoint_slice(services.parse_slice(obj, namespace, name))
        elif kind in adminpolicy.PARSERS:
            state.add_admin_policy(adminpolicy.PARSERS[kind](obj, name))
        else:
            state.warnings.append(f"{file}: ignored {what}: kind not used by tailor")
    except InvalidSpec as exc:
        raise ManifestError(file, what, exc.path, exc.message) from None


def describe(kind, namespace: str | None, name) -> str:
    """`Kind ns/name`, or `Kind name` for cluster-scoped kinds."""
    where = f"{namespace}/{name}" if namespace else f"{name}"
    return f"{kind or '<no kind>'} {where}"


def _flatten(docs: Iterable[tuple[str, object]]) -> Iterator[tuple[str, Mapping]]:
    for file, doc in docs:
        if not isinstance(doc, Mapping):
            raise ManifestError(file, None, None, f"a manifest must be an object, got {type(doc).__name__}")
        kind = doc.get("kind")
        if not kind:
            name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), Mapping) else None
            raise ManifestError(file, f"object {name}" if name else None, "kind", "Required value")
        if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
            items = doc.get("items") or []
            if not isinstance(items, list):
                raise ManifestError(file, kind, "items", "must be a list of objects")
            yield from _flatten((file, _typed_item(kind, doc.get("apiVersion"), item)) for item in items)
        else:
            yield file, doc


def _typed_item(list_kind: str, api_version, item):
    """An item of a typed list (`PodList`) as its client decodes it: the API
    server sends items without kind and apiVersion, the list's kind less
    `List` and the list's apiVersion are theirs. A plain `List` gives its
    items nothing: they name their own kind."""
    if (not isinstance(item, Mapping) or list_kind == "List" or item.get("kind")
            or item.get("apiVersion")):
        return item
    return {**item, "kind": list_kind[:-len("List")], "apiVersion": api_version}


# The kinds that make pods, and the kinds that make the objects they own.
_OWNER_KINDS = frozenset(WORKLOAD_KINDS)


def _without_represented(objects: list[tuple[str, Mapping]]) -> list[tuple[str, Mapping]]:
    """Drop the workloads that something in the input says it belongs to
    (ownerReferences): a Deployment whose ReplicaSet is there, a ReplicaSet
    whose pods are there. Their pods stand for them, as in a cluster; a
    workload nothing owns by stays as its representative pod — unless it is
    itself owned and scaled to zero (a Deployment's old ReplicaSets: they
    run no pod)."""
    owned: set[tuple[str | None, str, str]] = set()
    uids: set[str] = set()
    for _, obj in objects:
        meta = obj.get("metadata")
        if not isinstance(meta, Mapping):
            continue
        for ref in meta.get("ownerReferences") or []:
            if isinstance(ref, Mapping) and ref.get("kind") in _OWNER_KINDS:
                owned.add((meta.get("namespace") or "default", ref["kind"], ref.get("name")))
                if ref.get("uid"):
                    uids.add(ref["uid"])
    if not owned:
        return objects
    keep = []
    for file, obj in objects:
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
        kind = obj.get("kind")
        if kind in _OWNER_KINDS and ((meta.get("uid") and meta["uid"] in uids) or
                                     (meta.get("namespace") or "default", kind, meta.get("name")) in owned):
            continue
        spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
        if kind in _OWNER_KINDS and meta.get("ownerReferences") and spec.get("replicas") == 0:
            continue
        keep.append((file, obj))
    return keep


def node_from(obj: Mapping, name: str) -> Node:
    """A Node object as the API holds it: InternalIP and ExternalIP addresses,
    spec.podCIDRs (else the older single spec.podCIDR). Raises InvalidSpec
    for a pod CIDR that is not one."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    labels = selectors.parse_labels(meta.get("labels"), "metadata.labels")
    ips = tuple(a.get("address") for a in (obj.get("status") or {}).get("addresses") or []
                if isinstance(a, Mapping) and a.get("type") in ("InternalIP", "ExternalIP") and a.get("address"))
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    parsed = []
    for i, cidr in enumerate(cidrs):
        try:
            parsed.append(str(ipaddress.ip_network(cidr)))
        except (TypeError, ValueError):
            raise InvalidSpec(f"spec.podCIDRs[{i}]", f"{cidr!r} is not a CIDR") from None
    return Node(name, labels, ips, tuple(parsed))
