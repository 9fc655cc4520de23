"""What a lab is made of, before anything is made: node names, underlay
addresses, pod CIDRs, pod placement and namespace names.

Called by lab.up (the plan is then written to the state file, which every
later step reads) and by tests. Pure: no I/O.

Naming: every network namespace starts with the lab's name, so two labs
never collide:

    <lab>.switch                  the underlay (switched): bridge br0, one port per node
    <lab>.router                  the underlay (routed): a router, one subnet per node
    <lab>.outside                 a host outside the cluster (no route to any pod)
    <lab>.<node>                  a node (its underlay interface is eth0)
    <lab>.p.<namespace>.<pod>     a pod (`.<kind>` appended for a workload's pod)

Interface names stay short whatever the names (IFNAMSIZ is 16 with the NUL):
the switch's ports are `n<i>`, the node side is `eth0`, the pods' host sides
are the CNI's `tl` + 11 hex digits.
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import uuid

from tailor.operator.cluster import services as services_
from tailor.operator.cluster.state import ClusterState

UNDERLAY_V4 = ipaddress.ip_network("192.168.77.0/24")
UNDERLAY_V6 = ipaddress.ip_network("fd00:77::/64")
# Routed: node i on 172.31.i.0/24 (fd00:77:i::/64), the router at .1, the node at .2.
ROUTED_V4 = "172.31.{i}.{h}/24"
ROUTED_V6 = "fd00:77:{i:x}::{h}/64"
# The outside host: on the switch (switched), or behind the router on a
# network of its own (routed). Never a route to the pods: replies reach
# pods only through their node's masquerade.
OUTSIDE_SWITCHED = ("192.168.77.254/24", "fd00:77::fe/64")
OUTSIDE_ROUTED = ("203.0.113.2/24", "fd00:203::2/64")
OUTSIDE_ROUTER = ("203.0.113.1/24", "fd00:203::1/64")
UNDERLAYS = ("switched", "routed")
# ClusterIPs the lab allocates to Services whose manifests give none.
SERVICE_V4 = ipaddress.ip_network("10.96.0.0/16")
SERVICE_V6 = ipaddress.ip_network("fd00:96::/112")
FIRST_SERVICE_HOST = 10
POD_V4 = "10.244.{i}.0/24"
POD_V6 = "fd00:10:244:{i}::/64"
BRIDGE = "br0"
NODE_IFNAME = "eth0"
POD_IFNAME = "eth0"
DEFAULT_NODES = 2
MAX_NODES = 200
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$")
NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")


class PlanError(ValueError):
    """The manifests and options cannot make a lab; the message says why and what to change."""


@dataclasses.dataclass(frozen=True)
class NodePlan:
    name: str
    index: int                       # 1-based; the node's pod CIDRs and underlay host part
    netns: str
    switch_port: str                 # the node's veth end in the switch namespace
    underlay: tuple[str, ...]        # interface addresses with prefix: IPv4, then IPv6
    pod_cidrs: tuple[str, ...]
    gateways: tuple[str, ...] = ()   # routed: the router's addresses on the node's subnet

    @property
    def underlay_ips(self) -> tuple[str, ...]:
        return tuple(str(ipaddress.ip_interface(a).ip) for a in self.underlay)


@dataclasses.dataclass(frozen=True)
class PodPlan:
    namespace: str
    name: str
    kind: str
    ref: str                         # ns/name[Kind], as the model prints it
    node: str
    netns: str
    uid: str
    container_id: str
    families: tuple[int, ...]        # the families the pod asks for, primary first


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    switch_netns: str
    nodes: tuple[NodePlan, ...]
    pods: tuple[PodPlan, ...]
    ipv6: bool
    underlay: str = "switched"

    def node(self, name: str) -> NodePlan:
        return next(n for n in self.nodes if n.name == name)


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise PlanError(f"lab name {name!r}: use 1-16 lowercase letters, digits and '-' "
                        "(it prefixes every namespace the lab makes)")


def make(state: ClusterState, name: str, nodes: int | None = None,
         underlay: str = "switched") -> Plan:
    """The plan for the pods of `state` on `nodes` nodes (default: 2, or as
    many as the manifests name). `underlay`: "switched" (one L2 segment, as
    kind's nodes share) or "routed" (a subnet per node behind a router)."""
    check_name(name)
    if underlay not in UNDERLAYS:
        raise PlanError(f"underlay {underlay!r}: use one of {', '.join(UNDERLAYS)}")
    pods = state.sorted_pods()
    if not pods:
        raise PlanError("the manifests declare no pods: a lab needs at least one Pod or workload")
    named = sorted({p.node for p in pods if p.node} | set(state.nodes))
    for n in named:
        if not NODE_NAME.match(n):
            raise PlanError(f"node name {n!r} is not a DNS-1123 subdomain")
    count = nodes if nodes is not None else max(DEFAULT_NODES, len(named))
    if count < 1 or count > MAX_NODES:
        raise PlanError(f"--nodes {count}: a lab has 1 to {MAX_NODES} nodes")
    if len(named) > count:
        raise PlanError(f"the manifests name {len(named)} nodes ({', '.join(named)}) but the lab has "
                        f"{count}: pass --nodes {len(named)} or more")
    names = list(named)
    i = 1
    while len(names) < count:
        candidate = f"node{i}"
        if candidate not in names:
            names.append(candidate)
        i += 1
    ipv6 = any(6 in p.families for p in pods)
    if underlay == "routed" and count > 254:
        raise PlanError(f"--nodes {count}: a routed lab has at most 254 nodes (a /24 each)")
    node_plans = tuple(_node(name, i, n, ipv6, underlay) for i, n in enumerate(names, 1))
    placed, turn = [], 0
    for pod in pods:
        # spec.nodeName pins a pod; the rest go round-robin.
        if pod.node:
            node = pod.node
        else:
            node = names[turn % count]
            turn += 1
        placed.append(_pod(name, pod, node))
    return Plan(name, f"{name}.{'switch' if underlay == 'switched' else 'router'}", node_plans,
                tuple(placed), ipv6, underlay)


def _node(lab: str, index: int, name: str, ipv6: bool, underlay: str = "switched") -> NodePlan:
    cidrs = [POD_V4.format(i=index)]
    if underlay == "routed":
        addresses = [ROUTED_V4.format(i=index, h=2)]
        gateways = [ROUTED_V4.format(i=index, h=1)]
        if ipv6:
            addresses.append(ROUTED_V6.format(i=index, h=2))
            gateways.append(ROUTED_V6.format(i=index, h=1))
    else:
        addresses = [f"{UNDERLAY_V4.network_address + index}/{UNDERLAY_V4.prefixlen}"]
        gateways = []
        if ipv6:
            addresses.append(f"{UNDERLAY_V6.network_address + index}/{UNDERLAY_V6.prefixlen}")
    if ipv6:
        cidrs.append(POD_V6.format(i=f"{index:x}"))
    return NodePlan(name, index, f"{lab}.{name}", f"n{index}", tuple(addresses), tuple(cidrs),
                    tuple(gateways))


def services(state: ClusterState) -> list[dict]:
    """The manifests' Services with their ClusterIPs: as written, else
    allocated in order (IPv4, as a single-stack cluster's primary family);
    and, for NodePort and LoadBalancer Services, each port's node port
    (as written, else allocated from 30000 up; None for a ClusterIP one)."""
    taken = {a for svc in state.services.values() for a in svc.cluster_ips}
    free = (str(SERVICE_V4.network_address + i) for i in range(FIRST_SERVICE_HOST, SERVICE_V4.num_addresses))
    used = {p.node_port for svc in state.services.values() for p in svc.ports if p.node_port}
    node_ports = (n for n in services_.NODE_PORTS if n not in used)
    out = []
    for svc in state.sorted_services():
        ips = list(svc.cluster_ips)
        if not ips:
            ips = [next(a for a in free if a not in taken)]
        out.append({"namespace": svc.namespace, "name": svc.name, "ref": svc.ref, "cluster_ips": ips,
                    "node_ports": [(p.node_port or next(node_ports)) if svc.node_ports else None
                                   for p in svc.ports]})
    return out


def outside(plan: Plan) -> dict:
    """The outside host: its namespace, addresses (one per family the lab
    uses) and, routed, the router's addresses towards it."""
    families = 2 if plan.ipv6 else 1
    if plan.underlay == "routed":
        return {"netns": f"{plan.name}.outside", "addresses": list(OUTSIDE_ROUTED[:families]),
                "gateways": list(OUTSIDE_ROUTER[:families])}
    return {"netns": f"{plan.name}.outside", "addresses": list(OUTSIDE_SWITCHED[:families]),
            "gateways": []}


def _pod(lab: str, pod, node: str) -> PodPlan:
    suffix = "" if pod.kind == "Pod" else f".{pod.kind.lower()}"
    digest = hashlib.sha256(f"{lab}/{pod.ref}".encode()).hexdigest()
    return PodPlan(pod.namespace, pod.name, pod.kind, pod.ref, node,
                   f"{lab}.p.{pod.namespace}.{pod.name}{suffix}",
                   str(uuid.uuid5(uuid.NAMESPACE_URL, f"tailor-lab:{lab}/{pod.ref}")),
                   f"{lab}-{digest[:16]}", pod.families or (4,))


def pod_ranges(node: NodePlan, families: tuple[int, ...]) -> list[list[dict]]:
    """The netconf's ipam.ranges for a pod on `node`: one range set per family
    the pod asks for, primary first, so a single-stack pod stays single-stack
    on a dual-stack node."""
    by_family = {ipaddress.ip_network(c).version: c for c in node.pod_cidrs}
    return [[{"subnet": by_family[f]}] for f in families if f in by_family]
