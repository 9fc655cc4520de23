"""kube-proxy's Service translation on the lab's nodes, as its nftables
mode does it: a Service port with endpoints is DNATed to one of them at
random (numgen), for pods (prerouting) and for the node itself (output);
one without endpoints is rejected at once (TCP reset, ICMP port
unreachable), never left to time out. A NodePort (or LoadBalancer)
Service's node port on the node's own addresses is DNATed the same way —
with externalTrafficPolicy Cluster to any endpoint, the source masqueraded
to the node (marked 0x4000, masqueraded in postrouting); with Local only
to this node's endpoints, the client's address kept, and dropped when the
node has none.

Called by lab.up (`--kube-proxy`, after the pods are wired: the endpoints
are their addresses) and tests. The rules are rendered from the lab's model
(probe.model: the manifests' Services at the lab's ClusterIPs, their
EndpointSlices as the endpoints controller makes them) and written into
each node's namespace as the tables `ip kube-proxy-lab` and `ip6
kube-proxy-lab`, replaced whole.
"""
from __future__ import annotations

import ipaddress
import subprocess

from tailor.lab import netns as netns_
from tailor.operator.cluster import services as services_

TABLE = "kube-proxy-lab"
L4 = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


class KubeProxyError(Exception):
    pass


MASQUERADE_MARK = 0x4000


def rules(lab: dict, node: dict | None = None) -> tuple[str, int]:
    """(the nft script for `node` (None: the first), how many Service ports
    it translates)."""
    from tailor.lab.probing import probe

    state = probe.model(lab)
    node = node or lab["nodes"][0]
    out = {4: [], 6: []}
    reject = {4: [], 6: []}
    count = 0
    own = {4: [], 6: []}
    for a in node["underlay"]:
        address = ipaddress.ip_interface(a).ip
        own[address.version].append(str(address))
    for svc in state.sorted_services():
        for port in svc.ports:
            ends = services_.endpoints(svc, port, state.pods.values())
            for family in (4, 6):
                vip = svc.cluster_ip(family)
                if vip is None:
                    continue
                word = "ip" if family == 4 else "ip6"
                match = f"{word} daddr {vip} {L4[port.protocol]} dport {port.port}"
                backends = [(p.ip(family), target) for p, target in ends if p.ip(family)]
                if not backends:
                    how = "tcp reset" if port.protocol == "TCP" else \
                        ("icmp type port-unreachable" if family == 4 else "icmpv6 type port-unreachable")
                    reject[family].append(f"    {match} reject with {how}")
                    continue
                out[family].append(f"    {match} {_dnat(word, backends)}")
                count += 1
    for svc in state.sorted_services():
        if not svc.node_ports:
            continue
        for port in svc.ports:
            ends = services_.endpoints(svc, port, state.pods.values())
            for family, word in ((4, "ip"), (6, "ip6")):
                if not own[family] or svc.cluster_ip(family) is None:
                    continue
                match = f"{word} daddr {{ {', '.join(own[family])} }} {L4[port.protocol]} dport {port.node_port}"
                local = svc.external_traffic_policy == "Local"
                backends = [(p.ip(family), t) for p, t in ends if p.ip(family)
                            and (not local or p.node == node["name"])]
                if not backends:
                    out[family].append(f"    {match} drop")
                    continue
                mark = "" if local else f"meta mark set meta mark | {MASQUERADE_MARK:#x} "
                out[family].append(f"    {match} {mark}{_dnat(word, backends)}")
                count += 1
    script = []
    for family, word in ((4, "ip"), (6, "ip6")):
        script += [f"add table {word} {TABLE}", f"delete table {word} {TABLE}", f"table {word} {TABLE} {{"]
        for chain, hook, priority in (("prerouting", "prerouting", -100), ("output", "output", -100)):
            script += [f"  chain {chain} {{", f"    type nat hook {hook} priority {priority}; policy accept;",
                       *out[family], "  }"]
        script += ["  chain postrouting {", "    type nat hook postrouting priority 100; policy accept;",
                   f"    meta mark & {MASQUERADE_MARK:#x} == {MASQUERADE_MARK:#x} masquerade", "  }"]
        for chain, hook in (("reject-forward", "forward"), ("reject-output", "output")):
            script += [f"  chain {chain} {{", f"    type filter hook {hook} priority 0; policy accept;",
                       *reject[family], "  }"]
        script.append("}")
    return "\n".join(script) + "\n", count


def _dnat(word: str, backends: list[tuple[str, int]]) -> str:
    pairs = ", ".join(f"{i} : {_addr(a)} . {t}" for i, (a, t) in enumerate(backends))
    return f"dnat {word} to numgen random mod {len(backends)} map {{ {pairs} }}"


def install(lab: dict) -> int:
    count = 0
    for node in lab["nodes"]:
        script, count = rules(lab, node)
        proc = subprocess.run(netns_.exec_argv(node["netns"], ["nft", "-f", "-"]), input=script,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise KubeProxyError(f"node {node['name']}: nft refused kube-proxy's rules: "
                                 f"{proc.stderr.strip()}")
    return count


def _addr(address: str) -> str:
    return str(ipaddress.ip_address(address))
