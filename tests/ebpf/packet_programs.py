"""Hand-written packet programs for the differential tests: parsers, packet
rewrites with checksum helpers, and map users (hash counters, LPM lookups,
LRU connection tracking). Each is a function of a few parameters, so
hypothesis can make many distinct programs of each shape.

Register plan in all of them: r6 = context, r7/r8/r9 parse results that must
survive helper calls (r1-r5 are clobbered by every call).
"""
from __future__ import annotations

import ipaddress
import struct

from tailor.datapath import packets as pk
from tailor.datapath.ebpf.builder import Builder, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10
from tailor.datapath.ebpf.helper_ids import Helper, TcAct
from tailor.datapath.ebpf.maps import BPF_NOEXIST, F_NO_PREALLOC, MapSpec, MapType

SKB_DATA, SKB_DATA_END, SKB_MARK = 76, 80, 8


def _load_data(b: Builder) -> None:
    """r2 = data, r3 = data_end (re-done after helpers that move the packet)."""
    b.load(4, R2, R6, SKB_DATA)
    b.load(4, R3, R6, SKB_DATA_END)


def _parse_l4(b: Builder, fail: str) -> None:
    """Leaves r7 = IP protocol, r8 = L4 source port, r9 = L4 destination port
    (host order), or jumps to `fail` for anything not IPv4/IPv6 with 4 bytes
    of L4 header. Handles IPv4 options through the IHL field."""
    _load_data(b)
    b.mov64(R4, R2)
    b.add64(R4, 14)
    b.jgt(R4, R3, fail)
    b.load(2, R5, R2, 12)
    b.jeq(R5, 0x0008, "v4")            # 0x0800 read as a little-endian u16
    b.jeq(R5, 0xDD86, "v6")
    b.jump(fail)
    b.label("v4")
    b.mov64(R4, R2)
    b.add64(R4, 34)
    b.jgt(R4, R3, fail)
    b.load(1, R7, R2, 23)
    b.load(1, R5, R2, 14)
    b.and64(R5, 0xF)
    b.lsh64(R5, 2)
    b.mov64(R4, R2)
    b.add64(R4, 14)
    b.add64(R4, R5)
    b.mov64(R5, R4)
    b.add64(R5, 4)
    b.jgt(R5, R3, fail)
    b.load(2, R8, R4, 0)
    b.load(2, R9, R4, 2)
    b.jump("l4")
    b.label("v6")
    b.mov64(R4, R2)
    b.add64(R4, 58)
    b.jgt(R4, R3, fail)
    b.load(1, R7, R2, 20)
    b.load(2, R8, R2, 54)
    b.load(2, R9, R2, 56)
    b.label("l4")
    b.be(R8, 16)
    b.be(R9, 16)


def port_filter(ports: list[int], protocol: int) -> tuple[list, list[MapSpec]]:
    """Allow `protocol` to the listed destination ports (one compare per
    port, as the compiler inlines small rule sets); count every parsed packet
    in a hash map keyed by (protocol << 16 | dport)."""
    b = Builder()
    b.mov64(R6, R1)
    _parse_l4(b, "pass")
    b.mov64(R0, TcAct.SHOT)
    b.store(8, R10, -16, R0)              # verdict slot, survives the helper calls
    b.jne(R7, protocol, "count")
    for port in ports:
        b.jeq(R9, port, "allow")
    b.jump("count")
    b.label("allow")
    b.store(8, R10, -16, TcAct.OK)
    b.label("count")
    b.mov64(R1, R7)
    b.lsh64(R1, 16)
    b.or64(R1, R9)
    b.store(4, R10, -4, R1)
    b.map_lookup("hits", -4)
    b.jeq(R0, 0, "new")
    b.mov64(R1, 1)
    b.atomic(8, "add", R0, 0, R1)
    b.jump("done")
    b.label("new")
    b.store(8, R10, -24, 1)
    b.map_update("hits", -4, -24)
    b.label("done")
    b.load(8, R0, R10, -16)
    b.exit()
    b.label("pass")
    b.ret(TcAct.OK)
    return b.assemble(), [MapSpec("hits", MapType.HASH, 4, 8, 64)]


