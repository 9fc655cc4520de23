"""Which routes this node needs to reach the other nodes' pods. Pure: the
kernel side is network.py.

Called by network.NodeNetwork with the cluster's nodes as the program
source sent them (SetNodes: every node's addresses and pod CIDRs) and this
node's routing mode:

    native   each other node's pod CIDRs via that node's address of the same
             family (nodes on one L2 segment, as kind's are: no
             encapsulation, the underlay sees pod addresses);
    vxlan    every other node over the VXLAN device (nodes behind routers);
    auto     native to the nodes on one of this node's subnets, VXLAN to
             the rest (as Calico's CrossSubnet);
    off      none: something else routes (a cloud's routes, BGP).

VXLAN, without any learning or flooding: the device `tailor.vxlan` (VNI 1,
UDP 8472) has no address and a MAC made from this node's VTEP address
(`vtep_mac`), so every node can compute every other node's MAC. Per remote
node: a static FDB entry (its MAC -> its VTEP address), and per pod CIDR a
route via the CIDR's network address, on link, whose static neighbour is
the remote MAC. The VTEP is the node's first IPv4 address (the outer
packets are IPv4); inner packets may be IPv4 or IPv6.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterable

MODES = ("native", "vxlan", "auto", "off")
VXLAN_DEVICE = "tailor.vxlan"
VXLAN_ID = 1
VXLAN_PORT = 8472
VXLAN_OVERHEAD = 50          # outer Ethernet, IPv4, UDP and VXLAN headers


@dataclasses.dataclass(frozen=True)
class ClusterNode:
    name: str
    addresses: tuple[str, ...]
    pod_cidrs: tuple[str, ...]

    def address(self, family: int) -> str | None:
        return next((a for a in self.addresses if ipaddress.ip_address(a).version == family), None)


@dataclasses.dataclass(frozen=True, order=True)
class Route:
    """`cidr` (another node's pods) via `gateway`. Overlay routes go out of
    the VXLAN device on link, `gateway` resolving to `mac` (the remote
    VTEP's), whose FDB entry sends to `vtep`."""
    cidr: str
    gateway: str
    node: str
    overlay: bool = False
    vtep: str | None = None
    mac: str | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    routes: tuple[Route, ...]
    problems: tuple[str, ...]            # nodes that cannot be routed to, and why
    vxlan: bool                          # the VXLAN device is needed
    vtep: str | None                     # this node's VTEP address

    @property
    def fdb(self) -> dict[str, str]:
        """Remote VTEP MAC -> its address."""
        return {r.mac: r.vtep for r in self.routes if r.overlay}

    @property
    def neighbours(self) -> dict[str, str]:
        """Overlay gateway -> remote VTEP MAC."""
        return {r.gateway: r.mac for r in self.routes if r.overlay}


def vtep_mac(address: str) -> str:
    """A VTEP's MAC from its IPv4 address: locally administered, unicast."""
    packed = ipaddress.IPv4Address(address).packed
    return ":".join(f"{b:02x}" for b in (0x0E, 0x74, *packed))


def plan(me: str, nodes: Iterable[ClusterNode], mode: str,
         on_link: Callable[[str], bool]) -> Plan:
    """The routes from node `me` to every other node's pod CIDRs.
    `on_link(address)`: is that address on one of this node's subnets."""
    if mode not in MODES:
        raise ValueError(f"routing mode {mode!r}: use one of {', '.join(MODES)}")
    nodes = sorted(nodes, key=lambda n: n.name)
    mine = next((n for n in nodes if n.name == me), None)
    if mode == "off":
        return Plan((), (), False, None)
    vtep = mine.address(4) if mine is not None else None
    routes, problems, overlay = [], [], False
    for node in nodes:
        if node.name == me or not node.pod_cidrs:
            continue
        native = mode == "native" or (mode == "auto" and all(on_link(a) for a in node.addresses[:1]))
        if not native:
            overlay = True
            remote = node.address(4)
            if vtep is None or remote is None:
                problems.append(f"node {node.name}: VXLAN needs an IPv4 address on both ends "
                                f"(this node {vtep or 'has none'}, {node.name} {remote or 'has none'})")
                continue
            mac = vtep_mac(remote)
            for cidr in node.pod_cidrs:
                gateway = str(ipaddress.ip_network(cidr).network_address)
                routes.append(Route(cidr, gateway, node.name, True, remote, mac))
            continue
        for cidr in node.pod_cidrs:
            family = ipaddress.ip_network(cidr).version
            gateway = node.address(family)
            if gateway is None:
                problems.append(f"node {node.name}: no IPv{family} address to route its pods "
                                f"{cidr} through (native routing needs one; use --routing vxlan)")
            elif not on_link(gateway):
                problems.append(f"node {node.name}: {gateway} is not on any subnet of this node, "
                                f"so its pods {cidr} cannot be routed natively (use --routing auto "
                                f"or vxlan)")
            else:
                routes.append(Route(cidr, gateway, node.name))
    return Plan(tuple(sorted(routes)), tuple(problems), overlay, vtep)


def masquerade_exempt(nodes: Iterable[ClusterNode], extra: Iterable[str]) -> list[str]:
    """Destinations pods reach with their own address: every pod CIDR of the
    cluster and the extra CIDRs (Services, ip-masq-agent's nonMasqueradeCIDRs)."""
    nets = {ipaddress.ip_network(c) for n in nodes for c in n.pod_cidrs}
    nets |= {ipaddress.ip_network(c) for c in extra}
    return [str(n) for n in sorted(nets, key=lambda n: (n.version, n))]


def digest(nodes: Iterable[ClusterNode], cluster_cidrs: Iterable[str]) -> str:
    """Of a SetNodes request: the same on both sides of the wire."""
    import hashlib

    h = hashlib.sha256()
    for n in sorted(nodes, key=lambda n: n.name):
        h.update(f"{n.name}|{','.join(n.addresses)}|{','.join(n.pod_cidrs)}\n".encode())
    h.update(("cidrs " + ",".join(sorted(cluster_cidrs))).encode())
    return h.hexdigest()[:16]


def with_source(digest_: str, program_source: str) -> str:
    """A SetNodes digest that also covers the program source it named (none:
    the digest alone), so an agent that restarted and forgot it, or was told
    another replica's, no longer matches."""
    import hashlib

    if not program_source:
        return digest_
    return hashlib.sha256(f"{digest_}|source {program_source}".encode()).hexdigest()[:16]
