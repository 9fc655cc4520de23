"""A node's peer groups: which bit of the node-wide identity maps is which
group, who belongs to each, and the map entries that follow. Pure: no
kernel, no I/O (the backends write the entries it returns into their maps).

Programs name groups, never bits: a group test is a load of one word of the
remote address's bitmap and a bit test, both marked with the group's id
(isa.Insn.group). `bind()` resolves them to this node's numbering, as a
loader resolves map names to fds. So a program is the same bytes, and has
the same hash, on every node, and a node numbers its groups as they come.

Two kinds of group, told apart by their id:
  - peer groups ("p:..."): addresses (pods chosen by selectors, nodes);
    entries in ids4/ids6: address -> bitmap of groups;
  - named ports ("n:<protocol>:<name>"): (address, port) pairs of the pods
    that expose that name; entries in ports4/ports6: (address, port,
    protocol) -> bitmap of names.

One peer group is the agent's own: HOST ("p:node"), the addresses of this
node itself. Programs of pods isolated for ingress test it to let their
node in (kubelet probes); the agent, not the program source, says who its
members are (set_local), so it is never dropped by a full resync and never
counted in the digest the program source compares.

Members arrive as changes (GroupChange): the first for a group, or a full
resync, replaces; later ones add and remove. An address's entry is
rewritten only when the set of groups it belongs to changes, so a new pod
costs one entry per node, whatever the number of rules that name it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress

from tailor.datapath import layout
from tailor.datapath.ebpf import isa

PEER, PORT = "p", "n"
HOST = f"{PEER}:node"
CAPACITY = {PEER: 32 * layout.GROUP_WORDS, PORT: 32 * layout.PORT_WORDS}
WORDS = {PEER: layout.GROUP_WORDS, PORT: layout.PORT_WORDS}


class GroupsFull(ValueError):
    """More groups of one kind than a node's identity maps have bits for."""


def kind_of(group: str) -> str:
    kind = group.split(":", 1)[0]
    if kind not in CAPACITY or ":" not in group:
        raise ValueError(f"group id {group!r} is neither a peer group (p:...) nor a named port (n:...)")
    return kind


def port_group(protocol: int, name: str) -> str:
    return f"{PORT}:{protocol}:{name}"


def _protocol(group: str) -> int:
    return int(group.split(":", 2)[1])


@dataclasses.dataclass(frozen=True)
class GroupChange:
    """Members of one group. Peer groups' members are addresses; named
    ports' are (address, port). `replace`: `add` is the whole membership;
    `drop`: the group is no longer wanted on this node. `seq`: when the
    program source computed it; a change older than the last one applied to
    its group is stale and ignored (0: always applied)."""
    group: str
    add: tuple = ()
    remove: tuple = ()
    replace: bool = False
    drop: bool = False
    seq: int = dataclasses.field(default=0, compare=False)   # metadata, not content


Writes = dict[str, dict[bytes, bytes | None]]      # map name -> key -> value (None: delete)


