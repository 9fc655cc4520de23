"""The contract between compiled programs and the datapath that runs them:
the two directions, map names and specs, key and value layouts, the stats
slots, the stack frame, the __sk_buff offsets and the register plan. Pure.

It lives in the datapath (the hands) because both sides build to it: the
operator's compiler emits programs and packs map contents in these layouts
(`operator/compiler/{parse,rules,conntrack,forward,program,generic,mapdata}`),
and the agent's backends create the node-wide maps, fill the per-pod ones
and read the counters. The datapath never imports the compiler.

Register plan, for every program tailor emits:
    r6  the __sk_buff context, for the whole program
    r7  the IP protocol number (TCP 6, UDP 17, SCTP 132, ...)
    r8  the destination port in host order, 0 when the packet has none
    r9  pointer to the remote address's peer-group bitmap in the node's
        identity map, or 0 when the address is in no group
    r1-r5 scratch, clobbered by every helper call; r0 the result
"""
from __future__ import annotations

import dataclasses
import ipaddress
import struct

from tailor.datapath.ebpf.maps import F_NO_PREALLOC, MapSpec, MapType

# A pod has two programs: `ingress` judges what the pod receives (it runs on
# the tcx egress hook of the pod's host-side veth), `egress` what the pod
# sends (the veth's tcx ingress).
INGRESS = "ingress"
EGRESS = "egress"
DIRECTIONS = (INGRESS, EGRESS)


def hook(direction: str) -> str:
    """The host-side veth hook a pod's program sits on: into the pod is the
    veth's egress, out of the pod its ingress."""
    return EGRESS if direction == INGRESS else INGRESS


# __sk_buff field offsets (uapi/linux/bpf.h).
SKB_LEN, SKB_MARK, SKB_PROTOCOL, SKB_IFINDEX = 0, 8, 16, 40
SKB_DATA, SKB_DATA_END = 76, 80

ETH_HLEN = 14
ETH_P_IP_LE = 0x0008       # 0x0800 as a little-endian u16 load of network bytes
ETH_P_IPV6_LE = 0xDD86
ETH_P_ARP_LE = 0x0608

# Direction flags in connection-tracking keys: which program made the entry.
CT_DIR = {EGRESS: 1, INGRESS: 2}

# Node-wide connection tracking, shared by every pod's programs on a node.
CT4 = MapSpec("ct4", MapType.LRU_HASH, 16, 8, 65536)
CT6 = MapSpec("ct6", MapType.LRU_HASH, 40, 8, 65536)
CT_MAPS = {4: CT4, 6: CT6}

# Node-wide: the pods of this node, address -> where to deliver (same-node
# traffic is redirected straight to the destination's host-side interface,
# whose egress hook runs the destination's ingress program).
ENDPOINT = struct.Struct("<I6s6s2x")        # host ifindex, pod MAC, host-side MAC
ENDPOINTS4 = MapSpec("endpoints4", MapType.HASH, 4, ENDPOINT.size, 4096)
ENDPOINTS6 = MapSpec("endpoints6", MapType.HASH, 16, ENDPOINT.size, 4096)
ENDPOINT_MAPS = {4: ENDPOINTS4, 6: ENDPOINTS6}


def pack_endpoint(ifindex: int, pod_mac: bytes, host_mac: bytes) -> bytes:
    return ENDPOINT.pack(ifindex, pod_mac, host_mac)


# Per program: packet counters, one u64 per CPU and outcome.
STATS = MapSpec("stats", MapType.PERCPU_ARRAY, 4, 8, 4)
STAT_ALLOWED, STAT_DROPPED, STAT_REDIRECTED = 0, 1, 2
STAT_NAMES = ("allowed", "dropped", "redirected")

# Node-wide identity maps (the idea of Cilium's ipcache and Calico's ipsets):
# a peer's address -> the bitmap of the node's peer groups it belongs to,
# written once per node whatever the number of pods whose rules name it.
# Which bit is which group is the node's own numbering (datapath/groups.py);
# programs name groups and the loader resolves them, as it resolves maps.
GROUP_WORDS = 64                                 # 2,048 peer groups per node
PEER_CAPACITY = 65536
IDS4 = MapSpec("ids4", MapType.HASH, 4, 4 * GROUP_WORDS, PEER_CAPACITY, F_NO_PREALLOC)
IDS6 = MapSpec("ids6", MapType.HASH, 16, 4 * GROUP_WORDS, PEER_CAPACITY, F_NO_PREALLOC)
IDS_MAPS = {4: IDS4, 6: IDS6}