def rewrite(ifindex: int, flags: int, mark: int, peer: bool) -> tuple[list, list[MapSpec]]:
    """Swap the MAC addresses, decrement an IPv4 TTL fixing the checksum with
    l3_csum_replace, set the mark, then redirect (the return value is what
    bpf_redirect / bpf_redirect_peer return)."""
    b = Builder()
    b.mov64(R6, R1)
    _load_data(b)
    b.mov64(R4, R2)
    b.add64(R4, 34)
    b.jgt(R4, R3, "short")
    b.load(4, R4, R2, 0)                  # swap dst and src MAC, 4 + 2 bytes each
    b.load(2, R5, R2, 4)
    b.load(4, R7, R2, 6)
    b.load(2, R8, R2, 10)
    b.store(4, R2, 0, R7)
    b.store(2, R2, 4, R8)
    b.store(4, R2, 6, R4)
    b.store(2, R2, 10, R5)
    b.load(2, R5, R2, 12)
    b.jne(R5, 0x0008, "redirect")
    b.load(2, R7, R2, 22)                 # TTL and protocol, as one 16-bit word
    b.mov64(R8, R7)
    b.add64(R8, -1)                       # TTL is the low byte in memory order
    b.and64(R8, 0xFFFF)
    b.store(2, R2, 22, R8)
    b.mov64(R1, R6)
    b.mov64(R2, 24)                       # IPv4 checksum offset
    b.mov64(R3, R7)
    b.mov64(R4, R8)
    b.mov64(R5, 2)
    b.call(Helper.l3_csum_replace)
    b.store(4, R6, SKB_MARK, R0)          # the helper's return value, via the mark
    b.label("redirect")
    b.mov64(R1, mark)
    b.load(4, R2, R6, SKB_MARK)
    b.add32(R1, R2)
    b.store(4, R6, SKB_MARK, R1)
    b.mov64(R1, ifindex)
    b.mov64(R2, flags)
    b.call(Helper.redirect_peer if peer else Helper.redirect)
    b.exit()
    b.label("short")
    b.ret(TcAct.SHOT)
    return b.assemble(), []


def copy_bytes(src_off: int, dst_off: int, length: int, csum_seed: int) -> tuple[list, list[MapSpec]]:
    """skb_load_bytes into the stack, skb_store_bytes back elsewhere, then
    csum_diff over the copied bytes; returns the helpers' results folded
    together so a difference in any of them shows."""
    b = Builder()
    b.mov64(R6, R1)
    for off in range(-32, 0, 8):
        b.store(8, R10, off, 0)
    b.mov64(R1, R6)
    b.mov64(R2, src_off)
    b.mov64(R3, R10)
    b.add64(R3, -32)
    b.mov64(R4, length)
    b.call(Helper.skb_load_bytes)
    b.mov64(R7, R0)
    b.mov64(R1, R6)
    b.mov64(R2, dst_off)
    b.mov64(R3, R10)
    b.add64(R3, -32)
    b.mov64(R4, length)
    b.mov64(R5, 0)
    b.call(Helper.skb_store_bytes)
    b.lsh64(R7, 8)
    b.xor64(R7, R0)
    b.mov64(R1, 0)
    b.mov64(R2, 0)
    b.mov64(R3, R10)
    b.add64(R3, -32)
    b.mov64(R4, 32 if length > 16 else 16)
    b.mov64(R5, csum_seed)
    b.call(Helper.csum_diff)
    b.lsh64(R7, 16)
    b.xor64(R0, R7)
    b.exit()
    return b.assemble(), []


LPM_KEY = struct.Struct("<I4s")


def lpm_lookup(prefixes: dict[tuple[str, int], int]) -> tuple[list, list[MapSpec], dict]:
    """Look the IPv4 source address up in an LPM trie; return the value
    stored for the longest matching prefix, or 99 when none matches."""
    b = Builder()
    b.mov64(R6, R1)
    _load_data(b)
    b.mov64(R4, R2)
    b.add64(R4, 34)
    b.jgt(R4, R3, "none")
    b.load(2, R5, R2, 12)
    b.jne(R5, 0x0008, "none")
    b.load(4, R5, R2, 26)
    b.store(4, R10, -8, 32)
    b.store(4, R10, -4, R5)
    b.map_lookup("routes", -8)
    b.jeq(R0, 0, "none")
    b.load(4, R0, R0, 0)
    b.exit()
    b.label("none")
    b.ret(99)
    entries = {LPM_KEY.pack(plen, ipaddress.IPv4Address(addr).packed): struct.pack("<I", v)
               for (addr, plen), v in prefixes.items()}
    spec = MapSpec("routes", MapType.LPM_TRIE, 8, 4, 64, F_NO_PREALLOC)
    return b.assemble(), [spec], {"routes": entries}


