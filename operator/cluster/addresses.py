"""Pod addresses when the manifests give none: deterministic picks from
default pools.

Called by ClusterState.add_pod. A pod with `status.podIP`/`status.podIPs`
keeps those. Otherwise it gets addresses for the families it asks for with
the annotation `tailor.dev/ip-families` (on the pod, or on a workload's pod
template or the workload itself):

    tailor.dev/ip-families: IPv4          (the default when absent)
    tailor.dev/ip-families: IPv6          (single-stack IPv6)
    tailor.dev/ip-families: IPv4,IPv6     (dual stack; the order is the primary family first)

Allocation takes the lowest index n >= 1 such that 10.244.0.0/16 + n and
fd00:10:244::/64 + n (for the families asked) are both unused, so a dual-stack
pod's two addresses share their host part (10.244.0.7 and fd00:10:244::7).
The same manifests in the same order always give the same addresses.
Purely data-manipulative, no I/O.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Collection

from tailor.operator.errors import InvalidSpec

IPV4_POOL = ipaddress.ip_network("10.244.0.0/16")
IPV6_POOL = ipaddress.ip_network("fd00:10:244::/64")
FAMILIES_ANNOTATION = "tailor.dev/ip-families"
_FAMILY_NAMES = {"IPv4": 4, "IPv6": 6}
DEFAULT_FAMILIES = (4,)


def parse_families(value, path: str) -> tuple[int, ...]:
    """`IPv4`, `IPv6`, `IPv4,IPv6` or `IPv6,IPv4` -> (4,), (6,), (4, 6), (6, 4)."""
    if value is None:
        return DEFAULT_FAMILIES
    names = [n.strip() for n in str(value).split(",")]
    if not names or any(n not in _FAMILY_NAMES for n in names) or len(set(names)) != len(names):
        raise InvalidSpec(path, f"{value!r} is not a list of IP families: use IPv4, IPv6 or IPv4,IPv6")
    return tuple(_FAMILY_NAMES[n] for n in names)


def allocate(families: tuple[int, ...], used: Collection[str]) -> tuple[str, ...]:
    """Addresses for `families` (in that order) that are not in `used`."""
    pools = {4: IPV4_POOL, 6: IPV6_POOL}
    limit = IPV4_POOL.num_addresses - 1
    for n in range(1, limit):
        candidate = tuple(str(pools[f].network_address + n) for f in families)
        if not any(ip in used for ip in candidate):
            return candidate
    raise ValueError("the default pod address pool 10.244.0.0/16 is exhausted")


def parse_ips(values: list, path: str) -> tuple[str, ...]:
    """Validate status.podIPs entries and normalise their text."""
    parsed = []
    for i, text in enumerate(values):
        try:
            parsed.append(str(ipaddress.ip_address(text)))
        except ValueError:
            raise InvalidSpec(f"{path}[{i}]", f"{text!r} is not a valid IP address") from None
    versions = [ipaddress.ip_address(ip).version for ip in parsed]
    if len(set(versions)) != len(versions):
        raise InvalidSpec(path, "may hold at most one address per IP family")
    return tuple(parsed)
