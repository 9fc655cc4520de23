"""NetworkPolicy (networking.k8s.io/v1): the parsed, validated object.

`parse(obj)` is called by cluster.manifests (and later the kopf handlers) on a
manifest dict; it applies the API server's defaulting and validation and raises
`InvalidSpec` with the field path. The semantics live in policy.netpol.
Purely data-manipulative, no I/O.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping

from tailor.operator import selectors
from tailor.operator.cluster import ports as ports_
from tailor.operator.errors import InvalidSpec

API_VERSION = "networking.k8s.io/v1"
POLICY_TYPES = ("Ingress", "Egress")


@dataclasses.dataclass(frozen=True)
class IPBlock:
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    except_: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def contains(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        if addr.version != self.cidr.version or addr not in self.cidr:
            return False
        return not any(addr in ex for ex in self.except_)


@dataclasses.dataclass(frozen=True)
class Peer:
    """One `from`/`to` entry: either ipBlock, or pod and/or namespace selectors.
    An absent selector is None; `{}` is selectors.MATCH_ALL."""
    pod_selector: selectors.LabelSelector | None = None
    namespace_selector: selectors.LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclasses.dataclass(frozen=True)
class Rule:
    """One ingress or egress rule. `peers` empty means every peer ("If this
    field is empty or missing, this rule matches all sources/destinations");
    `ports` empty means every port and protocol."""
    peers: tuple[Peer, ...] = ()
    ports: tuple[ports_.PortMatch, ...] = ()


@dataclasses.dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: selectors.LabelSelector
    policy_types: frozenset[str]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def affects_ingress(self) -> bool:
        return "Ingress" in self.policy_types

    @property
    def affects_egress(self) -> bool:
        return "Egress" in self.policy_types


def parse(obj: Mapping, namespace: str, name: str) -> NetworkPolicy:
    spec = obj.get("spec")
    # The spec, too, is held by value: absent, it is the zero spec — every
    # pod of the namespace, policyTypes defaulted to [Ingress], no rules: a
    # default deny of ingress, as the API server stores it.
    spec = {} if spec is None else spec
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec", f"must be an object, got {type(spec).__name__}")
    # podSelector is held by value in the API's Go type: absent (or null)
    # decodes as `{}`, every pod of the namespace, and is stored so.
    pod_selector = selectors.parse_optional(spec.get("podSelector"), "spec.podSelector") or selectors.MATCH_ALL
    ingress = _parse_rules(spec.get("ingress"), "spec.ingress", "from")
    egress = _parse_rules(spec.get("egress"), "spec.egress", "to")
    types = spec.get("policyTypes")
    if types is None or types == []:
        # API defaulting: Ingress always; Egress when the policy has egress rules
        # (Go's len(spec.Egress) != 0, so `egress: []` does not count).
        types = ["Ingress"] + (["Egress"] if egress else [])
    elif not isinstance(types, list):
        raise InvalidSpec("spec.policyTypes", "must be a list")
    for i, t in enumerate(types):
        if t not in POLICY_TYPES:
            raise InvalidSpec(f"spec.policyTypes[{i}]",
                              f'Unsupported value: {t!r}: supported values: "Ingress", "Egress"')
    if len(types) > 2 or len(set(types)) != len(types):
        raise InvalidSpec("spec.policyTypes", "may not contain more than 2 items nor duplicates")
    return NetworkPolicy(namespace, name, pod_selector, frozenset(types), ingress, egress)


def _parse_rules(rules, path: str, peers_field: str) -> tuple[Rule, ...]:
    if rules is None:
        return ()
    if not isinstance(rules, list):
        raise InvalidSpec(path, "must be a list of rules")
    parsed = []
    for i, rule in enumerate(rules):
        where = f"{path}[{i}]"
        if rule is None:
            rule = {}
        if not isinstance(rule, Mapping):
            raise InvalidSpec(where, "must be a rule object")
        peers = rule.get(peers_field) or []
        if not isinstance(peers, list):
            raise InvalidSpec(f"{where}.{peers_field}", "must be a list of peers")
        port_list = rule.get("ports") or []
        if not isinstance(port_list, list):
            raise InvalidSpec(f"{where}.ports", "must be a list of ports")
        parsed.append(Rule(
            tuple(_parse_peer(p, f"{where}.{peers_field}[{j}]") for j, p in enumerate(peers)),
            tuple(_parse_port(p, f"{where}.ports[{j}]") for j, p in enumerate(port_list))))
    return tuple(parsed)


def _parse_peer(peer, path: str) -> Peer:
    if not isinstance(peer, Mapping):
        raise InvalidSpec(path, "must be a peer object")
    pod_sel = selectors.parse_optional(peer.get("podSelector"), f"{path}.podSelector")
    ns_sel = selectors.parse_optional(peer.get("namespaceSelector"), f"{path}.namespaceSelector")
    block = peer.get("ipBlock")
    if block is not None and (pod_sel is not None or ns_sel is not None):
        raise InvalidSpec(path, "may not specify more than 1 peer type "
                                "(ipBlock cannot be combined with podSelector or namespaceSelector)")
    if block is None and pod_sel is None and ns_sel is None:
        raise InvalidSpec(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
    return Peer(pod_sel, ns_sel, None if block is None else _parse_ip_block(block, f"{path}.ipBlock"))


def _parse_ip_block(block, path: str) -> IPBlock:
    if not isinstance(block, Mapping):
        raise InvalidSpec(path, "must be an object with cidr and except")
    if block.get("cidr") in (None, ""):
        raise InvalidSpec(f"{path}.cidr", "Required value")
    cidr = parse_cidr(block["cidr"], f"{path}.cidr")
    excepts = []
    for i, text in enumerate(block.get("except") or []):
        where = f"{path}.except[{i}]"
        ex = parse_cidr(text, where)
        # "must be a strict subset of `cidr`": same family, inside, longer prefix.
        if ex.version != cidr.version or not ex.subnet_of(cidr) or ex.prefixlen <= cidr.prefixlen:
            raise InvalidSpec(where, f"{text!r} must be a strict subset of `cidr` ({block['cidr']})")
        excepts.append(ex)
    return IPBlock(cidr, tuple(excepts))


def parse_cidr(text, path: str):
    """A CIDR like 10.0.0.0/8 or fd00::/8. Host bits may be set (the API server
    accepts 10.0.0.1/8 and means 10.0.0.0/8); a prefix length is required."""
    if not isinstance(text, str) or "/" not in text:
        raise InvalidSpec(path, f"{text!r} is not a valid CIDR: must be an address and a prefix length, "
                                "e.g. 10.0.0.0/8 or fd00::/8")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise InvalidSpec(path, f"{text!r} is not a valid CIDR: {exc}") from None


def _parse_port(port, path: str) -> ports_.PortMatch:
    if port is None:
        port = {}
    if not isinstance(port, Mapping):
        raise InvalidSpec(path, "must be an object with protocol, port and endPort")
    protocol = ports_.parse_protocol(port.get("protocol"), f"{path}.protocol")
    value = port.get("port")
    end_port = port.get("endPort")
    if value is None:
        if end_port is not None:
            raise InvalidSpec(f"{path}.endPort", "may not be specified when `port` is not specified")
        # Protocol only: every port of that protocol.
        return ports_.PortMatch(protocol, ports_.MIN_PORT, ports_.MAX_PORT)
    if isinstance(value, str):
        if end_port is not None:
            raise InvalidSpec(f"{path}.endPort", "may not be specified when `port` is a named port")
        return ports_.PortMatch(protocol, name=ports_.parse_port_name(value, f"{path}.port"))
    number = ports_.parse_port_number(value, f"{path}.port")
    if end_port is None:
        return ports_.PortMatch(protocol, number, number)
    end = ports_.parse_port_number(end_port, f"{path}.endPort")
    if end < number:
        raise InvalidSpec(f"{path}.endPort", f"{end} must be greater than or equal to `port` ({number})")
    return ports_.PortMatch(protocol, number, end)
