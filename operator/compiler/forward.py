"""Emits delivery and the footer. Called by `compiler.program` and
`compiler.generic`.

Same-node delivery: an allowed packet whose destination is a pod of this
node (node-wide map endpoints4/6) gets that pod's MAC as destination, the
pod's host-side interface MAC as source, and is redirected to the egress of
that host-side interface — where the destination's ingress program runs,
so every packet into a pod meets that pod's policy at exactly one place.
Anything else returns TC_ACT_OK and the node routes it (other nodes' pod
CIDRs are routed via those nodes).

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
    daddr = frame.key + layout.key_fields(family)["daddr"]
    with b.annotate("deliver: a pod on this node? redirect to its interface"):
        b.map_lookup(layout.ENDPOINT_MAPS[family].name, daddr)
        b.jeq(R0, 0, labels.ALLOW)
        b.mov64(R9, R0)
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
