"""ClusterState: everything the policy semantics read, with its indexes.

Filled by cluster.manifests (from files; also the policy case runner, step by
step) and later by the kopf handlers (from watch events); read by the policy
evaluator and the compiler. Purely data-manipulative, no I/O.

Keys: namespaces and nodes by name, pods by (namespace, name, kind),
NetworkPolicies and Services by (namespace, name), AdminNetworkPolicies and
ClusterNetworkPolicies by name (each kind its own dict: an ANP and a CNP may
share a name); there is at most one BaselineAdminNetworkPolicy. The
cluster-wide policies are read in their tiers: `admin_tier()` (ANPs and
Admin CNPs) before NetworkPolicy, `baseline_tier()` (Baseline CNPs, then the
BANP) after it. Namespaces that pods or policies refer to
but that were never declared exist implicitly with the default label
`kubernetes.io/metadata.name: <name>` (which every namespace carries).
"""
from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator

from tailor.operator.cluster import addresses
from tailor.operator.cluster import adminpolicy
from tailor.operator.cluster.adminpolicy import AdminPolicy
from tailor.operator.cluster.networkpolicy import NetworkPolicy
from tailor.operator.cluster.objects import NAMESPACE_NAME_LABEL, Namespace, Node, Pod
from tailor.operator.cluster.services import EndpointSlice, Service

PodKey = tuple[str, str, str]


class ClusterState:
    def __init__(self) -> None:
        self.namespaces: dict[str, Namespace] = {}
        self.nodes: dict[str, Node] = {}
        self.pods: dict[PodKey, Pod] = {}
        self.network_policies: dict[tuple[str, str], NetworkPolicy] = {}
        self.admin_policies: dict[str, AdminPolicy] = {}       # AdminNetworkPolicies
        self.baseline: AdminPolicy | None = None               # the BaselineAdminNetworkPolicy
        self.cluster_policies: dict[str, AdminPolicy] = {}     # ClusterNetworkPolicies, both tiers
        self.services: dict[tuple[str, str], Service] = {}     # by (namespace, name)
        self.endpoint_slices: dict[tuple[str, str], EndpointSlice] = {}   # for selector-less Services
        self._service_use = None
        self.warnings: list[str] = []
        self._pods_by_namespace: dict[str, dict[PodKey, Pod]] = {}
        self._pods_by_ip: dict[str, Pod] = {}
        self._policies_by_namespace: dict[str, dict[str, NetworkPolicy]] = {}

    # ---- changes

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> Namespace:
        """Create or replace a namespace; the name label is always set."""
        ns = Namespace(name, {**(labels or {}), NAMESPACE_NAME_LABEL: name})
        self.namespaces[name] = ns
        return ns

    def ensure_namespace(self, name: str) -> Namespace:
        return self.namespaces.get(name) or self.add_namespace(name)

    def add_service(self, service: Service) -> None:
        self.ensure_namespace(service.namespace)
        self.services[(service.namespace, service.name)] = service
        self._service_use = None

    def service_use(self) -> tuple[frozenset[int], frozenset[str], bool]:
        """What the Services need of every pod's programs: the families of
        their addresses, their protocols, whether any has ClientIP affinity."""
        if self._service_use is None:
            fams, protos, affinity = set(), set(), False
            for svc in self.services.values():
                if not svc.cluster_ips:
                    continue
                fams.update(ipaddress.ip_address(a).version for a in svc.cluster_ips)
                protos.update(p.protocol for p in svc.ports)
                affinity = affinity or svc.session_affinity == "ClientIP"
            self._service_use = (frozenset(fams), frozenset(protos), affinity)
        return self._service_use

    def add_endpoint_slice(self, endpoint_slice: EndpointSlice) -> None:
        self.endpoint_slices[(endpoint_slice.namespace, endpoint_slice.name)] = endpoint_slice

    def endpoints(self, service: Service, port) -> list:
        """services.endpoints over this state's pods and EndpointSlices."""
        from tailor.operator.cluster import services as services_

        return services_.endpoints(service, port, self.pods_in(service.namespace),
                                   self.endpoint_slices.values())

    def sorted_services(self) -> list[Service]:
        return [self.services[k] for k in sorted(self.services)]

    def add_node(self, node: Node) -> None:
        self.nodes[node.name] = node

    def add_pod(self, pod: Pod, families: tuple[int, ...] = addresses.DEFAULT_FAMILIES, *,
                allocate: bool = True) -> Pod:
        """Create or replace a pod. Without addresses it keeps the ones it had
        (a relabel keeps its IPs) or gets new ones from the default pools.
        With `allocate=False` (the operator: addresses come from the CNI's
        IPAM or the pod's status, never from tailor's pools) it keeps the ones
        it had, whatever their families, or stays without addresses."""
        old = self.pods.get(pod.key)
        if old is not None:
            self._unindex(old)
        if not pod.ips:
            if not allocate:
                ips = old.ips if old is not None else ()
            elif old is not None and old.families == tuple(sorted(families)):
                ips = old.ips
            else:
                ips = addresses.allocate(families, self._pods_by_ip)
            pod = dataclasses.replace(pod, ips=ips)
        for ip in pod.ips:
            other = self._pods_by_ip.get(ip)
            if other is not None and other.key != pod.key:
                self.warnings.append(f"{pod.ref} and {other.ref} share the address {ip}; "
                                     f"{ip} is taken to mean {pod.ref}")
        self.ensure_namespace(pod.namespace)
        self.pods[pod.key] = pod
        self._pods_by_namespace.setdefault(pod.namespace, {})[pod.key] = pod
        for ip in pod.ips:
            self._pods_by_ip[ip] = pod
        return pod

    def add_network_policy(self, policy: NetworkPolicy) -> None:
        self.ensure_namespace(policy.namespace)
        self.network_policies[(policy.namespace, policy.name)] = policy
        self._policies_by_namespace.setdefault(policy.namespace, {})[policy.name] = policy

    def add_admin_policy(self, policy: AdminPolicy) -> None:
        """Create or replace a cluster-wide policy (ANP, BANP or CNP)."""
        if policy.kind == adminpolicy.CNP:
            self.cluster_policies[policy.name] = policy
        elif policy.priority is None:
            self.baseline = policy
        else:
            self.admin_policies[policy.name] = policy

    def delete(self, kind: str, namespace: str | None, name: str) -> bool:
        """Remove an object; False if there was none. Deleting a namespace
        removes its pods and NetworkPolicies too."""
        if kind == "Namespace":
            if name not in self.namespaces:
                return False
            for pod in list(self._pods_by_namespace.get(name, {}).values()):
                self.delete(pod.kind, name, pod.name)
            for policy_name in list(self._policies_by_namespace.get(name, {})):
                self.delete("NetworkPolicy", name, policy_name)
            del self.namespaces[name]
            return True
        if kind == "Node":
            return self.nodes.pop(name, None) is not None
        if kind == "Service":
            self._service_use = None
            return self.services.pop((namespace, name), None) is not None
        if kind == "EndpointSlice":
            return self.endpoint_slices.pop((namespace, name), None) is not None
        if kind == "NetworkPolicy":
            policy = self.network_policies.pop((namespace, name), None)
            if policy is not None:
                del self._policies_by_namespace[namespace][name]
            return policy is not None
        if kind == adminpolicy.ANP:
            return self.admin_policies.pop(name, None) is not None
        if kind == adminpolicy.CNP:
            return self.cluster_policies.pop(name, None) is not None
        if kind == "BaselineAdminNetworkPolicy":
            found = self.baseline is not None and self.baseline.name == name
            if found:
                self.baseline = None
            return found
        pod = self.pods.pop((namespace, name, kind), None)
        if pod is not None:
            self._unindex(pod)
        return pod is not None

    def _unindex(self, pod: Pod) -> None:
        self._pods_by_namespace.get(pod.namespace, {}).pop(pod.key, None)
        for ip in pod.ips:
            if self._pods_by_ip.get(ip) is pod:
                del self._pods_by_ip[ip]

    # ---- lookups

    def pod(self, namespace: str, name: str, kind: str = "Pod") -> Pod:
        return self.pods[(namespace, name, kind)]

    def find_pod(self, ref: str) -> Pod:
        """A pod by `ns/name` or `ns/name[Kind]` (`ns/name` prefers a Pod, then
        the only object of that name)."""
        body, _, kind = ref.partition("[")
        namespace, _, name = body.partition("/")
        if kind:
            return self.pod(namespace, name, kind.rstrip("]"))
        if (namespace, name, "Pod") in self.pods:
            return self.pods[(namespace, name, "Pod")]
        found = [p for p in self.pods_in(namespace) if p.name == name]
        if len(found) != 1:
            raise KeyError(ref)
        return found[0]

    def pod_by_ip(self, ip: str) -> Pod | None:
        return self._pods_by_ip.get(ip)

    def pods_in(self, namespace: str) -> Iterator[Pod]:
        return iter(self._pods_by_namespace.get(namespace, {}).values())

    def sorted_pods(self) -> list[Pod]:
        return [self.pods[k] for k in sorted(self.pods)]

    def namespace_labels(self, name: str) -> dict[str, str]:
        ns = self.namespaces.get(name)
        return dict(ns.labels) if ns else {NAMESPACE_NAME_LABEL: name}

    def network_policies_in(self, namespace: str) -> list[NetworkPolicy]:
        """The namespace's NetworkPolicies, by name."""
        policies = self._policies_by_namespace.get(namespace, {})
        return [policies[n] for n in sorted(policies)]

    def admin_policies_in_order(self) -> list[AdminPolicy]:
        """The Admin tier in evaluation order: ANPs and Admin-tier CNPs, lower
        priority number first. Equal priorities are undefined in the API;
        tailor orders them by kind (v1alpha1 first), then name, so the order
        is stable."""
        tier = list(self.admin_policies.values()) + [
            p for p in self.cluster_policies.values() if p.tier == adminpolicy.ADMIN_TIER]
        return sorted(tier, key=lambda p: (p.priority, p.kind, p.name))

    def baseline_policies_in_order(self) -> list[AdminPolicy]:
        """The Baseline tier in evaluation order: Baseline-tier CNPs by
        priority (then name), then the BANP, which has no priority and is the
        older API's last word."""
        tier = sorted((p for p in self.cluster_policies.values() if p.tier == adminpolicy.BASELINE_TIER),
                      key=lambda p: (p.priority, p.name))
        return tier + ([self.baseline] if self.baseline is not None else [])

    def cluster_wide_policies(self) -> list[AdminPolicy]:
        """Every ANP, CNP and the BANP, in tier order."""
        return self.admin_policies_in_order() + self.baseline_policies_in_order()
