"""The `struct __sk_buff` a tc (sched_cls) program sees, as BPF_PROG_TEST_RUN
builds it, and the rules for reading and writing it.

Used by vm.run (to build the context), state.py (ctx loads/stores go
through CtxAccess) and tests / the emulated datapath (SkbContext in and out).

Facts established on kernel 6.18 with BPF_PROG_TEST_RUN on sched_cls:
- the skb hangs off loopback unless ctx_in names another ifindex (> 1), so
  `ifindex` = 1; ctx_in ifindex of a missing device -> ENODEV;
- `protocol` is eth_type_trans()'s result as stored in skb->protocol, i.e.
  the ethertype in network byte order in the low 16 bits (IPv4 reads 0x0008);
  a type/length field < 0x600 gives ETH_P_802_3 (0x0001) when the payload
  starts ff ff, else ETH_P_802_2 (0x0004);
- `pkt_type` compares the destination MAC with the device's: loopback has
  address and broadcast address all zero, so dst 00:..:00 -> HOST (0),
  other multicast (ff:ff:ff:ff:ff:ff included) -> MULTICAST (2), unicast ->
  OTHERHOST (3);
- `len` = packet length; hash, queue_mapping, tc_index, vlan_*, napi_id,
  tstamp, gso_* = 0; `wire_len` = len when ctx_in or ctx_out is passed
  (the kernel then converts a zeroed ctx) and 0 with neither; packets
  shorter than 14 bytes, IPv4 without 20 and IPv6 without 40 header bytes
  after Ethernet -> EINVAL;
- ctx_in may only set mark, priority, ingress_ifindex, ifindex, cb[0..4],
  tstamp, wire_len (len <= wire_len <= 65536... else EINVAL), gso_segs,
  gso_size and hwtstamp; any other non-zero byte -> EINVAL. A shorter
  ctx_in is fine. ctx_out reports the same fields after the run, so
  queue_mapping / tc_index / tc_classid writes do not show in ctx_out.
- program access (the verifier): u32 fields may be read with size 1, 2 or 4
  at aligned offsets; data/data_end/data_meta only as 4-byte loads (they
  yield packet pointers); tstamp and hwtstamp only as 8-byte; cb[] with any
  aligned size up to 8. Writes: mark, priority, queue_mapping, tc_index,
  tc_classid (4 bytes only), cb[] (any aligned size), tstamp (8 bytes).
  queue_mapping, tc_index and tc_classid are u16 in the skb: writes keep the
  low 16 bits, and a queue_mapping write of >= 0xffff is ignored.
"""
from __future__ import annotations

import dataclasses
import struct

from .memory import Fault, MASK, PACK, UNPACK

SIZE = 192   # sizeof(struct __sk_buff) in the 6.x uapi

# name -> (offset, size) of the fields SkbContext carries
OFFSETS = {
    "len": 0, "pkt_type": 4, "mark": 8, "queue_mapping": 12, "protocol": 16,
    "vlan_present": 20, "vlan_tci": 24, "vlan_proto": 28, "priority": 32,
    "ingress_ifindex": 36, "ifindex": 40, "tc_index": 44, "cb": 48, "hash": 68,
    "tc_classid": 72, "data": 76, "data_end": 80, "napi_id": 84, "data_meta": 140,
    "tstamp": 152, "wire_len": 160, "gso_segs": 164, "sk": 168, "gso_size": 176,
    "tstamp_type": 180, "hwtstamp": 184,
}
_U32_FIELDS = ("len", "pkt_type", "mark", "queue_mapping", "protocol", "vlan_present",
               "vlan_tci", "vlan_proto", "priority", "ingress_ifindex", "ifindex",
               "tc_index", "hash", "tc_classid", "napi_id", "wire_len", "gso_segs",
               "gso_size")
_U64_FIELDS = ("tstamp", "hwtstamp")
# what ctx_in may set (and ctx_out reports)
CTX_IN_FIELDS = ("mark", "priority", "ingress_ifindex", "ifindex", "cb", "tstamp",
                 "wire_len", "gso_segs", "gso_size", "hwtstamp")

PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST = 0, 1, 2, 3
ETH_HLEN = 14
LOOPBACK_IFINDEX = 1


