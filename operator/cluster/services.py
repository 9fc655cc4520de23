"""Services as the policy semantics see them: an address and port that
stand for the ready pods behind them. Pure: no I/O.

Read by cluster.manifests (from files), the model (a connection to a
Service is judged on the backend it reaches: policy never sees the Service
address) and the lab (its ClusterIPs, its EndpointSlices as the endpoints
controller makes them, kube-proxy's rules).

A Service's backends are the ready pods of its namespace its selector
matches; a Service without a selector has the endpoints someone else
writes, in EndpointSlices labelled with its name (the `kubernetes` Service:
the API servers), read here as addresses, or pods where a pod holds one. A targetPort by name resolves per backend to that pod's
containerPort of the name and protocol; a backend without it is not an
endpoint of that port, as the endpoints controller leaves it out.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping

from tailor.operator.cluster import addresses
from tailor.operator.cluster.objects import Pod
from tailor.operator.cluster.ports import PROTOCOLS
from tailor.operator.errors import InvalidSpec

API_VERSION = "v1"
AFFINITIES = ("None", "ClientIP")
TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
AFFINITY_SECONDS = 10800                     # the API's default clientIP.timeoutSeconds
TRAFFIC_POLICIES = ("Cluster", "Local")
NODE_PORTS = range(30000, 32768)             # the API server's default --service-node-port-range


@dataclasses.dataclass(frozen=True)
class ServicePort:
    protocol: str
    port: int
    target: int | str                 # a number, or a containerPort's name
    name: str = ""
    node_port: int | None = None      # NodePort and LoadBalancer: the port on every node


@dataclasses.dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    selector: Mapping[str, str] | None      # None: endpoints not managed by selector
    ports: tuple[ServicePort, ...]
    cluster_ips: tuple[str, ...] = ()        # none yet: the lab allocates
    session_affinity: str = "None"
    type: str = "ClusterIP"
    external_traffic_policy: str = "Cluster"   # NodePort: Local keeps the client's address
    affinity_seconds: int = AFFINITY_SECONDS    # ClientIP: how long a client keeps its backend

    @property
    def node_ports(self) -> bool:
        return self.type in ("NodePort", "LoadBalancer")

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}[Service]"

    def cluster_ip(self, family: int) -> str | None:
        return next((a for a in self.cluster_ips if ipaddress.ip_address(a).version == family), None)


SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICE_API_VERSION = "discovery.k8s.io/v1"


@dataclasses.dataclass(frozen=True)
class EndpointSlice:
    """The part of a discovery.k8s.io/v1 EndpointSlice a Service without a
    selector takes its backends from: the ready addresses and the ports."""
    namespace: str
    name: str
    service: str
    addresses: tuple[str, ...]                 # of the ready endpoints
    ports: tuple[tuple[str, str, int], ...]    # (name, protocol, port)


def parse_slice(obj: Mapping, namespace: str, name: str) -> EndpointSlice:
    """Raises InvalidSpec naming the field."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL, "")
    kind = obj.get("addressType")
    if kind not in ("IPv4", "IPv6", "FQDN"):
        raise InvalidSpec("addressType", f"{kind!r}: use IPv4, IPv6 or FQDN")
    found = []
    for i, e in enumerate(obj.get("endpoints") or []):
        if not isinstance(e, Mapping):
            raise InvalidSpec(f"endpoints[{i}]", "must be an object")
        conditions = e.get("conditions") or {}
        if kind == "FQDN" or conditions.get("ready") is False or conditions.get("terminating"):
            continue                            # ready unless said otherwise, as kube-proxy reads it
        for address in e.get("addresses") or []:
            try:
                found.append(str(ipaddress.ip_address(address)))
            except ValueError:
                raise InvalidSpec(f"endpoints[{i}].addresses", f"{address!r} is not an IP address") from None
    ports = []
    for i, p in enumerate(obj.get("ports") or []):
        if not isinstance(p, Mapping) or not isinstance(p.get("port"), int) or not 1 <= p["port"] <= 65535:
            raise InvalidSpec(f"ports[{i}].port", "must be a port number (1-65535)")
        ports.append((str(p.get("name") or ""), p.get("protocol") or "TCP", p["port"]))
    return EndpointSlice(namespace, name, service, tuple(found), tuple(ports))


