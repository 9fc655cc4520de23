"""A pod's veth pair, addresses, routes and neighbours.

Called by handler.CniHandler for ADD (create_veth, then configure while the
pod's program is being attached; `create` does both), DEL and GC
(teardown), CHECK (check); GC also lists what exists (host_attachments).
ADD and DEL write through rtnl.py, one netlink batch per namespace; CHECK
and GC read back through pyroute2.

What ADD builds, for a pod with 10.244.1.7 and fd00:10:244:1::7:

    node netns                              pod netns (CNI_NETNS)
    tl<11 hex>  <---------- veth ---------->  eth0 (CNI_IFNAME)
      alias "tailor:<containerID>/<ifname>"     10.244.1.7/32, fd00:10:244:1::7/128
      10.244.1.7 dev tl.. scope link            169.254.1.1 dev eth0 scope link
      fd00:10:244:1::7 dev tl..                 default via 169.254.1.1 dev eth0
      neigh 10.244.1.7 lladdr <eth0 MAC>        default via fe80::1 dev eth0
            PERMANENT (and the IPv6 one)        neigh 169.254.1.1 / fe80::1
                                                  lladdr <tl.. MAC> PERMANENT

The gateway is the same link-local address in every pod (169.254.1.1 and
fe80::1, as Calico does): the host side needs no address of its own, the pod's
routes never change when the node's do, and the static neighbour answers what
ARP / neighbour discovery would otherwise ask the host. Every packet a pod sends
therefore goes to the host-side veth, where the pod's eBPF program sits.

The host-side name is `tl` + 11 hex digits of sha256(containerID/ifname):
15 characters at most (IFNAMSIZ), and DEL or GC can find it from the attachment
alone, even after the pod's namespace is gone. Deleting the host side deletes
the pair, and with them their routes and neighbours.

IPv6 duplicate address detection is off on the pod interface (accept_dad=0,
and the addresses are added with IFA_F_NODAD) so the addresses work the moment
ADD returns. A pod without an IPv6 address gets IPv6 turned off on its
interface and the host side (disable_ipv6=1): its programs have no IPv6 path and would only drop
the router solicitations and MLD reports both kernels send otherwise.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import ipaddress
import os
import re
import socket
import threading
from collections.abc import Iterable, Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tailor.datapath.agent.cni import rtnl

GATEWAY_V4 = ipaddress.IPv4Address("169.254.1.1")
GATEWAY_V6 = ipaddress.IPv6Address("fe80::1")
HOST_PREFIX = "tl"
ALIAS_PREFIX = "tailor:"
HOST_NAME = re.compile(r"^tl[0-9a-f]{11}$")

NUD_PERMANENT = rtnl.NUD_PERMANENT
CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = rtnl.NETLINK_ROUTE

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class WiringError(Exception):
    """Netlink refused a step, or (check) the pod's networking differs."""


class NetnsMissing(WiringError):
    """CNI_NETNS does not exist (ADD and CHECK cannot proceed; DEL may)."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One wired attachment, as the agent core needs it to attach a program."""
    container_id: str
    ifname: str               # inside the pod
    netns: str
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_ifindex: int
    pod_mac: str
    addresses: tuple[Interface, ...]   # as configured: /32 and /128


def host_ifname(container_id: str, ifname: str) -> str:
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return HOST_PREFIX + digest[:11]


def gateway_for(addr: Address) -> Address:
    return GATEWAY_V4 if addr.version == 4 else GATEWAY_V6


PROC_SYS_NET = "/proc/sys/net"


