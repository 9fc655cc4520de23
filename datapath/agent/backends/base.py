"""The interface both agent backends implement, and the values they share.

Called by the agent core (agent/core.py), which owns the pods' programs and
endpoints and hands each attach to a backend; implemented by backends/kernel/
(bpf() through the eBPF toolkit, state pinned on bpffs) and backends/emulated.py
(the userspace VM). The two implementations never import each other; what
they share lives here: the data classes, the errors, counters() and trace()
over a few hooks each backend fills in, and the map helpers.

A pod is keyed by "namespace/name"; its uid tells a re-created pod from its
predecessor. A backend holds at most one attachment per key.
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import enum
import ipaddress
import struct
import threading
from collections.abc import Callable

from tailor.datapath import groups as G
from tailor.datapath import services as S
from tailor.datapath import packets as pk
from tailor.datapath import trace
from tailor.datapath.ebpf.errors import KernelError
from tailor.datapath.ebpf.helper_ids import TcAct
from tailor.datapath import layout

# Scratch connection tracking for traces: a trace makes at most a few entries.
SCRATCH_CT_ENTRIES = 64
# What a trace starts empty (it is a new connection): connection tracking,
# Service translations, ClientIP affinity.
FRESH_MAPS = {m.name for m in (*layout.CT_MAPS.values(), *layout.NAT_MAPS.values(),
                               *layout.AFFINITY_MAPS.values())}


class BackendError(Exception):
    """A backend could not do what was asked; the message names the pod."""


class AttachFailed(BackendError):
    """A pod's new programs were refused (the verifier's reason is in the
    message). Whatever was in force before stays in force."""


class UnknownPod(BackendError):
    """No attachment for that pod on this node."""


class State(enum.Enum):
    PENDING = "Pending"     # program known, pod not (yet) wired on this node
    LOADED = "Loaded"
    FAILED = "Failed"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A wired pod interface: what a backend needs to attach and to deliver
    same-node traffic to the pod."""
    container_id: str
    ifname: str                   # inside the pod
    netns: str
    host_ifname: str
    host_ifindex: int
    host_mac: bytes
    pod_mac: bytes
    addresses: tuple[str, ...]    # bare addresses, no prefix length

    @classmethod
    def of(cls, wired) -> Endpoint:
        """From any object with the same attribute names (the CNI side's
        wiring.Endpoint carries MACs as text and addresses as interfaces)."""
        return cls(container_id=wired.container_id, ifname=wired.ifname, netns=wired.netns,
                   host_ifname=wired.host_ifname, host_ifindex=int(wired.host_ifindex),
                   host_mac=mac_bytes(wired.host_mac), pod_mac=mac_bytes(wired.pod_mac),
                   addresses=tuple(bare_address(a) for a in wired.addresses))

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "host_mac": self.host_mac.hex(":"),
                "pod_mac": self.pod_mac.hex(":"), "addresses": list(self.addresses)}

    @classmethod
    def from_json(cls, data: dict) -> Endpoint:
        return cls(**{**data, "host_mac": mac_bytes(data["host_mac"]),
                      "pod_mac": mac_bytes(data["pod_mac"]),
                      "addresses": tuple(data["addresses"])})


def mac_bytes(mac) -> bytes:
    """b'\\x02...' or '02:00:...' -> 6 bytes."""
    if isinstance(mac, (bytes, bytearray)):
        out = bytes(mac)
    else:
        out = bytes.fromhex(str(mac).replace(":", "").replace("-", ""))
    if len(out) != 6:
        raise ValueError(f"MAC address {mac!r} is not 6 bytes")
    return out


def bare_address(address) -> str:
    """'10.0.0.1', '10.0.0.1/32' or an ip_interface -> '10.0.0.1'."""
    return str(ipaddress.ip_interface(str(address)).ip)


@dataclasses.dataclass(frozen=True)
class LoadInfo:
    program_id: int
    verified_insns: int
    attach: str               # e.g. "tcx/egress ifindex 7 (tl3f2a9c1d0e4)"
    hash: str
    instructions: int


@dataclasses.dataclass(frozen=True)
class PodState:
    namespace: str
    name: str
    uid: str
    state: State
    message: str = ""
    hash: str = ""
    features: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    interface: str = ""       # host-side interface
    ingress: LoadInfo | None = None
    egress: LoadInfo | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Adopted:
    """A pod a backend found in force when it started (kernel: pinned)."""
    state: PodState
    endpoint: Endpoint
    received: object          # wire.Received, or None when it could not be read back