def conntrack(syn_only: bool) -> tuple[list, list[MapSpec]]:
    """A miniature connection tracker: key (proto, sport, dport) in an LRU
    hash; a miss inserts (only for TCP SYN when syn_only), a hit bumps the
    entry's packet count with an atomic fetch-add and returns the old count."""
    b = Builder()
    b.mov64(R6, R1)
    _parse_l4(b, "other")
    b.store(8, R10, -8, 0)
    b.store(1, R10, -8, R7)
    b.store(2, R10, -6, R8)
    b.store(2, R10, -4, R9)
    b.map_lookup("ct", -8)
    b.jeq(R0, 0, "miss")
    b.mov64(R1, 1)
    b.atomic(8, "add", R0, 0, R1, fetch=True)
    b.mov64(R0, R1)
    b.add64(R0, 100)
    b.exit()
    b.label("miss")
    if syn_only:
        b.jne(R7, 6, "other")
        _load_data(b)
        b.mov64(R4, R2)
        b.add64(R4, 48)
        b.jgt(R4, R3, "other")
        b.load(1, R5, R2, 47)             # TCP flags, IPv4 without options
        b.jset(R5, pk.TCP_SYN, "insert")
        b.ret(1)
        b.label("insert")
    b.store(8, R10, -16, 1)
    b.map_update("ct", -8, -16, BPF_NOEXIST)
    b.exit()                              # the helper's result: 0, or -EEXIST
    b.label("other")
    b.ret(2)
    return b.assemble(), [MapSpec("ct", MapType.LRU_HASH, 8, 8, 1024)]


def packet_set() -> list[bytes]:
    """Frames every program runs on: each family and protocol, options,
    VLAN, ARP, and frames cut short at every header."""
    f4 = pk.Flow("10.0.1.5", "10.0.2.7", "TCP", 40000, 80)
    frames = [
        pk.frame(f4),
        pk.frame(f4, tcp_flags=pk.TCP_ACK),
        pk.frame(pk.Flow("10.0.1.5", "10.0.2.7", "TCP", 40000, 81)),
        pk.frame(pk.Flow("10.0.1.5", "10.0.2.7", "UDP", 5353, 53)),
        pk.frame(pk.Flow("10.0.1.5", "10.0.2.7", "UDP", 5353, 80)),
        pk.frame(pk.Flow("192.168.7.1", "10.0.2.7", "SCTP", 7, 80)),
        pk.frame(pk.Flow("10.9.9.9", "10.0.2.7", "ICMP")),
        pk.frame(pk.Flow("fd00::1", "fd00::2", "TCP", 40001, 80)),
        pk.frame(pk.Flow("fd00::1", "fd00::2", "UDP", 40001, 81)),
        pk.frame(pk.Flow("fd00::1", "fd00::2", "ICMP")),
        pk.ethernet(b"\x00\x01\x08\x00\x06\x04\x00\x01" + bytes(20), pk.ETH_P_ARP),
        pk.ethernet(pk.ipv4("10.0.1.5", "10.0.2.7", 6, pk.tcp("10.0.1.5", "10.0.2.7", 1, 80)),
                    pk.ETH_P_IP, vlan=7),
    ]
    # IPv4 with one option word (IHL 6): the port sits 4 bytes further on.
    opt = bytearray(pk.ipv4("10.0.1.5", "10.0.2.7", 17, pk.udp("10.0.1.5", "10.0.2.7", 9, 80)))
    opt = bytes([0x46]) + opt[1:20] + b"\x01\x01\x01\x00" + opt[20:]
    frames.append(pk.ethernet(opt, pk.ETH_P_IP))
    # Cut short after each header. test_run refuses an IPv4 or IPv6 frame
    # whose IP header itself is incomplete, so the cuts start there.
    v4, v6 = frames[0], frames[7]
    frames += [v4[:34], v4[:36], v6[:54], v6[:56], pk.ethernet(b"", pk.ETH_P_ARP)]
    return frames
