"""Kernel helper function ids (enum bpf_func_id in uapi/linux/bpf.h) and the
tc action codes programs return. The one table of them: the builder, the
disassembler and the VM all name helpers from here."""
from __future__ import annotations

import enum


class Helper(enum.IntEnum):
    map_lookup_elem = 1
    map_update_elem = 2
    map_delete_elem = 3
    ktime_get_ns = 5
    get_prandom_u32 = 7
    get_smp_processor_id = 8
    skb_store_bytes = 9
    l3_csum_replace = 10
    l4_csum_replace = 11
    tail_call = 12
    redirect = 23
    skb_load_bytes = 26
    csum_diff = 28
    ktime_get_boot_ns = 125
    redirect_neigh = 152
    redirect_peer = 155


class TcAct(enum.IntEnum):
    """What a sched_cls program returns (include/uapi/linux/pkt_cls.h)."""
    UNSPEC = -1
    OK = 0
    RECLASSIFY = 1
    SHOT = 2
    PIPE = 3
    STOLEN = 4
    QUEUED = 5
    REPEAT = 6
    REDIRECT = 7