def untranslated(obj: Mapping) -> str | None:
    """Why a Service has no address to translate (ExternalName, headless),
    or None: such Services are ignored with a warning, as DNS answers them."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    if spec.get("type") == "ExternalName":
        return "an ExternalName Service is a DNS alias, with no address to translate"
    if spec.get("clusterIP") == "None" or "None" in (spec.get("clusterIPs") or []):
        return "a headless Service (clusterIP: None) has no address to translate"
    return None


def parse(obj: Mapping, namespace: str, name: str) -> Service:
    """A v1 Service of type ClusterIP (NodePort and LoadBalancer have one
    too); raises InvalidSpec naming the field."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    selector = spec.get("selector")
    if selector is not None and not (isinstance(selector, Mapping)
                                     and all(isinstance(v, str) for v in selector.values())):
        raise InvalidSpec("spec.selector", "must map label keys to values")
    ports = []
    for i, p in enumerate(spec.get("ports") or []):
        where = f"spec.ports[{i}]"
        if not isinstance(p, Mapping):
            raise InvalidSpec(where, "must be an object")
        protocol = p.get("protocol") or "TCP"
        if protocol not in PROTOCOLS:
            raise InvalidSpec(f"{where}.protocol", f"{protocol!r}: use one of {', '.join(PROTOCOLS)}")
        port = p.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise InvalidSpec(f"{where}.port", f"{port!r} is not a port number (1-65535)")
        target = p.get("targetPort", port)
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        if isinstance(target, bool) or not (isinstance(target, str) and target
                                            or isinstance(target, int) and 1 <= target <= 65535):
            raise InvalidSpec(f"{where}.targetPort", f"{target!r} is neither a port number nor a name")
        node_port = p.get("nodePort")
        if node_port is not None and (not isinstance(node_port, int) or isinstance(node_port, bool)
                                      or node_port not in NODE_PORTS):
            raise InvalidSpec(f"{where}.nodePort", f"{node_port!r} is outside {NODE_PORTS.start}-"
                              f"{NODE_PORTS.stop - 1}")
        ports.append(ServicePort(protocol, port, target, str(p.get("name") or ""), node_port))
    if not ports:
        raise InvalidSpec("spec.ports", "Required value: a Service needs at least one port")
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    cluster_ips = addresses.parse_ips(ips, "spec.clusterIPs")       # one per family, as pods' IPs
    affinity = spec.get("sessionAffinity") or "None"
    if affinity not in AFFINITIES:
        raise InvalidSpec("spec.sessionAffinity", f"{affinity!r}: use None or ClientIP")
    kind = spec.get("type") or "ClusterIP"
    if kind not in TYPES:
        raise InvalidSpec("spec.type", f"{kind!r}: use one of {', '.join(TYPES)} (ExternalName has no address)")
    policy = spec.get("externalTrafficPolicy") or "Cluster"
    if policy not in TRAFFIC_POLICIES:
        raise InvalidSpec("spec.externalTrafficPolicy", f"{policy!r}: use Cluster or Local")
    if kind == "ClusterIP" and any(p.node_port for p in ports):
        raise InvalidSpec("spec.ports.nodePort", "only a NodePort or LoadBalancer Service has node ports")
    config = spec.get("sessionAffinityConfig") or {}
    timeout = ((config.get("clientIP") or {}) if isinstance(config, Mapping) else {}).get(
        "timeoutSeconds", AFFINITY_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= 86400:
        raise InvalidSpec("spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                          f"{timeout!r} is not a number of seconds in 1-86400")
    return Service(namespace, name, dict(selector) if selector is not None else None, tuple(ports),
                   cluster_ips, affinity, kind, policy, timeout)


def target_port(pod: Pod, port: ServicePort) -> int | None:
    """The port `port` reaches on `pod`, or None when the pod has no
    containerPort of that name (it is then no endpoint of this port)."""
    if isinstance(port.target, int):
        return port.target
    return next((cp.port for cp in pod.ports if cp.name == port.target and cp.protocol == port.protocol),
                None)


def backends(service: Service, pods) -> list[Pod]:
    """The pods the selector chooses, in the Service's namespace, with an
    address and Ready (Pod.ready), as the endpoints controller lists them."""
    if not service.selector:            # none, or {}: endpoints someone else writes
        return []
    return sorted((p for p in pods if p.namespace == service.namespace and p.ips and p.ready
                   and all(p.labels.get(k) == v for k, v in service.selector.items())),
                  key=lambda p: p.ref)


def endpoints(service: Service, port: ServicePort, pods, slices=()) -> list[tuple[Pod | str, int]]:
    """(backend, its port) for one Service port: the pods its selector
    chooses, or, for a Service without one, the ready addresses of its
    EndpointSlices (`slices`) that list the port by name — a pod where one
    holds the address, else the address."""
    if service.selector is None:
        pods = list(pods)
        by_ip = {ip: p for p in pods for ip in p.ips}
        out = set()
        for s in slices:
            if s.namespace != service.namespace or s.service != service.name:
                continue
            for name, protocol, number in s.ports:
                if name == port.name and protocol == port.protocol:
                    out.update((a, number) for a in s.addresses)
        return sorted(((by_ip.get(a, a), n) for a, n in out), key=lambda e: (str(e[0]), e[1]))
    out = []
    for pod in backends(service, pods):
        target = target_port(pod, port)
        if target is not None:
            out.append((pod, target))
    return out


def address_of(backend: Pod | str, family: int) -> str | None:
    """A backend's address of `family` (a pod's, or the address itself)."""
    if isinstance(backend, str):
        return backend if ipaddress.ip_address(backend).version == family else None
    return backend.ip(family)
