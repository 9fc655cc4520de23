"""The node's networking beyond its pods, in the kernel: routes to the
other nodes' pods (native or VXLAN, as routes.plan decides) and the
masquerade of pod traffic leaving the cluster.

Called by the core for SetNodes (the whole truth each time: apply() makes
the kernel agree with it, removing what it no longer names) and at start
(restore(): the last SetNodes, from the state dir, so a restarted agent
keeps routing before the program source calls again). An agent given no
--pod-cidr takes its node's own from the table (its Node's spec.podCIDRs, as
kube-controller-manager, kubeadm and kind allocate them) and hands them to
`on_pod_cidrs` (the IPAM).

What it owns, and nothing else:
  - routes with protocol RTPROT_TAILOR (116) in the main table, both families;
  - the device `tailor.vxlan`, with its FDB and neighbour entries;
  - the nftables tables `ip tailor-nat` and `ip6 tailor-nat`, replaced whole in
    one transaction: postrouting masquerades what this node's pods send to
    anything outside the cluster's pod CIDRs and the exempt CIDRs;
  - the nftables table `inet tailor-svc` (SetServices, `unserved`): a
    Service address and port without a ready backend is rejected at once
    (TCP reset, ICMP port unreachable) when it reaches the node — the pods'
    programs leave it untranslated, and without kube-proxy nothing else
    would answer it.
Masquerading happens after the pod's egress program: ipBlocks are judged on
the pod's own address, and replies, un-NATed by the kernel's conntrack,
meet the pod's ingress program with the pod's address as destination.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import threading

from tailor.datapath.agent.node import routes as routes_

log = logging.getLogger("tailor.agent.network")

RTPROT_TAILOR = 116
RT_TABLE_MAIN = 254
RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
NAT_TABLE = "tailor-nat"
SVC_TABLE = "tailor-svc"
STATE_FILE = "nodes.json"


class NetworkError(Exception):
    """The kernel refused a route, the VXLAN device or the masquerade rules."""


class NodeNetwork:
    def __init__(self, node: str, *, mode: str = "off", masquerade: bool = False,
                 pod_cidrs: tuple[str, ...] = (), exempt: tuple[str, ...] = (),
                 state_dir: str | None = None):
        if mode not in routes_.MODES:
            raise ValueError(f"--routing {mode!r}: use one of {', '.join(routes_.MODES)}")
        self.node = node
        self.mode = mode
        self.masquerade = masquerade
        self.pod_cidrs = tuple(pod_cidrs)
        # No CIDRs given: learn them from this node's entry in the node table.
        self.learn_pod_cidrs = not self.pod_cidrs
        self.on_pod_cidrs = lambda cidrs: None
        self.exempt = tuple(str(ipaddress.ip_network(c)) for c in exempt)
        self.state_dir = state_dir
        self.digest = ""
        self.problems: tuple[str, ...] = ()
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.mode != "off" or self.masquerade

    def restore(self) -> None:
        """Apply the last SetNodes this node held, if any."""
        path = self._state_path()
        if not path or not os.path.exists(path):
            return
        with open(path) as f:
            saved = json.load(f)
        nodes = [routes_.ClusterNode(n["name"], tuple(n["addresses"]), tuple(n["pod_cidrs"]))
                 for n in saved.get("nodes", [])]
        try:
            self.apply(nodes, saved.get("cluster_cidrs", []), save=False)
        except NetworkError as e:
            log.error("node %s: restoring the routes of the last SetNodes failed: %s", self.node, e)

    def apply(self, nodes: list[routes_.ClusterNode], cluster_cidrs, *, save: bool = True) -> int:
        """Make the kernel agree with `nodes`; returns how many routes are in
        force. Raises NetworkError naming what the kernel refused."""
        cluster_cidrs = [str(ipaddress.ip_network(c)) for c in cluster_cidrs]
        if self.learn_pod_cidrs:
            own = next((n.pod_cidrs for n in nodes if n.name == self.node), ())
            if own and tuple(own) != self.pod_cidrs:
                log.info("node %s: pod CIDRs %s, from its Node", self.node, ", ".join(own))
                self.pod_cidrs = tuple(own)
                self.on_pod_cidrs(self.pod_cidrs)
        with self._lock:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                subnets = _subnets(ipr)
                plan = routes_.plan(self.node, nodes, self.mode,
                                    lambda a: any(ipaddress.ip_address(a) in s for s in subnets))
                for problem in plan.problems:
                    log.warning("node %s: %s", self.node, problem)
                if self.mode != "off":
                    index = self._vxlan(ipr, plan)
                    self._routes(ipr, plan, index)
            if self.masquerade:
                self._masquerade(nodes, cluster_cidrs)
            self.problems = plan.problems
            self.digest = routes_.digest(nodes, cluster_cidrs)
            if save:
                self._save(nodes, cluster_cidrs)
            return len(plan.routes)

    # -- routes ------------------------------------------------------------------------

    def _vxlan(self, ipr, plan: routes_.Plan) -> int | None:
        """The VXLAN device when the plan needs it (made or checked), else
        removed. Returns its index."""
        found = ipr.link_lookup(ifname=routes_.VXLAN_DEVICE)
        if not plan.vxlan:
            if found:
                ipr.link("del", index=found[0])
            return None
        mac = routes_.vtep_mac(plan.vtep)
        if found:
            link = ipr.get_links(found[0])[0]
            info = link.get_attr("IFLA_LINKINFO")
            data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
            local = data.get_attr("IFLA_VXLAN_LOCAL") if data is not None else None
            if local != plan.vtep or link.get_attr("IFLA_ADDRESS") != mac:
                ipr.link("del", index=found[0])       # this node's address changed
                found = []
        if not found:
            mtu = _mtu_towards(ipr, plan.vtep) - routes_.VXLAN_OVERHEAD
            try:
                ipr.link("add", ifname=routes_.VXLAN_DEVICE, kind="vxlan", vxlan_id=routes_.VXLAN_ID,
                         vxlan_local=plan.vtep, vxlan_port=routes_.VXLAN_PORT, vxlan_learning=0,
                         address=mac, mtu=mtu)
            except Exception as e:   # noqa: BLE001 - pyroute2 raises NetlinkError and others
                raise NetworkError(f"creating {routes_.VXLAN_DEVICE} (VTEP {plan.vtep}): {e}") from None
            found = ipr.link_lookup(ifname=routes_.VXLAN_DEVICE)
        index = found[0]
        ipr.link("set", index=index, state="up")
        # What it holds, against what the plan wants: stale entries go.
        fdb = {e.get_attr("NDA_LLADDR"): e.get_attr("NDA_DST")
               for e in ipr.fdb("dump", ifindex=index) if e.get_attr("NDA_DST")}
        for mac_, dst in fdb.items():
            if plan.fdb.get(mac_) != dst:
                ipr.fdb("del", ifindex=index, lladdr=mac_, dst=dst)
        for mac_, dst in plan.fdb.items():
            if fdb.get(mac_) != dst:
                ipr.fdb("append", ifindex=index, lladdr=mac_, dst=dst, state=NUD_PERMANENT)
        neighbours = {}
        for family in (2, 10):
            for n in ipr.get_neighbours(family=family, ifindex=index):
                if n.get_attr("NDA_DST"):
                    neighbours[n.get_attr("NDA_DST")] = n.get_attr("NDA_LLADDR")
        wanted = {str(ipaddress.ip_address(g)): m for g, m in plan.neighbours.items()}
        for dst, lladdr in neighbours.items():
            if wanted.get(str(ipaddress.ip_address(dst))) != lladdr:
                ipr.neigh("del", dst=dst, ifindex=index)
        for dst, lladdr in wanted.items():
            ipr.neigh("replace", dst=dst, lladdr=lladdr, ifindex=index, state=NUD_PERMANENT)
        return index

    def _routes(self, ipr, plan: routes_.Plan, vxlan: int | None) -> None:
        held = {}
        for family in (2, 10):
            for r in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
                if r["proto"] == RTPROT_TAILOR and r.get_attr("RTA_DST"):
                    held[f"{r.get_attr('RTA_DST')}/{r['dst_len']}"] = r
        wanted = {str(ipaddress.ip_network(r.cidr)): r for r in plan.routes}
        for cidr, msg in held.items():
            if str(ipaddress.ip_network(cidr)) not in wanted:
                ipr.route("del", dst=cidr, table=RT_TABLE_MAIN, proto=RTPROT_TAILOR)
        for cidr, r in wanted.items():
            args = dict(dst=cidr, gateway=r.gateway, table=RT_TABLE_MAIN, proto=RTPROT_TAILOR)
            if r.overlay:
                args.update(oif=vxlan, flags=RTNH_F_ONLINK)
            try:
                ipr.route("replace", **args)
            except Exception as e:   # noqa: BLE001
                raise NetworkError(f"route {cidr} via {r.gateway} (node {r.node}"
                                   f"{', over VXLAN' if r.overlay else ''}): {e}") from None

    # -- masquerade ----------------------------------------------------------------------

    def _masquerade(self, nodes, cluster_cidrs) -> None:
        exempt = routes_.masquerade_exempt(nodes, [*cluster_cidrs, *self.exempt])
        script = []
        for family, word in ((4, "ip"), (6, "ip6")):
            mine = [c for c in self.pod_cidrs if ipaddress.ip_network(c).version == family]
            keep = [c for c in exempt if ipaddress.ip_network(c).version == family]
            script += [f"add table {word} {NAT_TABLE}", f"delete table {word} {NAT_TABLE}"]
            if not mine:
                continue
            addr = "ipv4_addr" if family == 4 else "ipv6_addr"
            body = [f"table {word} {NAT_TABLE} {{",
                    f"  set exempt {{ type {addr}; flags interval;"
                    + (f" elements = {{ {', '.join(keep)} }};" if keep else "") + " }",
                    "  chain postrouting {",
                    "    type nat hook postrouting priority srcnat; policy accept;",
                    f"    {word} saddr {{ {', '.join(mine)} }} {word} daddr != @exempt masquerade",
                    "  }", "}"]
            script += body
        run_nft("\n".join(script) + "\n")

    def pod_mtu(self, addresses) -> int | None:
        """The MTU pods' interfaces need: when traffic to other nodes may be
        encapsulated (vxlan, auto), the underlay's (the interface holding
        the first of `addresses`, this node's) less VXLAN's overhead, so a
        full-sized pod packet still fits once wrapped; else None (the
        kernel's default)."""
        if self.mode not in ("vxlan", "auto") or not addresses:
            return None
        from pyroute2 import IPRoute

        try:
            with IPRoute() as ipr:
                return _mtu_towards(ipr, addresses[0]) - routes_.VXLAN_OVERHEAD
        except Exception as e:   # noqa: BLE001 - pyroute2 raises NetlinkError and OSError
            log.error("node %s: the underlay's MTU is unknown (%s): pods keep the default MTU, "
                      "and full-sized packets to other nodes will not fit VXLAN", self.node, e)
            return None

    def unserved(self, entries) -> None:
        """Reject at once, in the node's forward and output paths, these
        (address, protocol name, port) Service ports that have no backend.
        Without nft it logs why (the Services themselves still work)."""
        sets = {4: [], 6: []}
        for address, protocol, port in sorted(entries):
            sets[ipaddress.ip_address(address).version].append(f"{address} . {protocol.lower()} . {port}")
        body = [f"add table inet {SVC_TABLE}", f"delete table inet {SVC_TABLE}", f"table inet {SVC_TABLE} {{"]
        for family, word, addr in ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr")):
            body.append(f"  set unserved{family} {{ type {addr} . inet_proto . inet_service;"
                        + (f" elements = {{ {', '.join(sets[family])} }};" if sets[family] else "") + " }")
        for chain, hook in (("forward", "forward"), ("output", "output")):
            body.append(f"  chain {chain} {{")
            body.append(f"    type filter hook {hook} priority -10; policy accept;")
            for family, word in ((4, "ip"), (6, "ip6")):
                match = f"{word} daddr . meta l4proto . th dport @unserved{family}"
                body.append(f"    {match} meta l4proto tcp reject with tcp reset")
                body.append(f"    {match} reject")
            body.append("  }")
        body.append("}")
        with self._lock:
            try:
                run_nft("\n".join(body) + "\n")
            except NetworkError as e:
                log.error("node %s: Services without backends will time out instead of being "
                          "rejected: %s", self.node, e)

    def remove(self) -> None:
        """Undo everything this owns (for tests and a node leaving tailor)."""
        with self._lock:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                self._routes(ipr, routes_.Plan((), (), False, None), None)
                found = ipr.link_lookup(ifname=routes_.VXLAN_DEVICE)
                if found:
                    ipr.link("del", index=found[0])
            if self.masquerade:
                run_nft("".join(f"add table {w} {NAT_TABLE}\ndelete table {w} {NAT_TABLE}\n"
                                for w in ("ip", "ip6")))
            try:
                run_nft(f"add table inet {SVC_TABLE}\ndelete table inet {SVC_TABLE}\n")
            except NetworkError:
                pass                        # no nft: no table of ours either

    # -- state -------------------------------------------------------------------------

    def _state_path(self) -> str | None:
        return os.path.join(self.state_dir, STATE_FILE) if self.state_dir else None

    def _save(self, nodes, cluster_cidrs) -> None:
        path = self._state_path()
        if not path:
            return
        os.makedirs(self.state_dir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"nodes": [{"name": n.name, "addresses": list(n.addresses),
                                  "pod_cidrs": list(n.pod_cidrs)} for n in nodes],
                       "cluster_cidrs": list(cluster_cidrs)}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)


def run_nft(script: str) -> None:
    try:
        proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    except FileNotFoundError:
        raise NetworkError("the masquerade and the rejection of Services without backends need the "
                           "nft command (Debian package nftables); install it") from None
    if proc.returncode != 0:
        raise NetworkError(f"nft refused tailor's rules: {proc.stderr.strip()}")


def _subnets(ipr) -> list:
    """This namespace's subnets of global scope."""
    out = []
    for msg in ipr.get_addr():
        if msg["scope"] != 0:
            continue
        text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        out.append(ipaddress.ip_interface(f"{text}/{msg['prefixlen']}").network)
    return out


def _mtu_towards(ipr, address: str) -> int:
    """The MTU of the interface the underlay reaches `address`'s side through."""
    for msg in ipr.get_addr():
        text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if text == address:
            link = ipr.get_links(msg["index"])[0]
            return link.get_attr("IFLA_MTU") or 1500
    return 1500
