"""The rtnetlink requests of a CNI ADD and DEL, encoded here and sent as one
batch per namespace.

Called by wiring.Wiring: create_veth and configure (ADD), teardown (DEL).
Reading back what exists (CHECK, GC) stays with pyroute2, whose parsing it
needs; this module only writes.

Why not pyroute2 for these: its synchronous API (0.9) runs an asyncio event
loop per socket and a loop turn per request, so the ~20 requests of a
dual-stack ADD took 7 ms of CPU under the agent's GIL (1 ms here), and each
request went to the kernel on its own, to queue for the RTNL lock behind
other pods' tcx attaches. Here the requests of one namespace are one
sendmsg: the kernel runs them in order and answers each with an ack
(NLM_F_ACK); `Batch.send` returns once every ack is in and raises
`NetlinkError` for the first refusal (the kernel still runs the rest: the
caller undoes the whole attachment anyway).

Formats from the uapi headers: linux/netlink.h (nlmsghdr, nlattr,
nlmsgerr), linux/rtnetlink.h (rtmsg), linux/if_link.h (ifinfomsg, IFLA_*),
linux/if_addr.h (ifaddrmsg), linux/neighbour.h (ndmsg), linux/veth.h.
"""
from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import struct

# linux/netlink.h
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NEW = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE   # `ip ... add`
CHANGE = NLM_F_REQUEST | NLM_F_ACK
# linux/rtnetlink.h
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_NEWNEIGH = 16, 17, 20, 24, 28
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
# linux/if_link.h, linux/veth.h
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD = 1, 3, 4, 18, 20, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFF_UP = 0x1
# linux/if_addr.h, linux/neighbour.h
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80

_HEADER = struct.Struct("=IHHII")     # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")    # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")     # ifaddrmsg: family, prefixlen, flags, scope, index
_ND = struct.Struct("=BxxxiHBB")      # ndmsg: family, ifindex, state, flags, type
_RT = struct.Struct("=BBBBBBBBI")     # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ERROR = struct.Struct("=i")          # nlmsgerr.error, after the header
_seq = itertools.count(1)             # shared by all batches: acks are matched by it
# The kernel acks every request; one that does not within this long (as the
# plugin's own default timeout) is a kernel in trouble: TimeoutError.
ACK_TIMEOUT_SECONDS = 30.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class NetlinkError(Exception):
    """The kernel refused a request; `code` is the errno, `what` the request."""

    def __init__(self, code: int, what: str):
        super().__init__(f"{what}: {os.strerror(code)} (netlink error {code})")
        self.code, self.what = code, what


def _attr(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _name(text: str) -> bytes:
    return text.encode() + b"\0"


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _family(addr: Address) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


class Batch:
    """Requests for one namespace, sent together by send()."""

    def __init__(self):
        self._messages: list[bytes] = []
        self._what: dict[int, str] = {}   # seq -> the request, for errors

    def _add(self, kind: int, flags: int, body: bytes, what: str) -> None:
        seq = next(_seq)
        self._messages.append(_HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body)
        self._what[seq] = what

    # -- the requests -------------------------------------------------------------

    def veth(self, host: str, host_mac: str, peer: str, peer_mac: str, peer_netns_fd: int,
             mtu: int | None = None) -> None:
        """`ip link add <host> address <mac> type veth peer <peer> address
        <mac> netns <fd>`: both ends down."""
        mtu_attr = _attr(IFLA_MTU, struct.pack("=I", mtu)) if mtu else b""
        peer_msg = (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(peer))
                    + _attr(IFLA_ADDRESS, _mac(peer_mac))
                    + _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd)) + mtu_attr)
        linkinfo = _attr(IFLA_INFO_KIND, _name("veth")) + _attr(
            IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_msg))
        body = (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(host))
                + _attr(IFLA_ADDRESS, _mac(host_mac)) + mtu_attr + _attr(IFLA_LINKINFO, linkinfo))
        self._add(RTM_NEWLINK, NEW, body, f"creating veth {host} <-> {peer}")

    def alias(self, name: str, alias: str) -> None:
        """`ip link set <name> alias <alias>`, by name, so it can follow the
        veth in one batch (a creating RTM_NEWLINK ignores IFLA_IFALIAS)."""
        self._add(RTM_NEWLINK, CHANGE, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                  + _attr(IFLA_IFNAME, _name(name)) + _attr(IFLA_IFALIAS, alias.encode()),
                  f"setting the alias of {name}")

    def up(self, index: int, name: str) -> None:
        """`ip link set dev <index> up`."""
        self._add(RTM_NEWLINK, CHANGE, _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP),
                  f"setting {name} up")

    def delete(self, name: str) -> None:
        """`ip link del <name>` (a veth's peer goes with it)."""
        self._add(RTM_DELLINK, CHANGE, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                  + _attr(IFLA_IFNAME, _name(name)), f"deleting {name}")

    def address(self, index: int, addr: Address, nodad: bool = False) -> None:
        """`ip addr add <addr>/<max prefix> dev <index> [nodad]`."""
        raw = addr.packed
        body = (_IFADDR.pack(_family(addr), addr.max_prefixlen, IFA_F_NODAD if nodad else 0,
                             RT_SCOPE_UNIVERSE, index)
                + _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw))
        self._add(RTM_NEWADDR, NEW, body, f"adding address {addr}")

    def neighbour(self, index: int, addr: Address, mac: str) -> None:
        """`ip neigh add <addr> lladdr <mac> dev <index> nud permanent`."""
        body = (_ND.pack(_family(addr), index, NUD_PERMANENT, 0, 0)
                + _attr(NDA_DST, addr.packed) + _attr(NDA_LLADDR, _mac(mac)))
        self._add(RTM_NEWNEIGH, NEW, body, f"adding neighbour {addr}")

    def route(self, index: int, dst: ipaddress.IPv4Network | ipaddress.IPv6Network,
              gateway: Address | None = None) -> None:
        """`ip route add <dst> [via <gateway>] dev <index> proto static`, scope
        link without a gateway."""
        scope = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
        family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
        body = _RT.pack(family, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, scope, RTN_UNICAST, 0)
        if dst.prefixlen:
            body += _attr(RTA_DST, dst.network_address.packed)
        if gateway is not None:
            body += _attr(RTA_GATEWAY, gateway.packed)
        body += _attr(RTA_OIF, struct.pack("=i", index))
        self._add(RTM_NEWROUTE, NEW, body, f"adding route {dst}" + (f" via {gateway}" if gateway else ""))

    # -- sending ------------------------------------------------------------------

    def send(self, sock: socket.socket) -> None:
        """Send every request on `sock` (a NETLINK_ROUTE socket, in the
        namespace the requests are for); wait for every ack."""
        if not self._messages:
            return
        sock.sendall(b"".join(self._messages))
        waiting, first = set(self._what), None
        while waiting:
            data = sock.recv(65536)
            for kind, seq, payload in _messages(data):
                if kind != NLMSG_ERROR or seq not in waiting:
                    continue   # not an answer to this batch
                waiting.discard(seq)
                (code,) = _ERROR.unpack_from(payload)
                if code and first is None:
                    first = NetlinkError(-code, self._what[seq])
        if first is not None:
            raise first


def open_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's network namespace; it
    stays in that namespace whichever thread uses it later."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    sock.settimeout(ACK_TIMEOUT_SECONDS)
    return sock


def _messages(data: bytes):
    """(type, seq, payload) of each netlink message in one datagram."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            return
        yield kind, seq, data[offset + _HEADER.size:offset + length]
        offset += (length + 3) & ~3