@dataclasses.dataclass(frozen=True)
class Counters:
    """Packets per outcome, summed over CPUs: {direction: (allowed, dropped, redirected)}."""
    ingress: tuple[int, int, int]
    egress: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class TraceStep:
    pod: str
    direction: str
    retval: int

    @property
    def verdict(self) -> str:
        if self.retval == TcAct.REDIRECT:
            return "redirect"
        return "pass" if self.retval in trace.PASSING else "drop"


@dataclasses.dataclass(frozen=True)
class TraceResult:
    allowed: bool
    steps: tuple[TraceStep, ...]
    translated: tuple[str, int] | None = None    # (address, port) a Service was translated to


class Backend(abc.ABC):
    """One node's datapath. Implementations are called under the core's
    lock, one call at a time, except counters() and trace() which may run
    beside each other. counters() and trace() are written here once, over
    the hooks at the end (_own_maps, _endpoints, _scratch)."""
    name: str

    def __init__(self) -> None:
        # counters() and trace() run outside the core's lock: this one keeps
        # them, and every call of the backend's own, one at a time.
        self._lock = threading.RLock()
        # The node's peer groups: numbering, members, and who tests them.
        self.groups = G.NodeGroups()
        # The cluster's Services as this node translates them; None until
        # the first SetServices since this process started.
        self.services: S.ServiceTable | None = None

    @abc.abstractmethod
    def start(self) -> list[Adopted]:
        """Create (or adopt) the node-wide state; return the pods found in
        force, after reconciling (pods whose interface vanished are removed)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Release this process's hold on the datapath. The kernel backend's
        pinned state stays in force."""

    @abc.abstractmethod
    def attach(self, endpoint: Endpoint, received) -> tuple[PodState, bool]:
        """Put `received` (wire.Received) on `endpoint`. Returns (state,
        changed): changed is False when the same uid and hash are in force.
        Raises AttachFailed with the reason; the old program stays in force."""

    @abc.abstractmethod
    def update_maps(self, key: str, maps: dict[str, dict[str, dict[bytes, bytes]]]) -> int:
        """Replace the contents of the pod's named maps ({direction: {map:
        {key: value}}}) in place. Returns how many entries changed."""

    @abc.abstractmethod
    def detach(self, key: str) -> bool:
        """Remove everything of the pod's attachment. False if there was none."""

    @abc.abstractmethod
    def pods(self) -> list[PodState]:
        """Every attached pod."""

    def update_groups(self, changes, *, full: bool = False) -> int:
        """Change the members of node-wide groups (GroupChange) and write the
        identity maps to match. Returns how many entries changed. Raises
        BackendError naming the problem; then nothing changed."""
        with self._lock:
            try:
                writes = self.groups.update(changes, full=full)
            except ValueError as e:
                raise BackendError(f"node groups: {e}") from None
            changed = write_entries(self._node_maps(), writes)
            self._groups_changed()
            return changed

    def set_node_addresses(self, addresses) -> int:
        """This node's own addresses: the members of groups.HOST, which the
        programs of ingress-isolated pods let in. Returns how many entries
        changed. Raises BackendError for an address that is not one."""
        with self._lock:
            try:
                writes = self.groups.set_local(G.HOST, addresses)
            except ValueError as e:
                raise BackendError(f"node addresses: {e}") from None
            changed = write_entries(self._node_maps(), writes)
            self._groups_changed()
            return changed

    def groups_digest(self) -> str:
        with self._lock:
            return self.groups.digest()

    def set_services(self, entries) -> int:
        """Hold exactly this Service table (datapath.services.ServiceEntry)
        in the node's svc and backends maps, and drop the translations and
        ClientIP affinities that lead to a backend its Service no longer has.
        The first table since this process started adopts the ids an earlier
        process left pinned and clears whatever the table does not name.
        All or nothing: a failed write leaves the next table to resync
        everything. Returns how many entries are in force. Raises BackendError."""
        with self._lock:
            maps = self._node_maps()
            first = self.services is None
            if first:
                table = S.ServiceTable()
                table.adopt(_pinned_ids(maps))
            else:
                table = self.services.copy()
            before = {e.key: set(e.backends) for e in table.entries()}
            try:
                writes = table.set(entries)
            except ValueError as e:
                raise BackendError(f"Services: {e}") from None
            kept: dict[str, set[bytes]] = {name: set() for name in S.MAPS}
            try:
                for name, key, value in writes:
                    if value is None:
                        maps[name].delete(key)
                    else:
                        maps[name].update(key, value)
                        kept[name].add(key)
                if first:
                    for name in S.MAPS:
                        for key in list(maps[name].keys()):
                            if key not in kept[name]:
                                maps[name].delete(key)
                self.services = table
                after = {e.key: set(e.backends) for e in table.entries()}
                if first or any(old - after.get(k, set()) for k, old in before.items()):
                    _forget_backends(maps, table)
            except KernelError as e:
                self.services = None            # the maps are not what any table says: resync next
                raise BackendError(f"Services: writing the node's maps failed: {e}") from None
            return len(table.entries())

    def services_digest(self) -> str:
        with self._lock:
            return "" if self.services is None else self.services.digest()

    def _resolved(self, received) -> tuple[dict[str, list], frozenset[str]]:
        """received's programs with their group tests resolved to this
        node's bits (and the groups they test). Raises AttachFailed."""
        try:
            return self.groups.resolve(received.insns)
        except G.GroupsFull as e:
            raise AttachFailed(f"pod {received.key}: {e}") from None

    def _groups_changed(self) -> None:
        """Hook: the numbering or wanted groups changed (the kernel backend
        persists them)."""

    def counters(self, key: str) -> Counters:
        """The pod's stats maps, summed over CPUs (a direction without one
        counts nothing). Raises UnknownPod."""
        with self._lock:
            own = self._own_maps(key)
            return Counters(*(stat_totals(own[d][layout.STATS.name])
                              if layout.STATS.name in own[d] else (0, 0, 0)
                              for d in layout.DIRECTIONS))

    def trace(self, src: str, dst: str, protocol: str, src_port: int, dst_port: int) -> TraceResult:
        """Run a connection's first packet and its reply through the programs.
        src, dst: a pod key of this node, or an address. Raises ValueError
        for what cannot be traced.

        The packets go through scratch copies of the two pods' programs, never
        the live ones: a live run would record the traced connection in the
        live conntrack map (a diagnostic would open a reply path in the real
        datapath) and count in the pod's real counters."""
        with self._lock:
            endpoints = self._endpoints()
            s, d = resolve_end(src, endpoints), resolve_end(dst, endpoints)
            flow = pick_flow(s, d, protocol, src_port, dst_port)
            if s.key is not None and d.key is None:
                # An address elsewhere, or a Service: whoever the packet leaves for.
                return self._follow(s, flow, endpoints)
            with self._scratch({e.key for e in (s, d) if e.key}) as run:
                return walk(run, s, d, flow)

    def _follow(self, src: TraceEnd, flow: pk.Flow, endpoints: dict[str, Endpoint]) -> TraceResult:
        def locate(address: str):
            end = resolve_end(address, endpoints)
            return end.key, end.mac

        # The backend a Service picks is not known before the source's
        # program runs: each of its backends on this node gets a scratch copy.
        entry = next((e for e in (self.services.entries() if self.services else ())
                      if e.key == (flow.dst, flow.dport, pk.IPPROTO.get(flow.protocol))), None)
        backends = {a for a, _ in entry.backends} if entry else set()
        keys = {src.key} | {k for k, ep in endpoints.items() if backends & set(ep.addresses)}
        with self._scratch(keys) as run:
            walked = trace.follow(run, (src.key, src.mac), flow, locate)
        return TraceResult(walked.allowed, tuple(TraceStep(s.pod, s.direction, s.retval) for s in walked.steps),
                           (walked.sent.dst, walked.sent.dport) if walked.translated else None)

    def state(self, key: str) -> PodState | None:
        """One attached pod's state, None when it is not attached."""
        return next((s for s in self.pods() if s.key == key), None)

    def endpoint(self, key: str) -> Endpoint | None:
        """The endpoint a pod is attached on."""
        return None

    # -- hooks for counters() and trace(), called under self._lock -----------------

    @abc.abstractmethod
    def _own_maps(self, key: str) -> dict[str, dict]:
        """The pod's own live maps (not the node-wide ones) as {direction:
        {map name: map object}}. Raises UnknownPod."""

    @abc.abstractmethod
    def _node_maps(self) -> dict[str, object]:
        """The live node-wide maps by name."""

    @abc.abstractmethod
    def _endpoints(self) -> dict[str, Endpoint]:
        """Every attached pod's endpoint, by pod key."""

    @abc.abstractmethod
    def _scratch(self, keys: set[str]) -> contextlib.AbstractContextManager[Run]:
        """Scratch copies of these pods' programs, bound to scratch_node_maps()
        and to own maps filled from scratch_entries(). Entering gives their
        `run(key, direction, frame) -> (retval, frame after)`; leaving
        releases them."""


