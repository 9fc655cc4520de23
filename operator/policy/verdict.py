"""Verdicts: what the evaluator decided and which tier, policy and rule decided it.

Built by policy.evaluate; read by tests, the CLI's explanations and the
compiler's source annotations. Purely data.
"""
from __future__ import annotations

import dataclasses

INGRESS = "ingress"
EGRESS = "egress"

# Tiers, in evaluation order, then the two outcomes no policy decides.
ADMIN = "AdminNetworkPolicy"
NETWORK = "NetworkPolicy"
BASELINE = "BaselineAdminNetworkPolicy"
DEFAULT = "default"      # no tier had an opinion: Kubernetes allows
LOOPBACK = "loopback"    # a pod talking to itself never leaves the pod
NODE = "node"            # from the pod's own node (kubelet probes): always allowed


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One direction's decision. `policy` is `ns/name` for a NetworkPolicy or
    the name of an (B)ANP; `rule` is the rule's field path (`spec.ingress[0]`),
    followed by its name for ANP rules that have one."""
    allowed: bool
    direction: str
    tier: str
    policy: str | None = None
    rule: str | None = None
    reason: str = ""

    def __str__(self) -> str:
        word = "allowed" if self.allowed else "denied"
        where = " ".join(x for x in (self.tier, self.policy, self.rule) if x)
        return f"{self.direction} {word} by {where}" + (f": {self.reason}" if self.reason else "")


@dataclasses.dataclass(frozen=True)
class ConnectionVerdict:
    """A connection is allowed iff its source may send it (egress) and its
    destination may receive it (ingress). A side that is not a cluster pod has
    no policy of its own and its verdict is None. Replies to an allowed
    connection are allowed: the evaluator judges connections, not packets."""
    allowed: bool
    egress: Verdict | None
    ingress: Verdict | None

    @property
    def deciding(self) -> Verdict | None:
        """The denying verdict (egress first), or the ingress one if allowed."""
        for v in (self.egress, self.ingress):
            if v is not None and not v.allowed:
                return v
        return self.ingress or self.egress

    def __str__(self) -> str:
        parts = [str(v) for v in (self.egress, self.ingress) if v is not None]
        return ("allowed" if self.allowed else "denied") + (f" ({'; '.join(parts)})" if parts else "")
