"""Read Kubernetes manifests from files and folders into a ClusterState.

Called by the CLI (`tailor connectivity -f`, `tailor programs -f`), the lab and
the policy case runner. This is the only module of tailor.operator.cluster that
touches files.

Files: *.yaml, *.yml and *.json, folders recursively (sorted, so the result is
deterministic), YAML files with several documents. Kinds read: Namespace,
Node, Pod, workloads (see cluster.pods), NetworkPolicy,
AdminNetworkPolicy, BaselineAdminNetworkPolicy, and `List` (or any `*List`
with `items`), which flattens. Other kinds are ignored with a note in
`state.warnings`. An invalid object raises `ManifestError` naming the file, the
object and the field.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping

import yaml

from tailor.operator import selectors
from tailor.operator.cluster import adminpolicy, networkpolicy, pods
from tailor.operator.cluster.objects import WORKLOAD_KINDS, Node
from tailor.operator.cluster.state import ClusterState
from tailor.operator.errors import InvalidSpec, ManifestError

SUFFIXES = (".yaml", ".yml", ".json")
CLUSTER_SCOPED = ("Namespace", "Node", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy")
_API_VERSIONS = {
    "NetworkPolicy": networkpolicy.API_VERSION,
    "AdminNetworkPolicy": adminpolicy.API_VERSION,
    "BaselineAdminNetworkPolicy": adminpolicy.API_VERSION,
}


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
    addresses go first, so pods without get addresses none of them holds."""
    objects = list(_flatten(docs))
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
            state.add_node(_node(obj, name, meta))
        elif kind == "Pod" or kind in WORKLOAD_KINDS:
            pod, families = pods.from_manifest(obj, namespace, name)
            state.add_pod(pod, families)
        elif kind == "NetworkPolicy":
            state.add_network_policy(networkpolicy.parse(obj, namespace, name))
        elif kind == "AdminNetworkPolicy":
            state.add_admin_policy(adminpolicy.parse_anp(obj, name))
        elif kind == "BaselineAdminNetworkPolicy":
            state.add_admin_policy(adminpolicy.parse_banp(obj, name))
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
            yield from _flatten((file, item) for item in items)
        else:
            yield file, doc


def _node(obj: Mapping, name: str, meta: Mapping) -> Node:
    labels = selectors.parse_labels(meta.get("labels"), "metadata.labels")
    ips = tuple(a.get("address") for a in (obj.get("status") or {}).get("addresses") or []
                if isinstance(a, Mapping) and a.get("type") in ("InternalIP", "ExternalIP") and a.get("address"))
    return Node(name, labels, ips)
