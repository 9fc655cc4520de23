"""Network namespaces for the lab: the switch, the nodes, the pods.

Called by lab.up/down and tests. Everything goes through the `ip` command
(iproute2) so each step is what an engineer would type, and errors come
back with the command that failed. Nothing is ever made in the root
namespace: each veth is created inside the switch namespace with its peer
put straight into the node's namespace.

    <lab>.switch:  br0 (up, no address) with ports n1..nN (and o0, the outside)
    <lab>.router:  (routed underlay) ports n1..nN at 172.31.<i>.1/24
                   (fd00:77:<i>::1/64), o0 at 203.0.113.1/24, forwarding on
    <lab>.<node>:  eth0 192.168.77.<i>/24 (fd00:77::<i>/64) with a default
                   route via the outside host, or routed 172.31.<i>.2/24 with
                   a default route via the router;
                   forwarding on, rp_filter off. No route to any other node's
                   pods: the node's agent installs those (native or VXLAN),
                   as in a cluster
    <lab>.outside: eth0 on the switch (192.168.77.254) or behind the router
                   (203.0.113.2): a host outside the cluster, with no route
                   to any pod CIDR
    <lab>.p.*:     empty but for lo (up); the CNI plugin adds eth0
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence

NETNS_DIR = "/var/run/netns"
NODE_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv6.conf.all.forwarding=1",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.all.accept_dad=0",
)


class NetnsError(Exception):
    """An `ip` command failed; the message holds the command and its stderr."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return _run(argv, check)


def batch(commands: Sequence[str], netns: str | None = None) -> None:
    """Several `ip` commands in one process (`ip -batch`), failing at the first error."""
    if not commands:
        return
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed: {proc.stderr.strip()}\ncommands:\n  "
                         + "\n  ".join(commands))


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` inside `netns`. nsenter enters the network
    namespace only: `ip netns exec` would also mount a fresh /sys, hiding
    the bpffs at /sys/fs/bpf where the agents pin their programs."""
    return ["nsenter", f"--net={path(netns)}", "--", *argv]


def path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def add(name: str) -> None:
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)


def delete(name: str) -> bool:
    """Delete a namespace (and every interface in it); False if there was none."""
    if not exists(name):
        return False
    ip("netns", "delete", name)
    return True


def sysctl(netns: str, settings: Iterable[str]) -> None:
    _run(exec_argv(netns, ["sysctl", "-q", "-w", *settings]), True)


# -- the lab's pieces -------------------------------------------------------------

def make_switch(netns: str, bridge: str) -> None:
    add(netns)
    batch([f"link add {bridge} type bridge stp_state 0 forward_delay 0",
           f"link set {bridge} up"], netns=netns)


def make_node(switch_netns: str, bridge: str, node: dict, ifname: str) -> None:
    """The node's namespace, its veth into the switch, its addresses and forwarding."""
    add(node["netns"])
    sysctl(node["netns"], NODE_SYSCTLS)
    port = node["switch_port"]
    batch([f"link add {port} type veth peer name {ifname} netns {node['netns']}",
           f"link set {port} master {bridge}",
           f"link set {port} up"], netns=switch_netns)
    batch([f"addr add {a} dev {ifname}" + (" nodad" if ":" in a else "") for a in node["underlay"]]
          + [f"link set {ifname} up"], netns=node["netns"])


def make_router(netns: str) -> None:
    add(netns)
    sysctl(netns, NODE_SYSCTLS)


def make_routed_node(router_netns: str, node: dict, ifname: str) -> None:
    """The node's namespace on a subnet of its own: a veth to the router,
    the router's end holding the gateway address, a default route via it."""
    add(node["netns"])
    sysctl(node["netns"], NODE_SYSCTLS)
    port = node["switch_port"]
    batch([f"link add {port} type veth peer name {ifname} netns {node['netns']}"]
          + [f"addr add {g} dev {port}" + (" nodad" if ":" in g else "") for g in node["gateways"]]
          + [f"link set {port} up"], netns=router_netns)
    batch([f"addr add {a} dev {ifname}" + (" nodad" if ":" in a else "") for a in node["underlay"]]
          + [f"link set {ifname} up"]
          + [f"route add default via {g.split('/')[0]}" for g in node["gateways"]], netns=node["netns"])


def make_outside(underlay_netns: str, outside: dict, *, bridge: str | None, port: str = "o0") -> None:
    """The host outside the cluster, on the switch's bridge or behind the router."""
    add(outside["netns"])
    commands = [f"link add {port} type veth peer name eth0 netns {outside['netns']}"]
    commands += [f"link set {port} master {bridge}"] if bridge else \
        [f"addr add {g} dev {port}" + (" nodad" if ":" in g else "") for g in outside["gateways"]]
    batch(commands + [f"link set {port} up"], netns=underlay_netns)
    batch([f"addr add {a} dev eth0" + (" nodad" if ":" in a else "") for a in outside["addresses"]]
          + ["link set eth0 up"]
          + [f"route add default via {g.split('/')[0]}" for g in outside["gateways"]],
          netns=outside["netns"])


def default_route(netns: str, gateways: Sequence[str]) -> None:
    batch([f"route replace default via {g.split('/')[0]}" for g in gateways], netns=netns)


def make_pod(netns: str) -> None:
    add(netns)


def _run(argv: Sequence[str], check: bool) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout
