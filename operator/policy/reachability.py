"""Which connections the policies allow, as exact destination-port interval sets.

Called by `tailor connectivity --datapath model`, by tests, and as the oracle
the emulated and kernel datapaths are compared with. Purely
data-manipulative.

The verdict for a (source, destination, protocol) is constant between the
port boundaries the policies imply: each numeric port, endPort or portRange
(its start and end + 1) and each port the destination pod declares (where
named ports resolve). So the answer is computed by evaluating one port per
interval between boundaries, never by walking 65535 ports.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from tailor.operator.cluster.objects import Pod
from tailor.operator.cluster.ports import MAX_PORT, MIN_PORT, PROTOCOLS, PortMatch
from tailor.operator.cluster.state import ClusterState
from tailor.operator.policy import endpoints, evaluate

Ranges = list[tuple[int, int]]
# (source pod, destination pod, protocol, port) -> allowed? A datapath that
# answers by running its programs plugs in here instead of the model.
Judge = Callable[[Pod, Pod, str, int], bool]


def connectivity(state: ClusterState, judge: Judge | None = None) -> list[dict]:
    """For every ordered pair of distinct pods and each protocol, the allowed
    destination ports; pairs with nothing allowed are left out. Entries follow
    the JSON contract: {"src": "ns/name[Kind]", "dst": ..., "protocol": "TCP",
    "ports": "1-79,81-65535"}, sorted by src, dst, protocol order. `judge`
    decides each probed port (default: the model)."""
    bounds = {protocol: boundaries(state, protocol) for protocol in PROTOCOLS}
    found = []
    pods = state.sorted_pods()
    for src in pods:
        for dst in pods:
            if src is dst or endpoints.common_family(src, dst) is None:
                continue
            for protocol in PROTOCOLS:
                ranges = allowed_ports(state, src, dst, protocol, _boundaries=bounds[protocol],
                                       judge=judge)
                if ranges:
                    found.append({"src": src.ref, "dst": dst.ref, "protocol": protocol,
                                  "ports": format_ranges(ranges)})
    return found


def allowed_ports(state: ClusterState, src: Pod | str, dst: Pod | str, protocol: str,
                  family: int | None = None, _boundaries: set[int] | None = None,
                  judge: Judge | None = None) -> Ranges:
    """The destination ports, as sorted disjoint inclusive ranges, on which a
    `protocol` connection from `src` to `dst` is allowed."""
    src_end, dst_end = endpoints.pair(state, src, dst, family)
    cuts = set(_boundaries if _boundaries is not None else boundaries(state, protocol))
    if dst_end.pod is not None:
        for cp in dst_end.pod.ports:
            if cp.protocol == protocol:
                cuts.update((cp.port, cp.port + 1))
    starts = sorted({MIN_PORT} | {c for c in cuts if MIN_PORT < c <= MAX_PORT})
    ranges: Ranges = []
    for i, start in enumerate(starts):
        end = starts[i + 1] - 1 if i + 1 < len(starts) else MAX_PORT
        if judge is not None:
            allowed = judge(src_end.pod, dst_end.pod, protocol, start)
        else:
            allowed = evaluate.judge(state, src_end, dst_end, protocol, start).allowed
        if allowed:
            if ranges and ranges[-1][1] == start - 1:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
    return ranges


def boundaries(state: ClusterState, protocol: str) -> set[int]:
    """Every port where a numeric port match of any policy starts or stops
    (end + 1) for `protocol`. Named ports are the destination's business."""
    cuts: set[int] = set()
    for match in _port_matches(state):
        if match.name is None and match.protocol == protocol:
            cuts.update((match.start, match.end + 1))
    return cuts


def _port_matches(state: ClusterState) -> Iterable[PortMatch]:
    for policy in state.network_policies.values():
        for rule in policy.ingress + policy.egress:
            yield from rule.ports
    for policy in state.cluster_wide_policies():
        for rule in policy.ingress + policy.egress:
            yield from rule.ports or ()


def ranges_of(ports) -> Ranges:
    """Ports -> the ranges they make: [80, 81, 443] -> [(80, 81), (443, 443)]."""
    out: list[tuple[int, int]] = []
    for p in sorted(set(ports)):
        if out and out[-1][1] == p - 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def format_ranges(ranges: Ranges) -> str:
    """[(1, 79), (81, 65535)] -> "1-79,81-65535"; a single port prints alone."""
    return ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def parse_ranges(text: str) -> Ranges:
    """The inverse of format_ranges ("" is the empty set)."""
    ranges: Ranges = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        ranges.append((int(lo), int(hi or lo)))
    return ranges


def contains(ranges: Ranges, port: int) -> bool:
    return any(lo <= port <= hi for lo, hi in ranges)


__all__ = ["connectivity", "allowed_ports", "boundaries", "format_ranges", "parse_ranges", "contains"]