# -- the trace walk, shared by both backends ---------------------------------------

@dataclasses.dataclass(frozen=True)
class TraceEnd:
    """One end of a traced connection: a local pod (key set) or an address."""
    key: str | None
    addresses: tuple[str, ...]
    mac: bytes = pk.DEFAULT_SRC_MAC


def pick_flow(src: TraceEnd, dst: TraceEnd, protocol: str, src_port: int,
              dst_port: int) -> pk.Flow:
    """The flow between two ends in the first family both have."""
    for family in (4, 6):
        a = [x for x in src.addresses if ipaddress.ip_address(x).version == family]
        b = [x for x in dst.addresses if ipaddress.ip_address(x).version == family]
        if a and b:
            return pk.Flow(a[0], b[0], protocol.upper(), src_port or trace.CLIENT_PORT, dst_port)
    raise ValueError(f"{src.key or src.addresses} and {dst.key or dst.addresses} "
                     "share no address family")


Run = Callable[[str, str, bytes, int], tuple[int, bytes, int]]


def walk(run: Run, src: TraceEnd, dst: TraceEnd, flow: pk.Flow) -> TraceResult:
    """The datapath's walk (datapath.trace.walk) over this node's pods;
    `run(key, direction, frame) -> (retval, frame after)`."""
    allowed, steps = trace.walk(run, (src.key, src.mac), (dst.key, dst.mac), flow)
    return TraceResult(allowed, tuple(TraceStep(s.pod, s.direction, s.retval) for s in steps))


