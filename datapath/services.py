"""A node's Service table: which Service address and port has which
backends, and the svc/backends map entries that follow (layout.py). Pure:
no kernel, no I/O (the backends write the operations it returns).

The program source sends the whole table (SetServices), as it sends the
node table; this module numbers the Services as they come, as groups.py
numbers groups, so a Service keeps its id — and its clients their ClientIP
affinity entries, which name it — while other Services come and go.

Writes are ordered so that a program reading the maps meanwhile never
picks a slot that is not there yet: a Service's new backends are written
before its count grows, its count shrinks before the slots go.
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress

from tailor.datapath import layout


@dataclasses.dataclass(frozen=True, order=True)
class ServiceEntry:
    """One Service address and port of one protocol (IP protocol number).
    `service` names it ("ns/name") for messages."""
    address: str
    port: int
    protocol: int
    backends: tuple[tuple[str, int], ...] = ()
    affinity_seconds: int = 0
    service: str = ""

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version

    @property
    def key(self) -> tuple[str, int, int]:
        return self.address, self.port, self.protocol


def digest(entries) -> str:
    """Of a table: the same on both sides of the wire."""
    h = hashlib.sha256()
    for e in sorted(entries):
        h.update(f"{e.address} {e.port} {e.protocol} {e.affinity_seconds} "
                 f"{','.join(f'{a}#{p}' for a, p in e.backends)}\n".encode())
    return h.hexdigest()[:16]


MAPS = tuple(layout.SERVICE_MAPS)                # the maps a table writes
Write = tuple[str, bytes, "bytes | None"]       # (map name, key, value; None deletes)


class ServiceTable:
    def __init__(self) -> None:
        self._held: dict[tuple[str, int, int], ServiceEntry] = {}
        self._ids: dict[tuple[str, int, int], int] = {}
        # Never reused: a client's affinity entry names an id, and must not
        # send it to another Service's backends.
        self._next = 1

    def entries(self) -> list[ServiceEntry]:
        return sorted(self._held.values())

    def copy(self) -> "ServiceTable":
        out = ServiceTable()
        out._held, out._ids, out._next = dict(self._held), dict(self._ids), self._next
        return out

    def adopt(self, ids: dict[tuple[str, int, int], int]) -> None:
        """The ids an earlier process gave the Services its pinned svc maps
        still hold: a Service keeps its id across an agent restart (its
        clients' affinity entries name it), and no new one takes an old id."""
        self._ids.update(ids)
        self._next = max([self._next, *(i + 1 for i in ids.values())])

    def id_of(self, key: tuple[str, int, int]) -> int | None:
        return self._ids.get(key)

    def digest(self) -> str:
        return digest(self._held.values())

    def set(self, entries) -> list[Write]:
        """Hold exactly `entries`; the map writes that get there from what
        was held, in an order safe for programs reading meanwhile."""
        wanted = {}
        for e in entries:
            if e.key in wanted:
                raise ValueError(f"Service address {e.address} port {e.port} protocol {e.protocol} "
                                 f"is listed twice ({wanted[e.key].service or '?'}, {e.service or '?'})")
            wanted[e.key] = e
        out: list[Write] = []
        for key in sorted(self._held.keys() - wanted.keys()):
            out += self._drop(key)
        for key in sorted(wanted):
            if self._held.get(key) != wanted[key]:
                out += self._put(wanted[key])
        return out

    def _id(self, key) -> int:
        if key not in self._ids:
            self._ids[key], self._next = self._next, self._next + 1
        return self._ids[key]

    def _put(self, e: ServiceEntry) -> list[Write]:
        family, sid = e.family, self._id(e.key)
        old = self._held.get(e.key)
        svc, backends = layout.SVC_MAPS[family].name, layout.BACKEND_MAPS[family].name
        svc_key = layout.pack_service_key(e.address, e.port, e.protocol)
        value = layout.pack_service(sid, len(e.backends), e.affinity_seconds)
        slots = [(backends, layout.BACKEND_KEY.pack(sid, i), layout.pack_target(a, p))
                 for i, (a, p) in enumerate(e.backends)]
        stale = [(backends, layout.BACKEND_KEY.pack(sid, i), None)
                 for i in range(len(e.backends), len(old.backends) if old else 0)]
        self._held[e.key] = e
        return slots + [(svc, svc_key, value)] + stale

    def _drop(self, key) -> list[Write]:
        e = self._held.pop(key)
        sid = self._ids.pop(key)
        backends = layout.BACKEND_MAPS[e.family].name
        return [(layout.SVC_MAPS[e.family].name, layout.pack_service_key(*key), None)] + [
            (backends, layout.BACKEND_KEY.pack(sid, i), None) for i in range(len(e.backends))]