class NodeGroups:
    def __init__(self) -> None:
        self._bit: dict[str, int] = {}
        self._members: dict[str, frozenset] = {}
        self._wanted: set[str] = set()                   # sent by the program source, not dropped
        self._refs: dict[str, set[str]] = {}             # group -> pods whose programs test it
        self._pod_groups: dict[str, frozenset[str]] = {}
        self._of: dict[str, dict] = {PEER: {}, PORT: {}}  # member key -> groups holding it
        self._used: dict[str, set[int]] = {PEER: set(), PORT: set()}
        self._local: set[str] = set()                     # kept by the agent itself (HOST)
        self._seq: dict[str, int] = {}                    # group -> seq of the last change applied

    # -- numbering -----------------------------------------------------------------

    def bit(self, group: str) -> int:
        """The group's bit on this node, allocating the lowest free one."""
        if group in self._bit:
            return self._bit[group]
        kind = kind_of(group)
        used = self._used[kind]
        free = next((b for b in range(len(used) + 1) if b not in used), None)
        if free is None or free >= CAPACITY[kind]:
            what = "peer groups" if kind == PEER else "named ports"
            raise GroupsFull(f"this node already uses {CAPACITY[kind]} {what}, "
                             f"all its identity maps have bits for; {group} does not fit")
        self._bit[group] = free
        used.add(free)
        return free

    def _unassign(self, group: str) -> None:
        bit = self._bit.pop(group, None)
        if bit is not None:
            self._used[group[0]].discard(bit)

    def legend(self) -> dict[str, int]:
        return dict(self._bit)

    def claim(self, group: str, bit: int) -> bool:
        """A loaded program was resolved with `bit` for `group`: keep that
        numbering if the registry can (the group has that bit, or has none
        and the bit is free). False when it cannot: the program must be
        resolved again."""
        if group in self._bit:
            return self._bit[group] == bit
        kind = kind_of(group)
        if bit in self._used[kind] or not 0 <= bit < CAPACITY[kind]:
            return False
        self._bit[group] = bit
        self._used[kind].add(bit)
        return True

    def resolve(self, programs: dict[str, list[isa.Insn]]) -> tuple[dict[str, list[isa.Insn]], frozenset[str]]:
        """(the programs with every group test resolved to this node's bits,
        the groups they test). Raises GroupsFull, allocating nothing, when
        they do not fit. Call hold() once the programs are in force."""
        named = frozenset(i.group for insns in programs.values() for i in insns if i.group)
        new = [g for g in sorted(named) if g not in self._bit]
        try:
            bits = {g: self.bit(g) for g in named}
        except GroupsFull:
            for g in new:
                self._unassign(g)
            raise
        return ({d: [_resolve(i, bits[i.group]) if i.group else i for i in insns]
                 for d, insns in programs.items()}, named)

    def hold(self, pod: str, groups: frozenset[str]) -> None:
        """The pod's programs in force test these groups: they keep their
        bits while it does."""
        self._hold(pod, frozenset(groups))
        for g in list(self._bit):
            self._forget_if_unused(g)

    def release(self, pod: str) -> None:
        """The pod's programs are gone: its groups no longer hold bits for it."""
        self._hold(pod, frozenset())

    def digest(self) -> str:
        """Names the memberships (not the numbering): a program source that
        computes the same digest over what it sent knows the node has it."""
        return digest({g: self._members.get(g, frozenset()) for g in self._wanted})

    def _hold(self, pod: str, groups: frozenset[str]) -> None:
        old = self._pod_groups.pop(pod, frozenset())
        if groups:
            self._pod_groups[pod] = groups
        for g in groups - old:
            self._refs.setdefault(g, set()).add(pod)
        for g in old - groups:
            holders = self._refs.get(g, set())
            holders.discard(pod)
            if not holders:
                self._refs.pop(g, None)
                self._forget_if_unused(g)

    def _forget_if_unused(self, group: str) -> None:
        if group not in self._refs and group not in self._local and group not in self._wanted and not self._members.get(group):
            self._unassign(group)
            self._members.pop(group, None)

    # -- members ---------------------------------------------------------------------

    def members(self, group: str) -> frozenset:
        return self._members.get(group, frozenset())

    def groups(self) -> list[str]:
        """Every group the node knows members of (wanted or not yet dropped)."""
        return sorted(self._wanted)

    def update(self, changes, *, full: bool = False) -> Writes:
        """Apply membership changes; the map writes that make the identity
        maps agree. `full`: the changes are the whole truth, and groups they
        do not name are dropped. Raises ValueError for a malformed change
        (nothing applied) and GroupsFull when a new group does not fit."""
        changes = list(changes)
        for c in changes:
            kind_of(c.group)
            for member in c.add + c.remove:
                _member_key(c.group, member)
        for kind in CAPACITY:
            arriving = {c.group for c in changes if not c.drop and c.add and c.group[0] == kind
                        and c.group not in self._bit}
            if len(self._used[kind]) + len(arriving) > CAPACITY[kind]:
                raise GroupsFull(f"{len(arriving)} new {'peer groups' if kind == PEER else 'named ports'} "
                                 f"do not fit beside the {len(self._used[kind])} this node has "
                                 f"(at most {CAPACITY[kind]})")
        if full:
            named = {c.group for c in changes}
            changes += [GroupChange(g, drop=True) for g in sorted(self._wanted - named)]
        touched: dict[str, set] = {PEER: set(), PORT: set()}
        for c in changes:
            kind = kind_of(c.group)
            if c.seq:
                if c.seq < self._seq.get(c.group, 0):
                    continue                  # overtaken by a newer change on the way
                self._seq[c.group] = c.seq
            old = self._members.get(c.group, frozenset())
            if c.drop:
                new = frozenset()
                self._wanted.discard(c.group)
            else:
                self._wanted.add(c.group)
                new = frozenset(c.add) if c.replace or full else (old | set(c.add)) - set(c.remove)
            if new == old and not c.drop:
                continue
            self._members[c.group] = new
            held = self._of[kind]
            for member in old - new:
                key = _member_key(c.group, member)
                groups = held.get(key)
                if groups is not None:
                    groups.discard(c.group)
                    if not groups:
                        del held[key]
                touched[kind].add(key)
            if new - old:
                self.bit(c.group)
            for member in new - old:
                key = _member_key(c.group, member)
                held.setdefault(key, set()).add(c.group)
                touched[kind].add(key)
            if c.drop:
                self._members.pop(c.group, None)
                if c.group not in self._refs:
                    self._unassign(c.group)
        writes: Writes = {}
        for kind, keys in touched.items():
            for key in keys:
                name, packed = _map_key(kind, key)
                groups = self._of[kind].get(key)
                writes.setdefault(name, {})[packed] = (
                    layout.pack_bitmap((self._bit[g] for g in groups), WORDS[kind]) if groups else None)
        return writes

    def set_local(self, group: str, members) -> Writes:
        """The agent's own group (HOST) has exactly `members`; the map writes
        that follow. Such a group is not the program source's: a full update
        leaves it, and the digest does not count it."""
        self._local.add(group)
        writes = self.update([GroupChange(group, tuple(members), replace=True)])
        self._wanted.discard(group)
        return writes

    def contents(self) -> dict[str, dict[bytes, bytes]]:
        """Every entry the node's identity maps should hold now."""
        out: dict[str, dict[bytes, bytes]] = {m.name: {} for m in (*layout.IDS_MAPS.values(),
                                                                    *layout.PORTS_MAPS.values())}
        for kind, held in self._of.items():
            for key, groups in held.items():
                name, packed = _map_key(kind, key)
                out[name][packed] = layout.pack_bitmap((self._bit[g] for g in groups), WORDS[kind])
        return out

    # -- persistence -----------------------------------------------------------------

    def to_json(self) -> dict:
        """What a restarted agent needs besides its pinned maps: the
        numbering and which groups the program source wants here."""
        return {"bits": dict(sorted(self._bit.items())), "wanted": sorted(self._wanted)}

    @classmethod
    def restore(cls, saved: dict, contents: dict[str, dict[bytes, bytes]]) -> NodeGroups:
        """The registry as it was, from to_json() and the pinned identity
        maps' entries (the members are read back from the bitmaps)."""
        out = cls()
        out._bit = {str(g): int(b) for g, b in saved.get("bits", {}).items()}
        for g, b in out._bit.items():
            out._used[kind_of(g)].add(b)
        out._wanted = set(saved.get("wanted", ()))
        by_bit = {kind: {b: g for g, b in out._bit.items() if g.startswith(kind + ":")}
                  for kind in (PEER, PORT)}
        members: dict[str, set] = {}
        for family, spec in layout.IDS_MAPS.items():
            for packed, value in contents.get(spec.name, {}).items():
                address = str(ipaddress.ip_address(packed))
                for b in _bits(value):
                    if b in by_bit[PEER]:
                        members.setdefault(by_bit[PEER][b], set()).add(address)
        for family, spec in layout.PORTS_MAPS.items():
            for packed, value in contents.get(spec.name, {}).items():
                a = layout.addr_len(family)
                address = str(ipaddress.ip_address(packed[:a]))
                port = int.from_bytes(packed[a:a + 2], "big")
                for b in _bits(value):
                    if b in by_bit[PORT]:
                        members.setdefault(by_bit[PORT][b], set()).add((address, port))
        out.update([GroupChange(g, tuple(m), replace=True) for g, m in sorted(members.items())])
        out._wanted = set(saved.get("wanted", ()))
        return out