def _pinned_ids(maps: dict) -> dict[tuple[str, int, int], int]:
    """{(address, port, protocol): id} from the svc maps as they are."""
    out = {}
    for family in (4, 6):
        a = layout.addr_len(family)
        for key, value in maps[layout.SVC_MAPS[family].name].items():
            port, protocol = struct.unpack_from("!HB", key, a)
            out[(str(ipaddress.ip_address(key[:a])), port, protocol)] = layout.SERVICE.unpack(value)[0]
    return out


def _forget_backends(maps: dict, table: S.ServiceTable) -> int:
    """Drop the translations and ClientIP affinities that lead to a backend
    its Service no longer has (a client reusing a connection's addresses
    and ports, a resolver's, would otherwise keep reaching a pod that is
    gone, or one another Service still has), and those of Services that
    are gone. Returns how many went."""
    by_service = {e.key: {layout.pack_target(a, p) for a, p in e.backends} for e in table.entries()}
    by_id = {table.id_of(k): v for k, v in by_service.items()}
    dropped = 0
    for family in (4, 6):
        a = layout.addr_len(family)
        f = layout.key_fields(family)
        nat = maps[layout.NAT_MAPS[family].name]
        for key, value in list(nat.items()):
            proto = key[f["proto"]]
            if key[f["dir"]] == layout.SVC_OUT:
                service = (str(ipaddress.ip_address(key[a:2 * a])), struct.unpack_from("!H", key, f["dport"])[0],
                           proto)
                target = value[:a + 4]
            else:               # SVC_BACK: the backend is the reply's source, the value the Service
                service = (*layout.unpack_target(family, value), proto)
                target = key[:a] + key[f["sport"]:f["sport"] + 2] + b"\0\0"
            if target not in by_service.get(service, ()):
                dropped += bool(nat.delete(key))
        affinity = maps[layout.AFFINITY_MAPS[family].name]
        for key, value in list(affinity.items()):
            if value[8:8 + a + 4] not in by_id.get(struct.unpack_from("<I", key)[0], ()):
                dropped += bool(affinity.delete(key))
    return dropped


def scratch_node_maps(live: dict, create: Callable) -> dict:
    """Node-wide maps for a trace, made with `create(spec)`: connection
    tracking empty (a trace is a new connection), the endpoints and identity
    maps copied from the `live` node maps, so same-node traffic is
    redirected and peers are known as they would be."""
    out = {}
    for name, spec in layout.NODE_MAPS.items():
        if name in FRESH_MAPS:
            out[name] = create(dataclasses.replace(spec, max_entries=SCRATCH_CT_ENTRIES))
            continue
        out[name] = create(spec)
        for k, v in live[name].items():
            out[name].update(k, v)
    return out


def scratch_entries(own: dict[str, dict]) -> dict[str, dict[str, dict[bytes, bytes]]]:
    """What a trace's copies of a pod's own maps hold: the live maps as they
    are now (after any UpdateMaps), stats left out so the trace counts in
    fresh counters."""
    return {d: {name: dict(m.items()) for name, m in tables.items() if name != layout.STATS.name}
            for d, tables in own.items()}


