"""The two ends of a connection: a cluster pod at one of its addresses, or a
bare IP address (outside the cluster, or a pod's address given as text).

Called by policy.evaluate and policy.connectivity. Purely data-manipulative.

A connection between two pods uses one IP family. Unless the caller names one,
it is the family both pods have, IPv4 first; pods with no family in common
cannot talk. An IP address that belongs to a cluster pod is that pod, so its
labels count (a packet's source address is how the datapath knows the peer).
"""
from __future__ import annotations

import dataclasses
import ipaddress

from tailor.operator.cluster.objects import Pod
from tailor.operator.cluster.state import ClusterState


@dataclasses.dataclass(frozen=True)
class Endpoint:
    ip: str
    pod: Pod | None = None

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.ip).version

    def __str__(self) -> str:
        return self.pod.ref if self.pod is not None else self.ip


def common_family(a: Pod, b: Pod) -> int | None:
    """The family two pods would talk over: IPv4 if both have it, else IPv6, else None."""
    shared = set(a.families) & set(b.families)
    return 4 if 4 in shared else 6 if 6 in shared else None


def pair(state: ClusterState, src: Pod | str, dst: Pod | str,
         family: int | None = None) -> tuple[Endpoint, Endpoint]:
    """Both endpoints of a connection from `src` to `dst` (pods or IP text)."""
    src, family = _resolve(state, src, family)
    dst, family = _resolve(state, dst, family)
    if family is None:
        family = common_family(src, dst)
        if family is None:
            raise ValueError(f"{src.ref} and {dst.ref} have no IP family in common")
    return _endpoint(src, family), _endpoint(dst, family)


def _resolve(state: ClusterState, end: Pod | str, family: int | None):
    """(pod or address, family): IP text becomes the pod holding it, if any,
    and fixes the family."""
    if not isinstance(end, str):
        return end, family
    addr = ipaddress.ip_address(end)
    if family not in (None, addr.version):
        raise ValueError(f"{end} is not an IPv{family} address")
    return state.pod_by_ip(str(addr)) or addr, addr.version


def _endpoint(end, family: int) -> Endpoint:
    if isinstance(end, Pod):
        ip = end.ip(family)
        if ip is None:
            raise ValueError(f"{end.ref} has no IPv{family} address")
        return Endpoint(ip, end)
    return Endpoint(str(end))
