"""Crafting packets as bytes: Ethernet, IPv4, IPv6, TCP, UDP, SCTP, ICMP, with
correct checksums. Pure.

Called by the VM and kernel test runs (BPF_PROG_TEST_RUN takes a whole frame),
by `tailor connectivity` to probe compiled programs, and by tests.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import struct

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100

# One table of IP protocol numbers; names derived from it.
IPPROTO = {"ICMP": 1, "TCP": 6, "UDP": 17, "ICMPV6": 58, "SCTP": 132}
IPPROTO_NAMES = {v: k for k, v in IPPROTO.items()}

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

DEFAULT_SRC_MAC = bytes.fromhex("020000000001")
DEFAULT_DST_MAC = bytes.fromhex("020000000002")


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071), as the 16-bit value to store."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(payload: bytes, ethertype: int, *, src: bytes = DEFAULT_SRC_MAC,
             dst: bytes = DEFAULT_DST_MAC, vlan: int | None = None) -> bytes:
    if vlan is not None:
        return dst + src + struct.pack("!HHH", ETH_P_8021Q, vlan, ethertype) + payload
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64,
         ident: int = 0, flags_frag: int = 0x4000, tos: int = 0) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), ident, flags_frag,
                         ttl, proto, 0, ipaddress.IPv4Address(src).packed,
                         ipaddress.IPv4Address(dst).packed)
    csum = checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, *, hop_limit: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), next_header, hop_limit,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed) + payload


def _pseudo_header(src: str, dst: str, proto: int, length: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, proto, length)
    return s.packed + d.packed + struct.pack("!IxxxB", length, proto)


def tcp(src: str, dst: str, sport: int, dport: int, *, flags: int = TCP_SYN, seq: int = 1,
        ack: int = 0, payload: bytes = b"") -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    csum = checksum(_pseudo_header(src, dst, IPPROTO["TCP"], len(seg)) + seg)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    csum = checksum(_pseudo_header(src, dst, IPPROTO["UDP"], len(seg)) + seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", csum) + seg[8:]


def sctp(sport: int, dport: int, *, vtag: int = 0, chunk: bytes = b"") -> bytes:
    """SCTP common header + chunks; the checksum is CRC32c, which zlib lacks,
    so it is computed here (the datapath never checks it)."""
    if not chunk:
        # An INIT chunk, enough for a policy decision.
        chunk = struct.pack("!BBHIIHHI", 1, 0, 20, 1, 65535, 1, 1, 1)
    body = struct.pack("!HHII", sport, dport, vtag, 0) + chunk
    return body[:8] + struct.pack("<I", crc32c(body)) + body[12:]


def icmp_echo(ident: int = 1, seq: int = 1, *, v6: bool = False, src: str = "", dst: str = "") -> bytes:
    kind = 128 if v6 else 8
    msg = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + b"tailor"
    if v6:
        csum = checksum(_pseudo_header(src, dst, IPPROTO["ICMPV6"], len(msg)) + msg)
    else:
        csum = checksum(msg)
    return msg[:2] + struct.pack("!H", csum) + msg[4:]


_CRC32C_TABLE: list[int] = []


def crc32c(data: bytes) -> int:
    if not _CRC32C_TABLE:
        for n in range(256):
            c = n
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _CRC32C_TABLE.append(c)
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class Flow:
    """One L4 packet's identity, the unit `tailor connectivity` probes."""
    src: str
    dst: str
    protocol: str        # TCP, UDP, SCTP, ICMP
    sport: int = 0
    dport: int = 0

    def reply(self) -> "Flow":
        return Flow(self.dst, self.src, self.protocol, self.dport, self.sport)


def frame(flow: Flow, *, tcp_flags: int = TCP_SYN, src_mac: bytes = DEFAULT_SRC_MAC,
          dst_mac: bytes = DEFAULT_DST_MAC, payload: bytes = b"") -> bytes:
    """A whole Ethernet frame for a flow."""
    v6 = ipaddress.ip_address(flow.src).version == 6
    proto = flow.protocol.upper()
    if proto == "TCP":
        l4 = tcp(flow.src, flow.dst, flow.sport, flow.dport, flags=tcp_flags, payload=payload)
    elif proto == "UDP":
        l4 = udp(flow.src, flow.dst, flow.sport, flow.dport, payload)
    elif proto == "SCTP":
        l4 = sctp(flow.sport, flow.dport)
    elif proto in ("ICMP", "ICMPV6"):
        l4 = icmp_echo(v6=v6, src=flow.src, dst=flow.dst)
        proto = "ICMPV6" if v6 else "ICMP"
    else:
        raise ValueError(f"flow {flow}: protocol {flow.protocol!r} is not TCP, UDP, SCTP or ICMP")
    if v6:
        return ethernet(ipv6(flow.src, flow.dst, IPPROTO[proto], l4), ETH_P_IPV6,
                        src=src_mac, dst=dst_mac)
    return ethernet(ipv4(flow.src, flow.dst, IPPROTO[proto], l4), ETH_P_IP, src=src_mac, dst=dst_mac)



def flow_of(frame_: bytes) -> Flow:
    """The flow a frame (as `frame` makes them, no IPv4 options) carries:
    what a program that rewrote it left."""
    ethertype = int.from_bytes(frame_[12:14], "big")
    if ethertype == ETH_P_IPV6:
        src, dst, proto, l4 = frame_[22:38], frame_[38:54], frame_[20], 54
    elif ethertype == ETH_P_IP:
        src, dst, proto, l4 = frame_[26:30], frame_[30:34], frame_[23], 14 + (frame_[14] & 0xF) * 4
    else:
        raise ValueError(f"ethertype {ethertype:#06x} is neither IPv4 nor IPv6")
    name = IPPROTO_NAMES.get(proto, str(proto))
    sport, dport = (int.from_bytes(frame_[l4:l4 + 2], "big"), int.from_bytes(frame_[l4 + 2:l4 + 4], "big")) \
        if name in ("TCP", "UDP", "SCTP") else (0, 0)
    return Flow(str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), name, sport, dport)


def checksums_valid(frame_: bytes) -> bool:
    """Whether the frame's IPv4 header checksum and its TCP or UDP checksum
    are right (a UDP checksum of 0 over IPv4 means none)."""
    flow = flow_of(frame_)
    v6 = int.from_bytes(frame_[12:14], "big") == ETH_P_IPV6
    if v6:
        l4 = frame_[54:]
    else:
        ihl = (frame_[14] & 0xF) * 4
        if checksum(frame_[14:14 + ihl]) != 0:
            return False
        l4 = frame_[14 + ihl:14 + int.from_bytes(frame_[16:18], "big")]
    if flow.protocol not in ("TCP", "UDP"):
        return True
    if flow.protocol == "UDP" and not v6 and l4[6:8] == b"\0\0":
        return True
    pseudo = _pseudo_header(flow.src, flow.dst, IPPROTO[flow.protocol], len(l4))
    return checksum(pseudo + l4) == 0
