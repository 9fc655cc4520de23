"""Emits Service translation, the kube-proxy replacement for what pods
send. Called by `compiler.program`, only for pods whose spec asks for it
(ProgramSpec.services: the families, protocols and affinity the cluster's
Services use).

Egress (`translate`), before anything judges the packet: a connection's
first packet to a Service address (svc4/6) gets a backend — the one the
client's ClientIP affinity names if it has one that has not expired, else
a random one of the Service's backends — and the choice is remembered in
nat4/6 both ways: under the connection's key (dir SVC_OUT) the backend,
under the key the backend's replies will carry (dir SVC_BACK) the Service's
address. Later packets find the first entry. A packet to no Service costs
one lookup (svc4/6, first). The packet's destination is
rewritten (checksums updated) and so is the connection key on the stack:
egress policy, connection tracking and delivery all see the backend pod,
as NetworkPolicy semantics require.

Ingress (`untranslate`), first thing: a packet that answers a translated
connection gets the Service's address and port back as its source. The
key on the stack keeps the backend's: the reply is judged (and found by
connection tracking) as what it is, a packet from the backend pod.

A Service address without a ready backend is not translated: the packet
goes on as addressed, and the node rejects it at once (the agent's
nftables rules, or kube-proxy's). SCTP is translated in its address only:
its CRC32c covers the ports but not the addresses, and a CRC cannot be
patched; the operator hands the datapath only SCTP backends whose port is
the Service's (datapath/agent/services.py says why others are left out).
"""
from __future__ import annotations

from tailor.datapath.ebpf.builder import Builder, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10
from tailor.datapath.ebpf.helper_ids import Helper
from tailor.datapath.ebpf.maps import BPF_NOEXIST
from tailor.datapath import layout
from tailor.operator.compiler import labels
from tailor.operator.compiler.spec import Services

TCP, UDP, SCTP = 6, 17, 132
BPF_F_PSEUDO_HDR, BPF_F_MARK_MANGLED_0 = 1 << 4, 1 << 5
# Where the L4 checksum sits, for the protocols whose checksum covers the
# addresses (the pseudo header).
CSUM_OFFSET = {TCP: 16, UDP: 6}
NS_PER_SECOND = 1_000_000_000


def _copy(b: Builder, base_src, src: int, dst: int, nbytes: int) -> None:
    """Copy nbytes (a multiple of 2) from base_src+src to the stack at dst."""
    off = 0
    while off < nbytes:
        size = 4 if nbytes - off >= 4 else 2
        b.load(size, R1, base_src, src + off)
        b.store(size, R10, dst + off, R1)
        off += size


def _protocols(b: Builder, use: Services, go: str, skip: str) -> None:
    for proto in use.protocols:
        b.jeq(R7, proto, go)
    b.jump(skip)
    b.label(go)