def resolve_end(what: str, endpoints: dict[str, Endpoint]) -> TraceEnd:
    """A trace end: a pod key of this node, or an address (which is the pod
    holding it when one of this node's pods does)."""
    if "/" in what and what in endpoints:
        ep = endpoints[what]
        return TraceEnd(what, ep.addresses, ep.pod_mac)
    try:
        address = str(ipaddress.ip_address(what))
    except ValueError:
        raise ValueError(f"{what!r} is neither a pod attached on this node nor an address") from None
    for key, ep in endpoints.items():
        if address in ep.addresses:
            return TraceEnd(key, ep.addresses, ep.pod_mac)
    return TraceEnd(None, (address,))


# -- map helpers, shared by both backends (maps duck-typed: KernelMap or VmMap) ----

def replace_contents(m, entries: dict[bytes, bytes]) -> int:
    """Make map `m` hold exactly `entries`: add new keys, rewrite changed
    values, then delete keys no longer present (in that order, so a key that
    stays is never missing in between). Returns how many entries changed."""
    current = dict(m.items())
    changed = 0
    for key, value in entries.items():
        if current.get(key) != value:
            m.update(key, value)
            changed += 1
    for key in current.keys() - entries.keys():
        if m.delete(key):
            changed += 1
    return changed


def write_entries(maps: dict, writes: dict[str, dict[bytes, bytes | None]]) -> int:
    """Write groups.Writes into map objects (None deletes). Returns how many changed."""
    changed = 0
    for name, entries in writes.items():
        m = maps[name]
        for key, value in entries.items():
            if value is None:
                changed += bool(m.delete(key))
            else:
                m.update(key, value)
                changed += 1
    return changed


def update_pod_maps(key: str, own: dict[str, dict], maps: dict[str, dict[str, dict[bytes, bytes]]]) -> int:
    """UpdateMaps for either backend: `own` is {direction: {map name: map
    object}} of the pod's own maps. Every named map is checked first, so a
    bad request changes nothing; then each is made to hold exactly its new
    entries. Returns how many entries changed."""
    for d, tables in maps.items():
        for name in tables:
            if name not in own.get(d, {}):
                raise BackendError(f"pod {key}: its {d} program has no map {name!r} of its own to update")
    changed = 0
    for d, tables in maps.items():
        for name, entries in tables.items():
            try:
                changed += replace_contents(own[d][name], entries)
            except (ValueError, KernelError) as e:
                raise BackendError(f"pod {key}: {d} map {name!r}: {e}") from None
    return changed


def sync_pod_maps(key: str, own: dict[str, dict], received) -> int:
    """An Apply of the program a pod already runs (same hash), with other
    map contents (its peers changed meanwhile): make every own map hold what
    `received` says, emptied where it says nothing; the stats counters stay.
    Returns how many entries changed."""
    maps = {d: {name: received.entries.get(d, {}).get(name, {}) for name in tables
                if name != layout.STATS.name}
            for d, tables in own.items()}
    return update_pod_maps(key, own, maps)


def stat_totals(m) -> tuple[int, int, int]:
    """(allowed, dropped, redirected) from a per-CPU stats map, summed over CPUs."""
    out = []
    for index in range(3):
        value = m.lookup(index.to_bytes(4, "little"))
        per_cpu = value if isinstance(value, list) else [value] if value else []
        out.append(sum(int.from_bytes(v[:8], "little") for v in per_cpu))
    return tuple(out)


def put_endpoints(node_maps: dict, ep: Endpoint) -> None:
    """List the pod in the node-wide endpoints maps (either backend's map
    objects): same-node traffic to its addresses is redirected to its veth."""
    value = layout.pack_endpoint(ep.host_ifindex, ep.pod_mac, ep.host_mac)
    for address in ep.addresses:
        node_maps[_endpoint_map(address)].update(layout.pack_addr(address), value)


def drop_endpoints(node_maps: dict, ep: Endpoint) -> None:
    for address in ep.addresses:
        m = node_maps[_endpoint_map(address)]
        current = m.lookup(layout.pack_addr(address))
        # Only our own entry: the address may already belong to a new pod.
        if current is not None and layout.ENDPOINT.unpack(current)[0] == ep.host_ifindex:
            m.delete(layout.pack_addr(address))


def _endpoint_map(address: str) -> str:
    return layout.ENDPOINT_MAPS[ipaddress.ip_address(address).version].name
