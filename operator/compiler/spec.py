"""ProgramSpec: everything the compiler needs to know about one pod, and
nothing it does not. Pure data.

Built by `compiler.resolve` from the cluster state and the policy semantics;
read by `compiler.program` (the program's logic and constants).

A spec holds the *shape* (families, own addresses, tiers, rules, ports,
CIDRs, the ids of the peer groups and named ports its rules test), which
decides the program's bytes and hash. Who belongs to a group is not in it:
membership is node data (operator/groups.py, datapath/groups.py), so pods
that come and go among a pod's peers never change its program. The spec
carries the definitions of the groups it names, for whoever keeps their
members.
"""
from __future__ import annotations

import dataclasses
import enum

from tailor.datapath.groups import port_group
from tailor.datapath.layout import DIRECTIONS, EGRESS, INGRESS  # noqa: F401 - the compiler's names for them


class Action(enum.Enum):
    ALLOW = "Allow"
    DENY = "Deny"
    PASS = "Pass"


class TierKind(enum.Enum):
    ADMIN = "anp"          # AdminNetworkPolicy rules in priority order
    NETWORK = "np"         # NetworkPolicy allows; unmatched traffic is denied
    BASELINE = "banp"      # BaselineAdminNetworkPolicy rules in order


@dataclasses.dataclass(frozen=True, order=True)
class PortRange:
    """Destination ports lo..hi (inclusive) of one IP protocol number."""
    protocol: int
    lo: int
    hi: int

    def __post_init__(self):
        if not 1 <= self.lo <= self.hi <= 65535:
            raise ValueError(f"port range {self.lo}-{self.hi} is not within 1-65535")


@dataclasses.dataclass(frozen=True, order=True)
class NamedPort:
    """A named destination port whose number depends on the *peer* (egress
    rules: the destination pod's containerPort of that name): a node-wide
    named-port group."""
    protocol: int
    name: str

    @property
    def id(self) -> str:
        return port_group(self.protocol, self.name)


@dataclasses.dataclass(frozen=True, order=True)
class Cidr:
    """An ipBlock: the address is inside `cidr` and outside every `except`.
    Strings in canonical network form (host bits cleared)."""
    cidr: str
    excepts: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, order=True)
class Group:
    """A set of addresses chosen by selectors, by its node-wide id
    (operator/groups.py). Membership lives in the node's identity map."""
    id: str


@dataclasses.dataclass(frozen=True)
class AnyPeer:
    """Every address (a rule without from/to)."""


ANY_PEER = AnyPeer()
Peer = Cidr | Group | AnyPeer
Port = PortRange | NamedPort


@dataclasses.dataclass(frozen=True)
class Rule:
    """Matches when the remote address is one of `peers` and the packet is
    one of `ports` (None: every protocol and port). `source` annotates the
    emitted instructions: the policy and field that produced the rule."""
    action: Action
    peers: tuple[Peer, ...]
    ports: tuple[Port, ...] | None
    source: str


@dataclasses.dataclass(frozen=True)
class Tier:
    kind: TierKind
    rules: tuple[Rule, ...]


@dataclasses.dataclass(frozen=True)
class Direction:
    """One direction's policy. No tiers: nothing can deny in this direction,
    and the program holds no policy code for it."""
    tiers: tuple[Tier, ...] = ()

    @property
    def enforced(self) -> bool:
        return bool(self.tiers)

    @property
    def rules(self):
        return [r for t in self.tiers for r in t.rules]


@dataclasses.dataclass(frozen=True)
class Services:
    """What the pod's programs need of Service translation: the families
    that have a Service address, the protocols Services use, and whether
    any asks for ClientIP affinity. The Services themselves are node data
    (layout's svc and backends maps): adding one changes no program unless
    it brings a new family, protocol or affinity."""
    families: tuple[int, ...]
    protocols: tuple[int, ...]
    affinity: bool = False


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    pod: str                                 # "ns/name[Kind]"
    ipv4: str | None
    ipv6: str | None
    mac: bytes = b"\x00" * 6
    ifindex: int = 0                         # host-side interface; 0 until wired
    ingress: Direction = Direction()
    egress: Direction = Direction()
    services: Services | None = None         # None: no Service translation
    # What the group ids its rules name stand for ({id: operator.groups
    # definition}): not part of the shape, the ids are.
    definitions: dict = dataclasses.field(default_factory=dict, compare=False)

    def direction(self, name: str) -> Direction:
        return self.ingress if name == INGRESS else self.egress

    def group_ids(self) -> set[str]:
        """Every peer group and named port its rules test."""
        return {p.id for d in (self.ingress, self.egress) for r in d.rules
                for p in (*r.peers, *(r.ports or ())) if isinstance(p, (Group, NamedPort))}

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(f for f, a in ((4, self.ipv4), (6, self.ipv6)) if a)

    def translates(self, family: int) -> bool:
        """Whether the pod's programs translate Service addresses of `family`."""
        return self.services is not None and family in self.services.families and family in self.families
