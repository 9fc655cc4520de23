"""The contents of a pod's own maps, from the membership half of its spec.
Called by the datapath (initial load and updates on peer churn), by
`tailor connectivity` and by tests. Pure.

Returns {direction: {map name: {key bytes: value bytes}}} in the layouts of
`datapath.layout`. When a peer joins or leaves a group, only these entries
change; the program and its hash stay the same. Only the pod's own families
appear: a dual-stack peer's IPv6 address means nothing to an IPv4-only pod,
whose programs have no IPv6 maps.
"""
from __future__ import annotations

import ipaddress

from tailor.datapath import layout
from tailor.operator.compiler.program import group_count
from tailor.operator.compiler.spec import DIRECTIONS, ProgramSpec


def entries(spec: ProgramSpec) -> dict[str, dict[str, dict[bytes, bytes]]]:
    out: dict[str, dict[str, dict[bytes, bytes]]] = {}
    for direction in DIRECTIONS:
        maps: dict[str, dict[bytes, bytes]] = {}
        words = layout.words_for(group_count(spec.direction(direction)))
        bits: dict[str, set[int]] = {}
        for members in spec.groups.get(direction, ()):
            for address in members.addresses:
                bits.setdefault(address, set()).add(members.index)
        for address, group_bits in sorted(bits.items()):
            family = ipaddress.ip_address(address).version
            if family not in spec.families:
                continue
            maps.setdefault(f"peers{family}", {})[layout.pack_addr(address)] = \
                layout.pack_bitmap(group_bits, words)
        slots: dict[bytes, set[int]] = {}
        families: dict[bytes, int] = {}
        for members in spec.named_ports.get(direction, ()):
            for address, port in members.endpoints:
                key = layout.pack_named_port_key(address, port, members.protocol)
                slots.setdefault(key, set()).add(members.slot)
                families[key] = ipaddress.ip_address(address).version
        for key, slot_bits in sorted(slots.items()):
            if families[key] not in spec.families:
                continue
            maps.setdefault(f"nports{families[key]}", {})[key] = layout.pack_bitmap(slot_bits, 1)
        out[direction] = maps
    return out
