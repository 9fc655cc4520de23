"""ProgramSpec: everything the compiler needs to know about one pod, and
nothing it does not. Pure data.

Built by `compiler.resolve` from the cluster state and the policy semantics;
read by `compiler.program` (the program's logic and constants) and
`compiler.mapdata` (the contents of the pod's maps).

A spec splits into two parts on purpose:
- the *shape* (families, constants, tiers, rules, ports, CIDRs, peer-group
  ids) decides the program's bytes and hash;
- the *membership* (which addresses belong to each peer group, which peers
  expose which named port) is map contents. Pods that come and go among a
  pod's peers change membership only, so they update maps, never programs.
"""
from __future__ import annotations

import dataclasses
import enum

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
    rules: the destination pod's containerPort of that name). `slot` is its
    bit in the pod's named-port map values."""
    protocol: int
    name: str
    slot: int


@dataclasses.dataclass(frozen=True, order=True)
class Cidr:
    """An ipBlock: the address is inside `cidr` and outside every `except`.
    Strings in canonical network form (host bits cleared)."""
    cidr: str
    excepts: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, order=True)
class Group:
    """A set of pod addresses chosen by selectors; `index` is its bit in the
    pod's peer map values. Membership lives in the map, not the program."""
    index: int


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
class GroupMembers:
    """Membership of one peer group, per address family (map contents)."""
    index: int
    addresses: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class NamedPortMembers:
    """For a named-port slot: which peer addresses expose the name, and at
    which port number (map contents)."""
    slot: int
    protocol: int
    endpoints: tuple[tuple[str, int], ...]    # (address, port)


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    pod: str                                 # "ns/name[Kind]"
    ipv4: str | None
    ipv6: str | None
    mac: bytes = b"\x00" * 6
    ifindex: int = 0                         # host-side interface; 0 until wired
    ingress: Direction = Direction()
    egress: Direction = Direction()
    # Map contents: keyed by direction.
    groups: dict[str, tuple[GroupMembers, ...]] = dataclasses.field(default_factory=dict, compare=False)
    named_ports: dict[str, tuple[NamedPortMembers, ...]] = dataclasses.field(
        default_factory=dict, compare=False)

    def direction(self, name: str) -> Direction:
        return self.ingress if name == INGRESS else self.egress

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(f for f, a in ((4, self.ipv4), (6, self.ipv6)) if a)
