"""The cluster's objects as tailor sees them: namespaces, pods and nodes.

Built by cluster.pods and cluster.manifests (from manifests) or by the kopf
handlers (from watch events); read by the policy evaluator and the compiler.
Purely data, no I/O.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping

from tailor.operator.cluster.ports import ContainerPort

# Kubernetes sets this label on every namespace to the namespace's name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

# Kinds whose pod template becomes one representative pod, named after the workload.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet",
                  "ReplicationController", "Job", "CronJob")


@dataclasses.dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class Node:
    """A node: labels for ANP `nodes` peers, addresses for matching them by IP
    (and for letting a node into its own pods), pod CIDRs for routing to its
    pods (spec.podCIDRs, as kube-controller-manager allocates them)."""
    name: str
    labels: Mapping[str, str]
    ips: tuple[str, ...] = ()
    pod_cidrs: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Pod:
    """A pod, or the one representative pod of a workload (`kind` is then the
    workload's kind and `name` the workload's name).

    `ips` are the pod's addresses, the primary family first (at most one per
    family); a pod is IPv6-capable only if one of them is IPv6. `ports` are the containers'
    declared ports, against which named ports resolve."""
    namespace: str
    name: str
    labels: Mapping[str, str]
    node: str | None
    ips: tuple[str, ...]
    ports: tuple[ContainerPort, ...] = ()
    kind: str = "Pod"
    # An endpoint of the Services that select it (its Ready condition, as
    # the endpoints controller reads it): policy does not care.
    ready: bool = True

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.name, self.kind)

    @property
    def ref(self) -> str:
        """The contract's printed form: `ns/name[Kind]`."""
        return f"{self.namespace}/{self.name}[{self.kind}]"

    def __str__(self) -> str:
        return self.ref

    def ip(self, family: int) -> str | None:
        """The pod's address of IP version `family` (4 or 6), or None."""
        for ip in self.ips:
            if ipaddress.ip_address(ip).version == family:
                return ip
        return None

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(sorted({ipaddress.ip_address(ip).version for ip in self.ips}))

    @property
    def has_ipv6(self) -> bool:
        return 6 in self.families
