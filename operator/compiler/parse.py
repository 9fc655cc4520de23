"""Emits header parsing: Ethernet, then IPv4 and/or IPv6 — only the
families the pod has — down to the L4 ports. Called by `compiler.program`.

After `l3(...)` a family's code path holds (see layout's register plan):
r7 = protocol, r8 = destination port (host order, 0 without ports), and the
packet's connection key on the stack (addresses, ports, protocol).
Malformed packets jump to the drop label: tailor fails closed.
"""
from __future__ import annotations

from tailor.datapath.ebpf.builder import Builder, R1, R2, R3, R4, R5, R6, R7, R8, R10
from tailor.datapath import layout
from tailor.operator.compiler import labels

L4_WITH_PORTS = (6, 17, 132)       # TCP, UDP, SCTP: ports at offsets 0 and 2
IPPROTO_ICMPV6 = 58
ND_TYPES = (133, 134, 135, 136, 137)    # router/neighbour solicitation and advertisement


def ethertype(b: Builder, families: tuple[int, ...], *, arp: str, drop: str) -> None:
    """Dispatch on the ethertype: to each family's label, ARP to `arp`,
    anything else (another family, unknown types) to `drop`."""
    b.load(4, R2, R6, layout.SKB_DATA)
    b.load(4, R3, R6, layout.SKB_DATA_END)
    b.mov64(R4, R2)
    b.add64(R4, layout.ETH_HLEN)
    b.jgt(R4, R3, drop)
    b.load(2, R5, R2, 12)
    if 4 in families:
        b.jeq(R5, layout.ETH_P_IP_LE, labels.family(4))
        b.jeq(R5, layout.ETH_P_ARP_LE, arp)
    if 6 in families:
        b.jeq(R5, layout.ETH_P_IPV6_LE, labels.family(6))
    b.jump(drop)


def _ports(b: Builder, key: int, family: int, drop: str, done: str) -> None:
    """With r2 = data, r3 = data_end, r4 = start of L4 (a packet pointer):
    copy the ports into the key and set r8 = destination port, for protocols
    that have ports; other protocols keep ports 0."""
    f = layout.key_fields(family)
    for proto in L4_WITH_PORTS:
        b.jeq(R7, proto, labels.family_ports(family))
    b.jump(done)
    b.label(labels.family_ports(family))
    b.mov64(R5, R4)
    b.add64(R5, 4)
    b.jgt(R5, R3, drop)
    b.load(2, R1, R4, 0)
    b.store(2, R10, key + f["sport"], R1)
    b.load(2, R8, R4, 2)
    b.store(2, R10, key + f["dport"], R8)
    b.be(R8, 16)


def ipv4(b: Builder, key: int, drop: str, *, l4: bool = True) -> None:
    """With l4=False only the addresses are read: enough for anti-spoofing
    and forwarding in a pod that no policy isolates."""
    done = labels.family_parsed(4)
    f = layout.key_fields(4)
    b.label(labels.family(4))
    b.mov64(R4, R2)
    b.add64(R4, layout.ETH_HLEN + 20)
    b.jgt(R4, R3, drop)
    if l4:
        for off in range(key, key + 16, 8):
            b.store(8, R10, off, 0)
    b.load(4, R1, R2, 26)
    b.store(4, R10, key + f["saddr"], R1)
    b.load(4, R1, R2, 30)
    b.store(4, R10, key + f["daddr"], R1)
    if not l4:
        return
    b.load(1, R7, R2, 23)
    b.store(1, R10, key + f["proto"], R7)
    b.mov64(R8, 0)
    # A non-first fragment carries no L4 header: it keeps ports 0 and so
    # can match only port-less rules.
    b.load(2, R1, R2, 20)
    b.be(R1, 16)
    b.jset(R1, 0x1FFF, done)
    b.load(1, R5, R2, 14)
    b.and64(R5, 0xF)
    b.lsh64(R5, 2)
    b.jlt(R5, 20, drop)
    b.mov64(R4, R2)
    b.add64(R4, layout.ETH_HLEN)
    b.add64(R4, R5)
    _ports(b, key, 4, drop, done)
    b.label(done)


def ipv6(b: Builder, key: int, drop: str, *, nd_allow: str, l4: bool = True) -> None:
    """IPv6 without extension headers is parsed to its ports. A packet whose
    next header is an extension keeps ports 0 and protocol = that header,
    so it can match only port-less rules (fail closed for port rules).
    Neighbour discovery goes to `nd_allow`: a pod needs it to reach its
    gateway whatever its policy, as ARP for IPv4."""
    done = labels.family_parsed(6)
    f = layout.key_fields(6)
    b.label(labels.family(6))
    b.mov64(R4, R2)
    b.add64(R4, layout.ETH_HLEN + 40)
    b.jgt(R4, R3, drop)
    if not l4:
        for i in range(0, 32, 8):
            b.load(8, R1, R2, 22 + i)
            b.store(8, R10, key + i, R1)
        return
    for off in range(key, key + 40, 8):
        b.store(8, R10, off, 0)
    for i in range(0, 32, 8):
        b.load(8, R1, R2, 22 + i)
        b.store(8, R10, key + i, R1)
    b.load(1, R7, R2, 20)
    b.store(1, R10, key + f["proto"], R7)
    b.mov64(R8, 0)
    b.jne(R7, IPPROTO_ICMPV6, labels.family_l4(6))
    b.mov64(R5, R4)
    b.add64(R5, 1)
    b.jgt(R5, R3, drop)
    b.load(1, R1, R4, 0)
    b.jlt(R1, ND_TYPES[0], done)
    b.jle(R1, ND_TYPES[-1], nd_allow)
    b.jump(done)
    b.label(labels.family_l4(6))
    _ports(b, key, 6, drop, done)
    b.label(done)