# Node-wide: (peer address, port, protocol) -> bitmap of the node's named
# ports (egress rules naming a port by name: its number is the peer's).
PORT_WORDS = 2                                   # 64 port names per node
PORTS4 = MapSpec("ports4", MapType.HASH, 8, 4 * PORT_WORDS, PEER_CAPACITY, F_NO_PREALLOC)
PORTS6 = MapSpec("ports6", MapType.HASH, 20, 4 * PORT_WORDS, PEER_CAPACITY, F_NO_PREALLOC)
PORTS_MAPS = {4: PORTS4, 6: PORTS6}

# Node-wide: pairs of this node's pods (source, destination, as the
# destination's ingress program saw them) whose packets the node forwarded
# rather than a pod program redirected: someone may have translated them
# (kube-proxy's DNAT to a Service backend), and only the node can undo that,
# so the replies go back through the node too, never straight across.
HOSTPATH4 = MapSpec("hostpath4", MapType.LRU_HASH, 8, 4, 16384)
HOSTPATH6 = MapSpec("hostpath6", MapType.LRU_HASH, 32, 4, 16384)
HOSTPATH_MAPS = {4: HOSTPATH4, 6: HOSTPATH6}
# skb->mark bit a pod program sets on what it redirects to another pod, and
# the destination's ingress program clears: a packet without it reached the
# pod through the node.
REDIRECT_MARK = 0x00080000

# --- Services (a kube-proxy replacement for what pods send) -------------------
# Node-wide and the same on every node. svc4/6: (ClusterIP, port, protocol)
# -> SERVICE (the agent's id for it, how many backends, flags, the
# ClientIP affinity timeout); backends4/6: (id, slot 0..count-1) -> TARGET
# (a backend's address and port). A pod's egress program picks a backend for
# a connection's first packet and remembers it in nat4/6 under the
# connection's key with dir SVC_OUT; the reverse, under the key the
# backend's reply carries with dir SVC_BACK, holds the Service's address, so
# the client's ingress program gives the reply the address the client asked.
SERVICE = struct.Struct("<IIII")                # id, backends, flags, affinity timeout (s)
SERVICE_AFFINITY = 1
SVC_OUT, SVC_BACK = 3, 4                         # dir values of nat keys (CT_DIR's are 1, 2)
BACKEND_KEY = struct.Struct("<II")               # service id, slot
SVC_CAPACITY, BACKEND_CAPACITY, NAT_CAPACITY = 16384, 65536, 65536
SVC4 = MapSpec("svc4", MapType.HASH, 8, SERVICE.size, SVC_CAPACITY, F_NO_PREALLOC)
SVC6 = MapSpec("svc6", MapType.HASH, 20, SERVICE.size, SVC_CAPACITY, F_NO_PREALLOC)
SVC_MAPS = {4: SVC4, 6: SVC6}
BACKENDS4 = MapSpec("backends4", MapType.HASH, BACKEND_KEY.size, 8, BACKEND_CAPACITY, F_NO_PREALLOC)
BACKENDS6 = MapSpec("backends6", MapType.HASH, BACKEND_KEY.size, 20, BACKEND_CAPACITY, F_NO_PREALLOC)
BACKEND_MAPS = {4: BACKENDS4, 6: BACKENDS6}
NAT4 = MapSpec("nat4", MapType.LRU_HASH, 16, 8, NAT_CAPACITY)
NAT6 = MapSpec("nat6", MapType.LRU_HASH, 40, 20, NAT_CAPACITY)
NAT_MAPS = {4: NAT4, 6: NAT6}
# ClientIP affinity: (service id, client address) -> u64 last use (ns), TARGET.
AFFINITY4 = MapSpec("affinity4", MapType.LRU_HASH, 8, 16, NAT_CAPACITY)
AFFINITY6 = MapSpec("affinity6", MapType.LRU_HASH, 20, 28, NAT_CAPACITY)
AFFINITY_MAPS = {4: AFFINITY4, 6: AFFINITY6}
SERVICE_MAPS = {m.name: m for m in (SVC4, SVC6, BACKENDS4, BACKENDS6)}