def _build_access_tables():
    """(offset, size) -> what a load/store there means. Built once; a ctx
    access is then one dict lookup."""
    loads: dict[tuple[int, int], str] = {}
    stores: dict[tuple[int, int], str] = {}
    for name in _U32_FIELDS:
        base = OFFSETS[name]
        for size in (1, 2, 4):
            for o in range(base, base + 4, size):
                loads[(o, size)] = "plain"
    for o in range(48, 68):
        for size in (1, 2, 4, 8):
            if o % size == 0 and o + size <= 68:
                loads[(o, size)] = "plain"
                stores[(o, size)] = "plain"
    for name in ("data", "data_end", "data_meta"):
        loads[(OFFSETS[name], 4)] = name
    for name in _U64_FIELDS:
        loads[(OFFSETS[name], 8)] = "plain"
    loads[(OFFSETS["tstamp_type"], 1)] = "plain"
    loads[(OFFSETS["sk"], 8)] = "sk"
    for name in ("mark", "priority"):
        stores[(OFFSETS[name], 4)] = "plain"
    stores[(OFFSETS["queue_mapping"], 4)] = "queue_mapping"
    stores[(OFFSETS["tc_index"], 4)] = "u16"
    stores[(OFFSETS["tc_classid"], 4)] = "u16"
    stores[(OFFSETS["tstamp"], 8)] = "plain"
    return loads, stores


LOADS, STORES = _build_access_tables()


@dataclasses.dataclass
class SkbContext:
    """The __sk_buff fields, as numbers (protocol in network byte order, as
    the program reads it). Pointer fields (data, data_end, data_meta, sk)
    are not kept: the VM makes them at run time."""
    len: int = 0
    pkt_type: int = 0
    mark: int = 0
    queue_mapping: int = 0
    protocol: int = 0
    vlan_present: int = 0
    vlan_tci: int = 0
    vlan_proto: int = 0
    priority: int = 0
    ingress_ifindex: int = 0
    ifindex: int = LOOPBACK_IFINDEX
    tc_index: int = 0
    cb: tuple = (0, 0, 0, 0, 0)
    hash: int = 0
    tc_classid: int = 0
    napi_id: int = 0
    tstamp: int = 0
    wire_len: int = 0
    gso_segs: int = 0
    gso_size: int = 0
    tstamp_type: int = 0
    hwtstamp: int = 0

    @classmethod
    def from_packet(cls, packet: bytes, *, mark: int = 0, priority: int = 0,
                    ifindex: int = LOOPBACK_IFINDEX, ingress_ifindex: int = 0,
                    cb=(0, 0, 0, 0, 0), tstamp: int = 0, wire_len: int | None = None,
                    gso_segs: int = 0, gso_size: int = 0, hwtstamp: int = 0,
                    dev_addr: bytes = bytes(6), dev_broadcast: bytes = bytes(6)
                    ) -> "SkbContext":
        """The skb BPF_PROG_TEST_RUN builds from `packet` and a ctx_in holding
        the given fields. wire_len None means "as the kernel fills a zero
        wire_len in ctx_in": the packet length. dev_addr/dev_broadcast are the
        device's (loopback: all zero) and decide pkt_type."""
        if len(packet) < ETH_HLEN:
            raise ValueError(f"packet of {len(packet)} bytes: test_run needs at least "
                             f"{ETH_HLEN} (EINVAL)")
        need = {b"\x08\x00": 20, b"\x86\xdd": 40}.get(bytes(packet[12:14]), 0)
        if len(packet) < ETH_HLEN + need:
            raise ValueError(f"{len(packet)}-byte packet: test_run needs the whole "
                             f"{need}-byte IP header after Ethernet (EINVAL)")
        cb = tuple(cb) + (0,) * (5 - len(cb))
        return cls(len=len(packet), pkt_type=pkt_type(packet, dev_addr, dev_broadcast),
                   protocol=eth_protocol(packet), mark=mark, priority=priority,
                   ifindex=ifindex or LOOPBACK_IFINDEX, ingress_ifindex=ingress_ifindex,
                   cb=cb, tstamp=tstamp,
                   wire_len=len(packet) if wire_len is None else wire_len,
                   gso_segs=gso_segs, gso_size=gso_size, hwtstamp=hwtstamp)

    # --- images ------------------------------------------------------------------

    def image(self) -> bytearray:
        """The full 192-byte __sk_buff as the program sees it (pointers 0)."""
        buf = bytearray(SIZE)
        for name in _U32_FIELDS:
            PACK[4](buf, OFFSETS[name], getattr(self, name) & 0xFFFFFFFF)
        for name in _U64_FIELDS:
            PACK[8](buf, OFFSETS[name], getattr(self, name) & 0xFFFFFFFFFFFFFFFF)
        struct.pack_into("<5I", buf, OFFSETS["cb"], *(c & 0xFFFFFFFF for c in self.cb))
        buf[OFFSETS["tstamp_type"]] = self.tstamp_type & 0xFF
        return buf

    @classmethod
    def from_image(cls, buf: bytes) -> "SkbContext":
        """Every field read back from a full image (the VM's ctx after a run)."""
        buf = bytes(buf).ljust(SIZE, b"\0")
        kw = {name: UNPACK[4](buf, OFFSETS[name])[0] for name in _U32_FIELDS}
        kw.update({name: UNPACK[8](buf, OFFSETS[name])[0] for name in _U64_FIELDS})
        kw["cb"] = struct.unpack_from("<5I", buf, OFFSETS["cb"])
        kw["tstamp_type"] = buf[OFFSETS["tstamp_type"]]
        return cls(**kw)

    def to_bytes(self) -> bytes:
        """The ctx_in image for BPF_PROG_TEST_RUN: only the fields the kernel
        accepts there, everything else zero (else EINVAL)."""
        full = self.image()
        out = bytearray(SIZE)
        for name in CTX_IN_FIELDS:
            o = OFFSETS[name]
            n = 20 if name == "cb" else 8 if name in _U64_FIELDS else 4
            out[o:o + n] = full[o:o + n]
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> "SkbContext":
        """A ctx_out image -> SkbContext. Only CTX_IN_FIELDS are meaningful
        there; the rest come back as their zero defaults."""
        full = cls.from_image(data)
        return cls(**{name: getattr(full, name) for name in CTX_IN_FIELDS})

    def ctx_out(self) -> "SkbContext":
        """The part of this context the kernel reports in ctx_out."""
        return SkbContext.from_bytes(self.to_bytes())


