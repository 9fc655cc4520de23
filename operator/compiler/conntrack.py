"""Emits connection tracking for stateful replies. Called by
`compiler.program`, and only for pods isolated in some direction.

Kubernetes allows the reply to an allowed connection whatever the policy
says about the reverse direction. The node-wide maps ct4/ct6 remember
connections; each entry carries the direction of the program that allowed
it, so one pod's egress entry never lets traffic into another pod:

- a program whose direction is enforced first looks for the *reverse* key
  marked with the opposite direction: if this pod's other program allowed
  the connection this packet answers, the packet is a reply and passes;
- a program records every packet it allows (insert-if-absent) only when the
  pod's opposite direction is enforced, because only there will a reply
  need the entry.
"""
from __future__ import annotations

from tailor.datapath.ebpf.builder import Builder, R0, R1, R10
from tailor.datapath.ebpf.helper_ids import Helper
from tailor.datapath.ebpf.maps import BPF_NOEXIST
from tailor.datapath import layout
from tailor.operator.compiler.spec import EGRESS, INGRESS

OPPOSITE = {INGRESS: EGRESS, EGRESS: INGRESS}


def _copy(b: Builder, src: int, dst: int, nbytes: int) -> None:
    for off in range(0, nbytes, 8):
        size = min(8, nbytes - off)
        b.load(size, R1, R10, src + off)
        b.store(size, R10, dst + off, R1)


def reply_check(b: Builder, family: int, frame: layout.Frame, direction: str, reply: str) -> None:
    """Jump to `reply` when this packet answers a connection the pod's
    opposite-direction program allowed."""
    a = layout.addr_len(family)
    f = layout.key_fields(family)
    key, rkey = frame.key, frame.rkey
    with b.annotate("conntrack: is this a reply?"):
        _copy(b, key + f["saddr"], rkey + f["daddr"], a)
        _copy(b, key + f["daddr"], rkey + f["saddr"], a)
        b.load(2, R1, R10, key + f["sport"])
        b.store(2, R10, rkey + f["dport"], R1)
        b.load(2, R1, R10, key + f["dport"])
        b.store(2, R10, rkey + f["sport"], R1)
        b.load(1, R1, R10, key + f["proto"])
        b.store(1, R10, rkey + f["proto"], R1)
        b.store(1, R10, rkey + f["dir"], layout.CT_DIR[OPPOSITE[direction]])
        b.store(2, R10, rkey + f["dir"] + 1, 0)
        b.map_lookup(layout.CT_MAPS[family].name, rkey)
        b.jne(R0, 0, reply)


def record(b: Builder, family: int, frame: layout.Frame, direction: str, done: str) -> None:
    """Insert this packet's connection unless present, then go to `done`.
    An established connection costs one lookup: an insert attempt on an LRU
    map takes a free node first, even when the key exists. Clobbers r0-r5."""
    f = layout.key_fields(family)
    with b.annotate("conntrack: record for replies"):
        b.store(1, R10, frame.key + f["dir"], layout.CT_DIR[direction])
        b.store(2, R10, frame.key + f["dir"] + 1, 0)
        b.map_lookup(layout.CT_MAPS[family].name, frame.key)
        b.jne(R0, 0, done)
        b.call(Helper.ktime_get_ns)
        b.store(8, R10, frame.ct_value, R0)
        b.map_update(layout.CT_MAPS[family].name, frame.key, frame.ct_value, BPF_NOEXIST)
        b.jump(done)