def digest(memberships: dict[str, frozenset]) -> str:
    """Of {group: members}: the same on both sides of the wire."""
    h = hashlib.sha256()
    for group in sorted(memberships):
        h.update(group.encode() + b"\0")
        for member in sorted(memberships[group]):
            h.update((member if isinstance(member, str) else f"{member[0]}#{member[1]}").encode() + b",")
        h.update(b"\n")
    return h.hexdigest()[:16]


def _resolve(insn: isa.Insn, bit: int) -> isa.Insn:
    if insn.code & 0x07 == isa.LDX:
        return dataclasses.replace(insn, off=insn.off + 4 * (bit // 32))
    return dataclasses.replace(insn, imm=1 << (bit % 32))


def _member_key(group: str, member):
    """Peer groups: the address; named ports: (address, port, protocol)."""
    if kind_of(group) == PEER:
        if not isinstance(member, str):
            raise ValueError(f"group {group}: member {member!r} is not an address")
        return str(ipaddress.ip_address(member))
    try:
        address, port = member
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"group {group}: member {member!r} is not (address, port)") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"group {group}: port {port} is not within 1-65535")
    return (str(ipaddress.ip_address(address)), port, _protocol(group))


def _map_key(kind: str, key) -> tuple[str, bytes]:
    if kind == PEER:
        return layout.IDS_MAPS[ipaddress.ip_address(key).version].name, layout.pack_addr(key)
    address, port, protocol = key
    return (layout.PORTS_MAPS[ipaddress.ip_address(address).version].name,
            layout.pack_named_port_key(address, port, protocol))


def _bits(value: bytes):
    for w in range(len(value) // 4):
        word = int.from_bytes(value[4 * w:4 * w + 4], "little")
        for b in range(32):
            if word >> b & 1:
                yield 32 * w + b
