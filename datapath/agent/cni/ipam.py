"""Host-local style address allocation over the node's pod CIDRs.

Called by handler.CniHandler (ADD allocates, DEL releases, GC collects,
STATUS asks for free space). State lives in one directory so an agent restart
keeps every reservation:

    <state_dir>/10.244.1.7              one file per allocated address, holding
    <state_dir>/fd00:10:244:1::7        "<containerID>\\n<ifname>\\n"
    <state_dir>/last_reserved.<subnet>  the last address handed out in that
                                        range; the next search starts after it,
                                        so a freed address is not reused at once
    <state_dir>/lock                    flock()ed around every change

The flock serialises allocations across threads and processes: each call
opens its own descriptor, and flock locks belong to the open file, so two
concurrent ADDs never get the same address. Creating an address file with
O_EXCL is a second guard.

A range set is a list of ranges of one address family; an attachment gets one
address from each range set (IPv4 and/or IPv6). Reserved in every range: the
network address, the IPv4 broadcast address and the gateway (the first
address of the subnet unless the range names one), which the node may use as
its own address in the pod CIDR.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import os
from collections.abc import Iterable, Iterator, Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# A /64 has more addresses than a status line can count.
UNCOUNTABLE = 1 << 32


class IpamError(Exception):
    """Allocation is impossible (no range configured, or none free). Ranges
    that don't parse raise ValueError instead."""


class Exhausted(IpamError):
    """No free address is left in a range set."""


@dataclasses.dataclass(frozen=True)
class Range:
    subnet: Network
    start: Address      # first allocatable address
    end: Address        # last allocatable address
    gateway: Address    # reserved, never handed out

    @classmethod
    def parse(cls, spec: dict | str) -> Range:
        """From a netconf range `{"subnet", "rangeStart"?, "rangeEnd"?, "gateway"?}`
        or a bare CIDR. Raises ValueError on anything else."""
        if isinstance(spec, str):
            spec = {"subnet": spec}
        subnet = ipaddress.ip_network(spec["subnet"], strict=True)
        if subnet.num_addresses < 4:
            raise ValueError(f"subnet {subnet} is too small for pods")
        last = subnet[-2] if subnet.version == 4 else subnet[-1]
        gateway = ipaddress.ip_address(spec.get("gateway") or subnet[1])
        start = ipaddress.ip_address(spec.get("rangeStart") or subnet[1])
        end = ipaddress.ip_address(spec.get("rangeEnd") or last)
        for name, addr in (("gateway", gateway), ("rangeStart", start), ("rangeEnd", end)):
            if addr not in subnet or addr == subnet.network_address or addr > last:
                raise ValueError(f"{name} {addr} is not a usable address of {subnet}")
        if start > end:
            raise ValueError(f"rangeStart {start} is after rangeEnd {end}")
        return cls(subnet, start, end, gateway)

    def __contains__(self, addr: Address) -> bool:
        return addr.version == self.subnet.version and self.start <= addr <= self.end

    def capacity(self) -> int:
        size = int(self.end) - int(self.start) + 1
        return size - (1 if self.gateway in self else 0)

    def interface(self, addr: Address) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(f"{addr}/{self.subnet.prefixlen}")


@dataclasses.dataclass(frozen=True)
class Allocation:
    address: Address
    container_id: str
    ifname: str
    range: Range | None = None   # known when just allocated

    @property
    def key(self) -> tuple[str, str]:
        return (self.container_id, self.ifname)


def parse_ranges(ipam_conf: dict | None) -> list[list[Range]]:
    """The netconf's `ipam.ranges` ([[{"subnet": ...}, ...], ...]) as range
    sets. Raises ValueError (the handler's code 7) when they don't parse, mix
    families inside a set, or two sets share a family."""
    rangesets = []
    for rs in (ipam_conf or {}).get("ranges", []):
        ranges = [Range.parse(r) for r in rs]
        if not ranges:
            raise ValueError("an ipam range set is empty")
        if len({r.subnet.version for r in ranges}) != 1:
            raise ValueError("a range set mixes IPv4 and IPv6")
        rangesets.append(ranges)
    families = [rs[0].subnet.version for rs in rangesets]
    if len(families) != len(set(families)):
        raise ValueError("two ipam range sets of the same address family")
    return rangesets