def translate(b: Builder, family: int, frame: layout.Frame, use: Services, drop: str) -> None:
    """Rewrite a packet to a Service into a packet to one of its backends.
    Expects r7/r8 and the key from parsing; leaves them describing the
    backend. Clobbers r0-r5 and r9."""
    f, a = layout.key_fields(family), layout.addr_len(family)
    key, target = frame.key, frame.target + 8
    nat, svc = layout.NAT_MAPS[family].name, layout.SVC_MAPS[family].name
    backends, affinity = layout.BACKEND_MAPS[family].name, layout.AFFINITY_MAPS[family].name
    L = lambda part: labels.service(family, part)           # noqa: E731
    with b.annotate("Service: is the destination a Service address and port?"):
        _protocols(b, use, L("proto"), L("done"))
        _copy(b, R10, key + f["daddr"], frame.np_key, a)
        b.load(2, R1, R10, key + f["dport"])
        b.store(2, R10, frame.np_key + a, R1)
        b.store(1, R10, frame.np_key + a + 2, R7)
        b.store(1, R10, frame.np_key + a + 3, 0)
        b.map_lookup(svc, frame.np_key)
        b.jeq(R0, 0, L("done"))
        b.load(4, R9, R0, 4)
        # No ready backend: untranslated, for the node to reject at once.
        b.jeq(R9, 0, L("done"))
        b.load(4, R1, R0, 0)
        b.store(4, R10, frame.backend_key, R1)
        b.mov64(R8, 0)                                       # r8: remember an affinity choice?
        if use.affinity:
            b.load(4, R8, R0, 8)
            b.and64(R8, layout.SERVICE_AFFINITY)
            b.load(4, R1, R0, 12)
            b.mul64(R1, NS_PER_SECOND)
            b.store(8, R10, frame.ct_value, R1)
    with b.annotate("Service: a connection already translated?"):
        b.store(1, R10, key + f["dir"], layout.SVC_OUT)
        b.map_lookup(nat, key)
        b.jne(R0, 0, L("known"))
    if use.affinity:
        with b.annotate("Service: ClientIP affinity, if the client's choice has not expired"):
            b.jeq(R8, 0, L("pick"))
            b.load(4, R1, R10, frame.backend_key)
            b.store(4, R10, frame.np_key, R1)
            _copy(b, R10, key + f["saddr"], frame.np_key + 4, a)
            b.map_lookup(affinity, frame.np_key)
            b.jeq(R0, 0, L("pick"))
            b.load(8, R1, R0, 0)
            b.store(8, R10, frame.target, R1)
            _copy(b, R0, 8, target, a + 4)
            b.call(Helper.ktime_get_ns)
            b.load(8, R1, R10, frame.target)
            b.sub64(R0, R1)
            b.load(8, R1, R10, frame.ct_value)
            b.jgt(R0, R1, L("pick"))
            b.jump(L("remember"))
    with b.annotate("Service: a backend at random"):
        b.label(L("pick"))
        b.call(Helper.get_prandom_u32)
        b.mod32(R0, R9)
        b.store(4, R10, frame.backend_key + 4, R0)
        b.map_lookup(backends, frame.backend_key)
        b.jeq(R0, 0, L("lost"))
        _copy(b, R0, 0, target, a + 4)
    with b.annotate("Service: remember the choice, both ways"):
        b.label(L("remember"))
        if use.affinity:
            b.jeq(R8, 0, L("no_affinity"))
            b.call(Helper.ktime_get_ns)
            b.store(8, R10, frame.target, R0)
            b.map_update(affinity, frame.np_key, frame.target, 0)
            b.label(L("no_affinity"))
        # Two CPUs may see a connection's first packets at once: the first
        # choice made stands, and the other takes it.
        b.map_update(nat, key, target, BPF_NOEXIST)
        b.jeq(R0, 0, L("chosen"))
        b.map_lookup(nat, key)
        b.jeq(R0, 0, L("lost"))
        _copy(b, R0, 0, target, a + 4)
        b.jump(L("rewrite"))
        b.label(L("chosen"))
        # The reply's key: from the backend to the client, with the Service
        # address and port as its value.
        _copy(b, R10, target, frame.rkey + f["saddr"], a)
        _copy(b, R10, key + f["saddr"], frame.rkey + f["daddr"], a)
        b.load(2, R1, R10, target + a)
        b.store(2, R10, frame.rkey + f["sport"], R1)
        b.load(2, R1, R10, key + f["sport"])
        b.store(2, R10, frame.rkey + f["dport"], R1)
        b.store(1, R10, frame.rkey + f["proto"], R7)
        b.store(1, R10, frame.rkey + f["dir"], layout.SVC_BACK)
        b.store(2, R10, frame.rkey + f["dir"] + 1, 0)
        _copy(b, R10, key + f["daddr"], frame.np_key, a)
        b.load(2, R1, R10, key + f["dport"])
        b.store(2, R10, frame.np_key + a, R1)
        b.store(2, R10, frame.np_key + a + 2, 0)
        b.map_update(nat, frame.rkey, frame.np_key, 0)
        b.jump(L("rewrite"))
    b.label(L("known"))
    _copy(b, R0, 0, target, a + 4)
    b.label(L("rewrite"))
    _rewrite(b, family, frame, use, "daddr", "dport", drop)
    with b.annotate("Service: from here on the packet is to the backend"):
        _copy(b, R10, target, key + f["daddr"], a)
        b.load(2, R8, R10, target + a)
        b.store(2, R10, key + f["dport"], R8)
        b.be(R8, 16)
        b.jump(L("done"))
    b.label(L("lost"))            # the backends changed under us: as if none
    b.load(2, R8, R10, key + f["dport"])
    b.be(R8, 16)
    b.label(L("done"))
    b.store(1, R10, key + f["dir"], 0)


def untranslate(b: Builder, family: int, frame: layout.Frame, use: Services, drop: str) -> None:
    """A reply from a backend gets the Service's address and port as its
    source. The key on the stack is left as it was. Clobbers r0-r5 and r9."""
    f, a = layout.key_fields(family), layout.addr_len(family)
    key, target = frame.key, frame.target + 8
    L = lambda part: labels.service(family, part)           # noqa: E731
    with b.annotate("Service: a reply from a backend? give it the Service's address"):
        _protocols(b, use, L("proto"), L("done"))
        b.store(1, R10, key + f["dir"], layout.SVC_BACK)
        b.map_lookup(layout.NAT_MAPS[family].name, key)
        b.store(1, R10, key + f["dir"], 0)
        b.jeq(R0, 0, L("done"))
        _copy(b, R0, 0, target, a + 2)
    _rewrite(b, family, frame, use, "saddr", "sport", drop)
    b.label(L("done"))