class Wiring:
    """Creates and removes pod veths in the node netns the agent runs in."""

    def __init__(self, mtu: int | None = None, proc_sys_net: str = PROC_SYS_NET):
        self.mtu = mtu
        # A container's own /proc/sys is read-only: the chart mounts the
        # host's /proc/sys/net elsewhere. Either resolves each file in the
        # writer's network namespace, so one mount serves every pod.
        self.proc_sys_net = proc_sys_net

    # -- ADD --------------------------------------------------------------------

    def create(self, container_id: str, ifname: str, netns: str,
               addresses: Sequence[Address]) -> Endpoint:
        """Wire the attachment whole: create_veth, then configure. On failure
        whatever was made is removed and WiringError (NetnsMissing when the
        namespace isn't there) is raised."""
        endpoint = self.create_veth(container_id, ifname, netns, addresses)
        try:
            self.configure(endpoint)
        except BaseException:
            self._delete_host(endpoint.host_ifname)
            raise
        return endpoint

    def create_veth(self, container_id: str, ifname: str, netns: str,
                    addresses: Sequence[Address]) -> Endpoint:
        """The veth pair, both ends down and without addresses, and the
        Endpoint a program attaches to. The MACs are chosen here (random,
        locally administered, as the kernel would) so that nothing has to be
        read back. On failure nothing is left (WiringError, NetnsMissing)."""
        host = host_ifname(container_id, ifname)
        addresses = list(addresses)
        host_mac, pod_mac = _random_mac(), _random_mac()
        try:
            nsfd = os.open(netns, os.O_RDONLY)
        except OSError as e:
            raise NetnsMissing(f"network namespace {netns}: {e.strerror}") from None
        try:
            with contextlib.closing(rtnl.open_socket()) as node:
                self._add_veth(node, host, host_mac, ifname, pod_mac, nsfd,
                               f"{ALIAS_PREFIX}{container_id}/{ifname}")
                try:
                    host_idx = socket.if_nametoindex(host)
                    pod_idx = _in_netns(netns, nsfd, _pod_index, netns, ifname)
                except BaseException:
                    self._delete_host(host)
                    raise
        except OSError as e:
            raise WiringError(f"host side {host}: {_why(e)}") from None
        finally:
            os.close(nsfd)
        return Endpoint(container_id, ifname, netns, host, host_idx, host_mac, pod_idx, pod_mac,
                        tuple(ipaddress.ip_interface(f"{a}/{a.max_prefixlen}") for a in addresses))

    def _add_veth(self, node, host: str, host_mac: str, ifname: str, pod_mac: str, nsfd: int,
                  alias: str) -> None:
        def add():
            batch = rtnl.Batch()
            batch.veth(host, host_mac, ifname, pod_mac, nsfd, self.mtu)
            batch.alias(host, alias)
            batch.send(node)

        try:
            try:
                add()
            except rtnl.NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
                # A host side left by an ADD that died half-way: same attachment,
                # so it is ours to replace.
                self._delete_host(host)
                add()
        except rtnl.NetlinkError as e:
            self._delete_host(host)   # the veth may be there without its alias
            raise WiringError(str(e)) from None

    def configure(self, endpoint: Endpoint) -> None:
        """IPv6 set as the addresses ask (before either end comes up), the
        addresses, the gateway's neighbour and routes in the pod, both ends
        up, the host's routes and neighbours to the pod: one netlink batch in
        each namespace. WiringError on failure; the caller removes the veth
        (teardown), which removes all of this with it.

        The IPv6 settings are /proc/sys writes, and turning IPv6 off takes
        the RTNL lock with a trylock that the kernel retries until it wins:
        behind other pods' program attaches (each holds RTNL through an RCU
        grace period) it can wait tens of ms, which is why it is done here,
        while this pod's program is being attached, not before."""
        ep = endpoint
        has_ipv6 = any(a.version == 6 for a in ep.addresses)
        pod = rtnl.Batch()
        for iface in ep.addresses:
            pod.address(ep.pod_ifindex, iface.ip, nodad=iface.version == 6)
        pod.up(ep.pod_ifindex, ep.ifname)
        for version in sorted({a.version for a in ep.addresses}):
            gw = GATEWAY_V4 if version == 4 else GATEWAY_V6
            pod.neighbour(ep.pod_ifindex, gw, ep.host_mac)
            if version == 4:   # fe80::/64 is on-link already
                pod.route(ep.pod_ifindex, ipaddress.ip_network(f"{gw}/32"))
            pod.route(ep.pod_ifindex, ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0"),
                      gateway=gw)
        node = rtnl.Batch()
        node.up(ep.host_ifindex, ep.host_ifname)
        for iface in ep.addresses:
            node.route(ep.host_ifindex, iface.network)
            node.neighbour(ep.host_ifindex, iface.ip, ep.pod_mac)
        sock = _in_netns(ep.netns, None, _pod_socket, self.proc_sys_net, ep.ifname, has_ipv6)
        try:
            pod.send(sock)
        except rtnl.NetlinkError as e:
            raise WiringError(f"configuring {ep.ifname} in {ep.netns}: {e}") from None
        finally:
            sock.close()
        try:
            if not has_ipv6:
                _set_ipv6(self.proc_sys_net, ep.host_ifname, False)   # the host side's IPv6 chatter too
            with contextlib.closing(rtnl.open_socket()) as sock:
                node.send(sock)
        except OSError as e:
            raise WiringError(f"host side {ep.host_ifname}: {e}") from None
        except rtnl.NetlinkError as e:
            raise WiringError(f"host routes via {ep.host_ifname}: {e}") from None

    # -- DEL / GC -----------------------------------------------------------------

    def teardown(self, container_id: str, ifname: str, netns: str | None = None) -> bool:
        """Remove the attachment's veth pair (and so its routes and
        neighbours). Already gone is success; returns whether anything was
        there. `netns` is not needed: the host side's name is derived."""
        return self._delete_host(host_ifname(container_id, ifname))

    def host_attachments(self) -> dict[tuple[str, str], str]:
        """(containerID, ifname) -> host ifname for every tailor veth in the
        node, read back from the host sides' aliases."""
        out = {}
        with _node() as ipr:
            for link in ipr.get_links():
                name, alias = link.get("ifname") or "", link.get("ifalias") or ""
                if not HOST_NAME.match(name) or not alias.startswith(ALIAS_PREFIX):
                    continue
                container_id, _, ifname = alias[len(ALIAS_PREFIX):].rpartition("/")
                out[(container_id, ifname)] = name
        return out

    def _delete_host(self, host: str) -> bool:
        batch = rtnl.Batch()
        batch.delete(host)
        try:
            with contextlib.closing(rtnl.open_socket()) as sock:
                batch.send(sock)
            return True
        except rtnl.NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return False
            raise WiringError(str(e)) from None

    # -- CHECK --------------------------------------------------------------------

    def check(self, container_id: str, ifname: str, netns: str,
              addresses: Iterable[Address], pod_mac: str | None = None) -> None:
        """Raise WiringError unless the attachment looks as ADD left it: both
        ends up, the pod's addresses, its gateway neighbours and default
        routes, and the host's routes to the pod. Routes a later plugin
        added are allowed."""
        addresses = list(addresses)
        host = host_ifname(container_id, ifname)
        with _node() as ipr:
            links = ipr.link_lookup(ifname=host)
            if not links:
                raise WiringError(f"host-side veth {host} is missing")
            host_link = ipr.get_links(links[0])[0]
            host_mac = host_link.get("address")
            _require(host_link.get("operstate") in ("UP", "UNKNOWN"), f"{host} is not up")
            host_routes = {(r.get("dst"), r.get("oif")) for fam in (socket.AF_INET, socket.AF_INET6)
                           for r in ipr.get_routes(family=fam, oif=links[0])}
            for addr in addresses:
                _require((str(addr), links[0]) in host_routes, f"host route to {addr} via {host} is missing")
        with _pod(netns) as ipr:
            pods = ipr.link_lookup(ifname=ifname)
            _require(bool(pods), f"{ifname} is missing in {netns}")
            pod = ipr.get_links(pods[0])[0]
            _require(pod.get("operstate") in ("UP", "UNKNOWN"), f"{ifname} is not up")
            if pod_mac:
                _require(pod.get("address") == pod_mac.lower(),
                         f"{ifname} has MAC {pod.get('address')}, prevResult says {pod_mac}")
            have = {(a.get("address"), a.get("prefixlen")) for a in ipr.get_addr(index=pods[0])}
            for addr in addresses:
                _require((str(addr), addr.max_prefixlen) in have, f"{ifname} lacks address {addr}")
            neighbours = {(n.get("dst"), n.get("lladdr"), n.get("state"))
                          for fam in (socket.AF_INET, socket.AF_INET6)
                          for n in ipr.get_neighbours(family=fam, ifindex=pods[0])}
            routes = {(r.get("dst"), r.get("gateway")) for fam in (socket.AF_INET, socket.AF_INET6)
                      for r in ipr.get_routes(family=fam, oif=pods[0])}
            for gw in sorted({gateway_for(a) for a in addresses}, key=str):
                _require((str(gw), host_mac, NUD_PERMANENT) in neighbours,
                         f"static neighbour {gw} -> {host_mac} is missing in {netns}")
                _require((None, str(gw)) in routes, f"default route via {gw} is missing in {netns}")