class Ipam:
    """Allocator over `rangesets` (one per address family) persisted in `state_dir`."""

    def __init__(self, state_dir: str | os.PathLike, rangesets: Sequence[Sequence[Range | str]] = ()):
        self.state_dir = os.fspath(state_dir)
        self.rangesets = [[r if isinstance(r, Range) else Range.parse(r) for r in rs] for rs in rangesets]
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)

    @classmethod
    def from_cidrs(cls, state_dir: str | os.PathLike, cidrs: Iterable[str]) -> Ipam:
        """The agent's flags: one CIDR per family, e.g. 10.244.1.0/24 and fd00:10:244:1::/64."""
        return cls(state_dir, [[Range.parse(c)] for c in cidrs])

    def set_cidrs(self, cidrs: Iterable[str]) -> None:
        """The node's pod CIDRs, learnt after start (from the node table):
        allocations already made stay where they are."""
        self.rangesets = [[Range.parse(c)] for c in cidrs]

    def with_ranges(self, rangesets: Sequence[Sequence[Range]]) -> Ipam:
        """The same state over other ranges (a netconf's own `ipam.ranges`)."""
        return Ipam(self.state_dir, rangesets)

    # -- changes ----------------------------------------------------------------

    def allocate(self, container_id: str, ifname: str) -> list[Allocation]:
        """One address per range set for (container_id, ifname). An attachment
        that already holds addresses gets them back (an ADD retried after a
        lost answer). Raises Exhausted, leaving nothing reserved."""
        if not self.rangesets:
            raise IpamError("no pod CIDR configured (agent flags or ipam.ranges)")
        with self._locked():
            existing = self._scan()   # once: it reads every address file
            held = sorted((a for a in existing if a.key == (container_id, ifname)),
                          key=lambda a: (a.address.version, a.address))
            if held:
                return [dataclasses.replace(a, range=self._range_of(a.address)) for a in held]
            taken = {a.address for a in existing}
            out: list[Allocation] = []
            try:
                for ranges in self.rangesets:
                    out.append(self._allocate_one(ranges, taken, container_id, ifname))
            except Exhausted:
                for a in out:
                    self._remove(a.address)
                raise
            return out

    def release(self, container_id: str, ifname: str) -> list[Allocation]:
        """Free what (container_id, ifname) holds; nothing held is fine."""
        with self._locked():
            gone = [a for a in self._scan() if a.key == (container_id, ifname)]
            for a in gone:
                self._remove(a.address)
            return gone

    def gc(self, valid: Iterable[tuple[str, str]]) -> list[Allocation]:
        """Free every allocation whose (containerID, ifname) is not in `valid`."""
        keep = set(valid)
        with self._locked():
            gone = [a for a in self._scan() if a.key not in keep]
            for a in gone:
                self._remove(a.address)
            return gone

    # -- queries ----------------------------------------------------------------

    def allocated(self) -> list[Allocation]:
        return sorted(self._scan(), key=lambda a: (a.address.version, a.address))

    def lookup(self, container_id: str, ifname: str) -> list[Allocation]:
        return [a for a in self.allocated() if a.key == (container_id, ifname)]

    def free(self) -> dict[str, int]:
        """Free addresses per range set (keyed by its first subnet); a huge
        range reports UNCOUNTABLE."""
        used = [a.address for a in self._scan()]
        out = {}
        for ranges in self.rangesets:
            capacity = sum(min(r.capacity(), UNCOUNTABLE) for r in ranges)
            taken = sum(1 for addr in used if any(addr in r for r in ranges))
            out[str(ranges[0].subnet)] = max(0, min(capacity, UNCOUNTABLE) - taken)
        return out

    # -- inside the lock ----------------------------------------------------------

    def _allocate_one(self, ranges: Sequence[Range], taken: set, container_id: str,
                      ifname: str) -> Allocation:
        pointer = self._pointer_path(ranges)
        last = self._read_pointer(pointer)
        for r, addr in self._candidates(ranges, last):
            if addr in taken or addr == r.gateway:
                continue
            try:
                fd = os.open(os.path.join(self.state_dir, str(addr)),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{container_id}\n{ifname}\n")
            _write_atomic(pointer, f"{addr}\n")
            taken.add(addr)
            return Allocation(addr, container_id, ifname, r)
        raise Exhausted(f"no free address in {', '.join(str(r.subnet) for r in ranges)}")

    @staticmethod
    def _candidates(ranges: Sequence[Range], last: Address | None) -> Iterator[tuple[Range, Address]]:
        """Every address of the range set once, starting after `last`."""
        begin = 0
        for i, r in enumerate(ranges):
            if last is not None and last in r:
                begin = i
                break
        order = list(ranges[begin:]) + list(ranges[:begin])
        first = order[0]
        start = first.start
        if last is not None and last in first and last < first.end:
            start = last + 1
        tail = range(int(start), int(first.end) + 1)
        head = range(int(first.start), int(start))
        make = ipaddress.IPv4Address if first.subnet.version == 4 else ipaddress.IPv6Address
        for n in tail:
            yield first, make(n)
        for r in order[1:]:
            for n in range(int(r.start), int(r.end) + 1):
                yield r, make(n)
        for n in head:
            yield first, make(n)

    def _range_of(self, addr: Address) -> Range | None:
        for ranges in self.rangesets:
            for r in ranges:
                if addr in r or addr in r.subnet:
                    return r
        return None

    def _scan(self) -> list[Allocation]:
        out = []
        for name in os.listdir(self.state_dir):
            try:
                addr = ipaddress.ip_address(name)
            except ValueError:
                continue   # lock, last_reserved.*
            try:
                with open(os.path.join(self.state_dir, name)) as f:
                    lines = f.read().split("\n")
            except FileNotFoundError:
                continue
            container_id = lines[0].strip() if lines else ""
            ifname = lines[1].strip() if len(lines) > 1 else ""
            out.append(Allocation(addr, container_id, ifname))
        return out

    def _remove(self, addr: Address) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.state_dir, str(addr)))

    def _pointer_path(self, ranges: Sequence[Range]) -> str:
        return os.path.join(self.state_dir, "last_reserved." + str(ranges[0].subnet).replace("/", "_"))

    @staticmethod
    def _read_pointer(path: str) -> Address | None:
        try:
            with open(path) as f:
                return ipaddress.ip_address(f.read().strip())
        except (FileNotFoundError, ValueError):
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.state_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)   # closing the descriptor drops the lock


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