def _rewrite(b: Builder, family: int, frame: layout.Frame, use: Services, addr: str, port: str,
             drop: str) -> None:
    """Write the address and port at frame.target+8 over the packet's
    `addr` and `port` (their current values are in the key), checksums
    updated. r9 = the L4 header's offset. Clobbers r0-r5."""
    f, a = layout.key_fields(family), layout.addr_len(family)
    old, new = frame.key + f[addr], frame.target + 8
    ip_field = {4: {"saddr": 26, "daddr": 30}, 6: {"saddr": 22, "daddr": 38}}[family][addr]
    L = lambda part: labels.service(family, f"{addr}_{part}")      # noqa: E731
    with b.annotate(f"Service: rewrite the {'destination' if addr == 'daddr' else 'source'}"):
        if family == 4:
            b.load(4, R2, R6, layout.SKB_DATA)
            b.load(4, R3, R6, layout.SKB_DATA_END)
            b.mov64(R4, R2)
            b.add64(R4, layout.ETH_HLEN + 20)
            b.jgt(R4, R3, drop)
            b.load(1, R9, R2, layout.ETH_HLEN)
            b.and64(R9, 0xF)
            b.lsh64(R9, 2)
            b.add64(R9, layout.ETH_HLEN)
        else:
            b.mov64(R9, layout.ETH_HLEN + 40)
        covered = [p for p in use.protocols if p in CSUM_OFFSET]
        if family == 4:
            b.mov64(R1, R6)
            b.mov64(R2, layout.ETH_HLEN + 10)
            b.load(4, R3, R10, old)
            b.load(4, R4, R10, new)
            b.mov64(R5, 4)
            b.call(Helper.l3_csum_replace)
            b.jne(R0, 0, drop)                  # never a half-rewritten packet
        # The L4 checksums cover the addresses through the pseudo header.
        for proto in covered:
            b.jne(R7, proto, L(f"csum{proto}"))
            mangled = BPF_F_MARK_MANGLED_0 if proto == UDP else 0
            if family == 4:
                _l4_csum(b, CSUM_OFFSET[proto], BPF_F_PSEUDO_HDR | mangled | 4, (4, old, new), drop)
            else:
                b.mov64(R1, R10)
                b.add64(R1, old)
                b.mov64(R2, a)
                b.mov64(R3, R10)
                b.add64(R3, new)
                b.mov64(R4, a)
                b.mov64(R5, 0)
                b.call(Helper.csum_diff)
                b.mov64(R4, R0)
                _l4_csum(b, CSUM_OFFSET[proto], BPF_F_PSEUDO_HDR | mangled, None, drop)
            # The port is in the L4 header, not the pseudo header.
            _l4_csum(b, CSUM_OFFSET[proto], mangled | 2, (2, frame.key + f[port], new + a), drop)
            b.label(L(f"csum{proto}"))
        _store_bytes(b, None, ip_field, new, a, drop)
        if covered:
            if SCTP in use.protocols:
                b.jeq(R7, SCTP, L("port_done"))     # SCTP backends keep the Service's port
            _store_bytes(b, R9, 2 if port == "dport" else 0, new + a, 2, drop)
            b.label(L("port_done"))


def _l4_csum(b: Builder, offset: int, flags: int, values: tuple[int, int, int] | None, drop: str) -> None:
    """bpf_l4_csum_replace at r9+offset: from and to loaded from the stack
    (values: (size, old offset, new offset)), or, with None, a csum_diff
    result already in r4."""
    b.mov64(R1, R6)
    b.mov64(R2, R9)
    b.add64(R2, offset)
    if values is None:
        b.mov64(R3, 0)
    else:
        size, old, new = values
        b.load(size, R3, R10, old)
        b.load(size, R4, R10, new)
    b.mov64(R5, flags)
    b.call(Helper.l4_csum_replace)
    b.jne(R0, 0, drop)


def _store_bytes(b: Builder, base, offset: int, src: int, n: int, drop: str) -> None:
    """bpf_skb_store_bytes of n stack bytes at src to (base register +)
    offset in the packet."""
    b.mov64(R1, R6)
    if base is None:
        b.mov64(R2, offset)
    else:
        b.mov64(R2, base)
        if offset:
            b.add64(R2, offset)
    b.mov64(R3, R10)
    b.add64(R3, src)
    b.mov64(R4, n)
    b.mov64(R5, 0)
    b.call(Helper.skb_store_bytes)
    b.jne(R0, 0, drop)
