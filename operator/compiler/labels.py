"""Label names for emitted programs, made in one place so that no two
emitters can collide on an ad-hoc string. Called by the emitters."""
from __future__ import annotations

ALLOW = "allow"
DROP = "drop"
ARP = "arp"


def family(f: int) -> str:
    return f"ipv{f}"


def family_ports(f: int) -> str:
    return f"ipv{f}_ports"


def family_l4(f: int) -> str:
    return f"ipv{f}_l4"


def family_parsed(f: int) -> str:
    return f"ipv{f}_parsed"


def family_allow(f: int) -> str:
    """Allowed by policy: connection tracking records it, then allow."""
    return f"ipv{f}_allow"


def family_reply(f: int) -> str:
    return f"ipv{f}_reply"


def policy(f: int) -> str:
    return f"ipv{f}_policy"


def tier(f: int, index: int) -> str:
    return f"ipv{f}_tier{index}"


def rule(f: int, tier_index: int, rule_index: int, part: str) -> str:
    """part: 'ports' (peers matched), 'next' (the following rule)."""
    return f"ipv{f}_t{tier_index}_r{rule_index}_{part}"


def alternative(f: int, tier_index: int, rule_index: int, kind: str, index: int) -> str:
    return f"ipv{f}_t{tier_index}_r{rule_index}_{kind}{index}"


def host_path(f: int, part: str) -> str:
    return f"v{f}_host_path_{part}"


def not_node(f: int) -> str:
    return f"v{f}_not_node"


def spoof_ok(f: int) -> str:
    return f"ipv{f}_source_ok"


def lookup_found(f: int, what: str) -> str:
    return f"ipv{f}_{what}_found"


def lookup_done(f: int, what: str) -> str:
    return f"ipv{f}_{what}_done"


def generic(f: int, part: str) -> str:
    return f"generic{f}_{part}"


def family_forward(f: int) -> str:
    """Allowed in the egress direction: deliver (redirect or route)."""
    return f"ipv{f}_forward"


def stat_done(stat: int, where: str) -> str:
    return f"stat{stat}_{where}_done"


def service(f: int, part: str) -> str:
    return f"v{f}_service_{part}"