def eth_protocol(packet: bytes) -> int:
    """skb->protocol after eth_type_trans, as a u32 read of __sk_buff.protocol
    on a little-endian machine: the big-endian ethertype byte-swapped."""
    proto = (packet[12] << 8) | packet[13]
    if proto < 0x600:
        # 802.3 length field: raw IPX (payload ff ff) or 802.2 LLC
        proto = 0x0001 if packet[14:16] == b"\xff\xff" else 0x0004
    return ((proto & 0xFF) << 8) | (proto >> 8)


def pkt_type(packet: bytes, dev_addr: bytes, dev_broadcast: bytes) -> int:
    dst = bytes(packet[0:6])
    if dst == dev_addr:
        return PACKET_HOST
    if dst[0] & 1:
        return PACKET_BROADCAST if dst == dev_broadcast else PACKET_MULTICAST
    return PACKET_OTHERHOST


class CtxAccess:
    """The live context of one run: the image plus the packet pointers.
    memory.Memory calls ctx_load/ctx_store for the CTX region."""
    __slots__ = ("buf", "data", "data_end")

    def __init__(self, buf: bytearray):
        self.buf = buf
        self.data = 0
        self.data_end = 0

    def ctx_load(self, off: int, size: int) -> int:
        what = LOADS.get((off, size))
        if what is None:
            raise Fault(f"invalid bpf_context access off={off} size={size}")
        if what == "plain":
            return UNPACK[size](self.buf, off)[0]
        if what == "data" or what == "data_meta":
            return self.data
        if what == "data_end":
            return self.data_end
        raise Fault("__sk_buff->sk is not modelled by the VM")

    def ctx_store(self, off: int, size: int, value: int) -> None:
        what = STORES.get((off, size))
        if what is None:
            raise Fault(f"invalid bpf_context access off={off} size={size} (write)")
        if what == "queue_mapping":
            # the kernel stores a u16 and skips NO_QUEUE_MAPPING (0xffff) and above
            if value >= 0xFFFF:
                return
            value &= 0xFFFF
        elif what == "u16":
            value &= 0xFFFF
        PACK[size](self.buf, off, value & MASK[size])
