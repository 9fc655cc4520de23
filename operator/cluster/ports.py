"""Protocols, port names and the port matches that policies carry.

Called by the cluster parsers (pods, networkpolicy, adminpolicy) and by the
policy evaluator and the compiler, which resolve a `PortMatch` against the
destination pod. Purely data-manipulative, no I/O.
"""
from __future__ import annotations

import dataclasses
import re

from tailor.operator.errors import InvalidSpec

# The one protocol table: name -> IP protocol number. The reverse is derived.
PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}
PROTOCOLS = tuple(PROTOCOL_NUMBERS)

MIN_PORT = 1
MAX_PORT = 65535

_PORT_NAME = re.compile(r"^[-a-z0-9]+$")


@dataclasses.dataclass(frozen=True, order=True)
class ContainerPort:
    """A container's declared port (spec.containers[].ports[])."""
    name: str | None
    port: int
    protocol: str = "TCP"


@dataclasses.dataclass(frozen=True)
class PortMatch:
    """One entry of a policy's port list, normalised.

    Numeric: `protocol`, `start`..`end` inclusive (a single port has start == end;
    a protocol-only NetworkPolicy port is 1..65535). Named: `name` is set and
    start/end are None; `protocol` is the protocol the name must be declared
    with, or None (ANP namedPort) for whatever protocol the container declares.
    """
    protocol: str | None
    start: int | None = None
    end: int | None = None
    name: str | None = None

    def resolve(self, ports: tuple[ContainerPort, ...]) -> list[tuple[str, int, int]]:
        """The (protocol, start, end) ranges this match means on a destination
        whose containers declare `ports`. A named port the destination does not
        declare resolves to nothing (matches no traffic)."""
        if self.name is None:
            return [(self.protocol, self.start, self.end)]
        return [(cp.protocol, cp.port, cp.port) for cp in ports
                if cp.name == self.name and self.protocol in (None, cp.protocol)]

    def matches(self, protocol: str, port: int, ports: tuple[ContainerPort, ...]) -> bool:
        return any(p == protocol and lo <= port <= hi for p, lo, hi in self.resolve(ports))

    def __str__(self) -> str:
        proto = self.protocol or "any"
        if self.name is not None:
            return f"{proto}/{self.name}"
        if self.start == MIN_PORT and self.end == MAX_PORT:
            return f"{proto}/*"
        return f"{proto}/{self.start}" + (f"-{self.end}" if self.end != self.start else "")


def parse_protocol(value, path: str, default: str = "TCP") -> str:
    """TCP, UDP or SCTP; absent means `default`."""
    if value is None:
        return default
    if value not in PROTOCOL_NUMBERS:
        raise InvalidSpec(path, f"Unsupported value: {value!r}: supported values: "
                                + ", ".join(f'"{p}"' for p in PROTOCOLS))
    return value


def parse_port_number(value, path: str) -> int:
    """An integer 1..65535 (booleans and numeric strings are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(path, f"{value!r} is not a port number: must be an integer 1-65535")
    if not MIN_PORT <= value <= MAX_PORT:
        raise InvalidSpec(path, f"{value} is not a valid port number: must be between 1 and 65535, inclusive")
    return value


def port_name_problem(name) -> str | None:
    """Why `name` is not an IANA_SVC_NAME (RFC 6335 §5.1), or None if it is one."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > 15:
        return "must be no more than 15 characters"
    if not _PORT_NAME.match(name):
        return "must contain only lowercase alphanumeric characters or '-'"
    if not re.search(r"[a-z]", name):
        return "must contain at least one letter"
    if "--" in name:
        return "must not contain consecutive hyphens"
    if name.startswith("-") or name.endswith("-"):
        return "must not begin or end with a hyphen"
    return None


def parse_port_name(value, path: str) -> str:
    problem = port_name_problem(value)
    if problem:
        raise InvalidSpec(path, f"{value!r} is not a valid port name (IANA_SVC_NAME): {problem}")
    return value
