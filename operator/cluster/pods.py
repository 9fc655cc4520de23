"""Pods from Pod and workload manifests.

Called by cluster.manifests. A workload (Deployment, StatefulSet, DaemonSet,
ReplicaSet, ReplicationController, Job, CronJob) becomes one representative pod
built from its pod template, named after the workload and carrying its kind, so
it prints as `prod/web[Deployment]`. Purely data-manipulative, no I/O.

Named ports come from `spec.containers[].ports[]` (regular containers only,
as NetworkPolicy named-port resolution does).
"""
from __future__ import annotations

from collections.abc import Mapping

from tailor.operator import selectors
from tailor.operator.cluster import addresses
from tailor.operator.cluster import ports as ports_
from tailor.operator.cluster.objects import WORKLOAD_KINDS, Pod
from tailor.operator.errors import InvalidSpec


def from_manifest(obj: Mapping, namespace: str, name: str) -> tuple[Pod, tuple[int, ...]]:
    """The pod (with `ips` empty when the manifest gives none) and the IP
    families it asks for."""
    kind = obj.get("kind")
    pod_template, path = template(obj, kind)
    meta = pod_template.get("metadata") or {}
    labels = selectors.parse_labels(meta.get("labels"), f"{path}metadata.labels")
    annotations = dict((obj.get("metadata") or {}).get("annotations") or {})
    annotations.update(meta.get("annotations") or {})
    families = addresses.parse_families(
        annotations.get(addresses.FAMILIES_ANNOTATION),
        f"{path}metadata.annotations[{addresses.FAMILIES_ANNOTATION}]")
    spec = pod_template.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidSpec(f"{path}spec", "Required value")
    ips: tuple[str, ...] = ()
    ready = True
    if kind == "Pod":
        status = obj.get("status") or {}
        ready = _ready(obj)
        if status.get("podIPs"):
            ips = addresses.parse_ips([e.get("ip") if isinstance(e, Mapping) else e
                                       for e in status["podIPs"]], "status.podIPs")
        elif status.get("podIP"):
            ips = addresses.parse_ips([status["podIP"]], "status.podIP")
    pod = Pod(namespace, name, labels, spec.get("nodeName"), ips,
              _container_ports(spec, f"{path}spec"), kind, ready)
    return pod, families


def _ready(obj: Mapping) -> bool:
    """Whether a Service may send to the pod: not terminating, and Ready
    unless its status says otherwise (a manifest without conditions is)."""
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (obj.get("status") or {}).get("conditions") or []
    found = [c for c in conditions if isinstance(c, Mapping) and c.get("type") == "Ready"]
    return not found or found[-1].get("status") == "True"


def template(obj: Mapping, kind: str) -> tuple[Mapping, str]:
    """The pod template and its field path prefix."""
    if kind == "Pod":
        return obj, ""
    assert kind in WORKLOAD_KINDS, kind
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec", "Required value")
    path = "spec."
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec")
        path = "spec.jobTemplate.spec."
        if not isinstance(spec, Mapping):
            raise InvalidSpec("spec.jobTemplate.spec", "Required value")
    template = spec.get("template")
    if not isinstance(template, Mapping):
        raise InvalidSpec(f"{path}template", "Required value")
    return template, f"{path}template."


def _container_ports(spec: Mapping, path: str) -> tuple[ports_.ContainerPort, ...]:
    found = []
    for i, container in enumerate(spec.get("containers") or []):
        for j, port in enumerate((container or {}).get("ports") or []):
            where = f"{path}.containers[{i}].ports[{j}]"
            if not isinstance(port, Mapping):
                raise InvalidSpec(where, "must be a container port object")
            if port.get("containerPort") is None:
                # Decoded as the API's Go types decode it (0): a port that
                # names no number serves nothing, and no named port resolves
                # to it.
                continue
            number = ports_.parse_port_number(port["containerPort"], f"{where}.containerPort")
            protocol = ports_.parse_protocol(port.get("protocol"), f"{where}.protocol")
            name = port.get("name")
            if name is not None:
                ports_.parse_port_name(name, f"{where}.name")
            found.append(ports_.ContainerPort(name, number, protocol))
    return tuple(found)