# -- helpers ------------------------------------------------------------------------

def _node() -> IPRoute:
    """A netlink socket in the node netns, for requests only (pyroute2's
    default also subscribes to every link/address/route event, which a burst
    of pod starts turns into a flood every socket has to read)."""
    return IPRoute(groups=0)


@contextlib.contextmanager
def _pod(netns: str):
    """IPRoute inside the pod's netns (CHECK reads it back).

    The netlink socket is opened by a short-lived thread that has entered the
    namespace (setns changes only the calling thread's namespace, and the
    thread ends there): the same socket `IPRoute(netns=path)` gets, without
    the helper process pyroute2 forks for it."""
    def inside():
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE).detach()

    fd = _in_netns(netns, None, inside)
    try:
        ipr = IPRoute(fileno=fd, groups=0)
    except BaseException:
        os.close(fd)
        raise
    try:
        yield ipr
    finally:
        ipr.close()


def _pod_index(netns: str, ifname: str) -> int:
    """Inside the pod's netns: the new interface's index."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise WiringError(f"{ifname} did not appear in {netns}") from None


def _pod_socket(proc_sys_net: str, ifname: str, has_ipv6: bool) -> socket.socket:
    """Inside the pod's netns: the interface's IPv6 set as its addresses ask
    (DAD off, or IPv6 off — /proc/sys/net writes that netlink cannot do),
    and a netlink socket that stays in this namespace."""
    _set_ipv6(proc_sys_net, ifname, has_ipv6)
    return rtnl.open_socket()


def _random_mac() -> str:
    """A random unicast, locally administered MAC: what the kernel gives a veth."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def _in_netns(netns: str, nsfd: int | None, fn, *args):
    """Run fn(*args) on a fresh thread that has entered `netns` (by path, or
    by an open descriptor `nsfd`)."""
    box: dict = {}

    def run():
        try:
            fd = nsfd if nsfd is not None else os.open(netns, os.O_RDONLY)
            try:
                if _libc().setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                if nsfd is None:
                    os.close(fd)
            box["value"] = fn(*args)
        except BaseException as e:   # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=run, name="tailor-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        e = box["error"]
        if isinstance(e, FileNotFoundError):
            raise NetnsMissing(f"network namespace {netns} does not exist")
        raise WiringError(f"in {netns}: {e}")
    return box.get("value")


def _set_ipv6(proc_sys_net: str, ifname: str, enabled: bool) -> None:
    name, value = ("accept_dad", "0") if enabled else ("disable_ipv6", "1")
    path = f"{proc_sys_net}/ipv6/conf/{ifname}/{name}"
    if os.path.exists(path):   # absent when IPv6 is disabled in the pod
        with open(path, "w") as f:
            f.write(value)


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise WiringError(message)


def _why(e: Exception) -> str:
    if isinstance(e, NetlinkError):
        return f"{os.strerror(e.code)} (netlink error {e.code})"
    return str(e)
