"""Emits delivery and the footer. Called by `compiler.program` and
`compiler.generic`.

Same-node delivery: an allowed packet whose destination is a pod of this
node (node-wide map endpoints4/6) gets that pod's MAC as destination, the
pod's host-side interface MAC as source, REDIRECT_MARK in skb->mark, and is
redirected to the egress of that host-side interface — where the
destination's ingress program runs, so every packet into a pod meets that
pod's policy at exactly one place. Anything else returns TC_ACT_OK and the
node routes it (other nodes' pod CIDRs are routed via those nodes).

A redirect must never bypass a translation someone else made: when a pod of
this node reached the destination through the node (kube-proxy DNATed a
Service address to it), the destination's ingress program finds no mark and
records the pair (host_path_record); the destination's replies to that pod
then find the pair (hostpath4/6) and go back through the node, whose
conntrack undoes the DNAT, instead of being redirected.

The footer counts each outcome in the program's per-CPU `stats` map.
"""
from __future__ import annotations

from tailor.datapath.ebpf.builder import Builder, R0, R1, R2, R3, R4, R6, R9, R10
from tailor.datapath.ebpf.helper_ids import Helper, TcAct
from tailor.datapath import layout
from tailor.operator.compiler import labels


def count(b: Builder, frame_key: int, stat: int, where: str) -> None:
    """stats[stat] += 1 on this CPU (no atomics: per-CPU). Clobbers r0-r5."""
    skip = labels.stat_done(stat, where)
    b.store(4, R10, frame_key, stat)
    b.map_lookup(layout.STATS.name, frame_key)
    b.jeq(R0, 0, skip)
    b.load(8, R1, R0, 0)
    b.add64(R1, 1)
    b.store(8, R0, 0, R1)
    b.label(skip)


def deliver(b: Builder, family: int, frame: layout.Frame) -> None:
    """Redirect to a local destination pod, else leave the packet to the
    node's routing. Expects the connection key on the stack."""
    f = layout.key_fields(family)
    a = layout.addr_len(family)
    daddr = frame.key + f["daddr"]
    with b.annotate("deliver: a pod on this node? redirect to its interface"):
        b.map_lookup(layout.ENDPOINT_MAPS[family].name, daddr)
        b.jeq(R0, 0, labels.ALLOW)
        b.mov64(R9, R0)
    with b.annotate("deliver: unless the node forwarded this pair's other way (a translation to undo)"):
        _pair(b, frame.key + f["daddr"], frame.key + f["saddr"], frame.rkey, a)
        b.map_lookup(layout.HOSTPATH_MAPS[family].name, frame.rkey)
        b.jne(R0, 0, labels.ALLOW)
    with b.annotate("deliver: redirect"):
        b.load(4, R1, R6, layout.SKB_MARK)
        b.or32(R1, layout.REDIRECT_MARK)
        b.store(4, R6, layout.SKB_MARK, R1)
        count(b, frame.stat_key, layout.STAT_REDIRECTED, f"ipv{family}")
        b.load(4, R2, R6, layout.SKB_DATA)
        b.load(4, R3, R6, layout.SKB_DATA_END)
        b.mov64(R4, R2)
        b.add64(R4, layout.ETH_HLEN)
        b.jgt(R4, R3, labels.DROP)
        # ENDPOINT layout: ifindex 0-3, pod MAC 4-9, host-side MAC 10-15.
        b.load(4, R1, R9, 4)
        b.store(4, R2, 0, R1)
        b.load(2, R1, R9, 8)
        b.store(2, R2, 4, R1)
        b.load(2, R1, R9, 10)
        b.store(2, R2, 6, R1)
        b.load(4, R1, R9, 12)
        b.store(4, R2, 8, R1)
        b.load(4, R1, R9, 0)
        b.mov64(R2, 0)
        b.call(Helper.redirect)
        b.exit()


def _pair(b: Builder, first: int, second: int, out: int, a: int) -> None:
    """out = the address at `first`, then the one at `second` (a hostpath key)."""
    for i, src in enumerate((first, second)):
        for off in range(0, a, 4):
            b.load(4, R1, R10, src + off)
            b.store(4, R10, out + i * a + off, R1)


def host_path_record(b: Builder, family: int, frame: layout.Frame) -> None:
    """Ingress: a packet a pod program redirected carries REDIRECT_MARK
    (cleared here). One without it from a pod of this node came through the
    node: remember the pair, so the replies go back that way. Clobbers r0-r5."""
    f = layout.key_fields(family)
    a = layout.addr_len(family)
    marked, done = labels.host_path(family, "marked"), labels.host_path(family, "done")
    with b.annotate("host path: redirected by a pod program, or forwarded by the node?"):
        b.load(4, R1, R6, layout.SKB_MARK)
        b.jset(R1, layout.REDIRECT_MARK, marked)
        b.map_lookup(layout.ENDPOINT_MAPS[family].name, frame.key + f["saddr"])
        b.jeq(R0, 0, done)
        _pair(b, frame.key + f["saddr"], frame.key + f["daddr"], frame.rkey, a)
        b.store(4, R10, frame.ct_value, 1)
        b.map_update(layout.HOSTPATH_MAPS[family].name, frame.rkey, frame.ct_value, 0)
        b.jump(done)
        b.label(marked)
        b.and32(R1, ~layout.REDIRECT_MARK)              # a signed imm: every bit but the mark
        b.store(4, R6, layout.SKB_MARK, R1)
    b.label(done)


def footer(b: Builder, frame: layout.Frame) -> None:
    b.label(labels.ARP)
    b.label(labels.ALLOW)
    with b.annotate("allow"):
        count(b, frame.stat_key, layout.STAT_ALLOWED, "footer")
        b.ret(TcAct.OK)
    b.label(labels.DROP)
    with b.annotate("drop"):
        count(b, frame.stat_key, layout.STAT_DROPPED, "footer")
        b.ret(TcAct.SHOT)