NODE_MAPS = {m.name: m for m in (CT4, CT6, ENDPOINTS4, ENDPOINTS6, IDS4, IDS6, PORTS4, PORTS6,
                                 HOSTPATH4, HOSTPATH6, SVC4, SVC6, BACKENDS4, BACKENDS6,
                                 NAT4, NAT6, AFFINITY4, AFFINITY6)}


# --- stack frame -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Frame:
    """Stack offsets (from r10). The connection key of the packet is built
    once; its address fields double as the peer-map keys.

    ct key, IPv4 (16 bytes): saddr 4, daddr 4, sport 2, dport 2 (network
    order), proto 1, dir 1, pad 2. IPv6 (40 bytes): saddr 16, daddr 16, then
    the same 8-byte tail."""
    key: int          # this packet's connection key
    rkey: int         # the reverse key a reply to it would carry
    np_key: int       # named-port lookup key
    np_bits: int      # PORT_WORDS u32s: the node's named ports the remote exposes here
    ct_value: int     # u64 written into new connection entries
    stat_key: int     # u32 index into the stats map
    target: int       # Services: u64 time, then TARGET (an affinity value)
    backend_key: int  # Services: BACKEND_KEY
    end: int          # the lowest offset the frame uses

    @staticmethod
    def plan() -> "Frame":
        # np_key doubles as the Service lookup key (the same address, port,
        # protocol layout); rkey as the reverse translation's key.
        return Frame(key=-40, rkey=-80, np_key=-104, np_bits=-112, ct_value=-120,
                     stat_key=-128, target=-160, backend_key=-168, end=-168)


def addr_len(family: int) -> int:
    return 4 if family == 4 else 16


def key_fields(family: int) -> dict[str, int]:
    """Offsets within a connection key."""
    a = addr_len(family)
    return {"saddr": 0, "daddr": a, "sport": 2 * a, "dport": 2 * a + 2,
            "proto": 2 * a + 4, "dir": 2 * a + 5}


# --- packing map contents ---------------------------------------------------
def pack_addr(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def pack_bitmap(bits, words: int) -> bytes:
    out = [0] * words
    for b in bits:
        out[b // 32] |= 1 << (b % 32)
    return struct.pack(f"<{words}I", *out)


def pack_named_port_key(address: str, port: int, protocol: int) -> bytes:
    return pack_addr(address) + struct.pack("!HBx", port, protocol)


def pack_service_key(address: str, port: int, protocol: int) -> bytes:
    return pack_named_port_key(address, port, protocol)


def pack_service(sid: int, backends: int, affinity_seconds: int = 0) -> bytes:
    return SERVICE.pack(sid, backends, SERVICE_AFFINITY if affinity_seconds else 0, affinity_seconds)


def pack_target(address: str, port: int) -> bytes:
    """A backend (or, in a reverse entry, a Service) address and port."""
    return pack_addr(address) + struct.pack("!Hxx", port)


def unpack_target(family: int, value: bytes) -> tuple[str, int]:
    a = addr_len(family)
    return str(ipaddress.ip_address(value[:a])), struct.unpack_from("!H", value, a)[0]


def pack_ct_key(family: int, saddr: str, daddr: str, sport: int, dport: int, proto: int,
                direction: str) -> bytes:
    return (pack_addr(saddr) + pack_addr(daddr)
            + struct.pack("!HHBBxx", sport, dport, proto, CT_DIR[direction]))


def unpack_ct_key(family: int, key: bytes) -> tuple:
    a = addr_len(family)
    sport, dport, proto, d = struct.unpack_from("!HHBB", key, 2 * a)
    direction = {v: k for k, v in CT_DIR.items()}.get(d, "?")
    return (str(ipaddress.ip_address(key[:a])), str(ipaddress.ip_address(key[a:2 * a])),
            sport, dport, proto, direction)
