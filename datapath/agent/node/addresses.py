"""This node's own addresses: the members of the HOST group, which the
programs of ingress-isolated pods let in (a pod cannot block its node).

Called by the daemon at start when `--node-ip` names none. Reads the
network namespace the agent runs in (the node's, as a hostNetwork pod):
every address of global scope on any interface. Pods' host-side veths
carry no address, loopback and link-local addresses are never a source the
node reaches a pod from, so what is left is what the kernel picks from.
"""
from __future__ import annotations

import ipaddress

RT_SCOPE_UNIVERSE = 0


def discover() -> tuple[str, ...]:
    from pyroute2 import IPRoute

    found = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            if msg["scope"] != RT_SCOPE_UNIVERSE:
                continue
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if text:
                found.append(str(ipaddress.ip_address(text)))
    return tuple(dict.fromkeys(found))


def parse(texts) -> tuple[str, ...]:
    """`--node-ip` values, checked: raises ValueError naming the bad one."""
    out = []
    for t in texts:
        try:
            out.append(str(ipaddress.ip_address(t)))
        except ValueError:
            raise ValueError(f"--node-ip {t!r} is not an IP address") from None
    return tuple(out)
