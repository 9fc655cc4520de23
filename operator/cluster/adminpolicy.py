"""AdminNetworkPolicy and BaselineAdminNetworkPolicy
(policy.networking.k8s.io/v1alpha1): the parsed, validated objects.

`parse_anp(obj, name)` and `parse_banp(obj, name)` are called by
cluster.manifests (later also the kopf handlers); they apply the CRD schema's
defaults and validation and raise `InvalidSpec` with the field path. The
semantics live in policy.admin. Purely data-manipulative, no I/O.

Supported peers (PeerKind): ingress `namespaces`, `pods`; egress
`namespaces`, `pods`, `nodes` (matched by the selected Node objects'
addresses) and `networks` (CIDRs; cluster pods' addresses are checked against
them too, as the API says).
"""
from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Mapping

from tailor.operator import selectors
from tailor.operator.cluster import ports as ports_
from tailor.operator.cluster.networkpolicy import parse_cidr
from tailor.operator.errors import InvalidSpec

API_VERSION = "policy.networking.k8s.io/v1alpha1"
ANP_ACTIONS = ("Allow", "Deny", "Pass")
BANP_ACTIONS = ("Allow", "Deny")
BANP_NAME = "default"
MIN_PRIORITY, MAX_PRIORITY = 0, 1000
MAX_RULES = 100
MAX_PEERS = 100
MAX_PORTS = 100
MAX_NETWORKS = 25


class PeerKind(enum.StrEnum):
    """The kind of an AdminNetworkPolicy peer, named by the API field that
    holds it (`to: [{nodes: {...}}]`). Compared by the semantics
    (policy.admin.peer_matches), the compiler (compiler.resolve) and the change
    tracker (affected). A new egress kind is a member here and its case in
    _parse_peer and in each of those places.
    A StrEnum: a member is its field name, in error paths and as a key."""
    NAMESPACES = "namespaces"   # the pods of the selected namespaces
    PODS = "pods"               # the selected pods of the selected namespaces
    NODES = "nodes"             # the addresses of the selected Node objects
    NETWORKS = "networks"       # CIDRs, cluster pods' addresses included


# The kinds that select cluster pods. Ingress peers and subjects take only
# these (the CRD schema); a subject's fields have the peers' shapes.
POD_PEER_KINDS = (PeerKind.NAMESPACES, PeerKind.PODS)
SUBJECT_KINDS = INGRESS_PEER_KINDS = POD_PEER_KINDS
EGRESS_PEER_KINDS = tuple(PeerKind)


@dataclasses.dataclass(frozen=True)
class Subject:
    """Which pods a policy applies to: pods in namespaces matching
    `namespace_selector` and, if set, matching `pod_selector`."""
    namespace_selector: selectors.LabelSelector
    pod_selector: selectors.LabelSelector | None = None


@dataclasses.dataclass(frozen=True)
class AdminPeer:
    """Exactly one kind of peer: NAMESPACES (namespace_selector), PODS
    (namespace_selector and pod_selector), NODES (node_selector) or NETWORKS
    (networks)."""
    kind: PeerKind
    namespace_selector: selectors.LabelSelector | None = None
    pod_selector: selectors.LabelSelector | None = None
    node_selector: selectors.LabelSelector | None = None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclasses.dataclass(frozen=True)
class AdminRule:
    """One rule. `ports` None means the rule does not filter by port."""
    name: str
    action: str
    peers: tuple[AdminPeer, ...]
    ports: tuple[ports_.PortMatch, ...] | None = None


@dataclasses.dataclass(frozen=True)
class AdminPolicy:
    """An AdminNetworkPolicy (`kind` "AdminNetworkPolicy", `priority` set) or
    the BaselineAdminNetworkPolicy (`priority` None)."""
    kind: str
    name: str
    priority: int | None
    subject: Subject
    ingress: tuple[AdminRule, ...] = ()
    egress: tuple[AdminRule, ...] = ()

    @property
    def ref(self) -> str:
        return self.name


def parse_anp(obj: Mapping, name: str) -> AdminPolicy:
    spec = _spec(obj)
    priority = spec.get("priority")
    if priority is None:
        raise InvalidSpec("spec.priority", "Required value")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidSpec("spec.priority", f"{priority!r} must be an integer")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidSpec("spec.priority", f"{priority} must be between {MIN_PRIORITY} and {MAX_PRIORITY}")
    return AdminPolicy("AdminNetworkPolicy", name, priority, _parse_subject(spec.get("subject")),
                       _parse_rules(spec, "ingress", ANP_ACTIONS),
                       _parse_rules(spec, "egress", ANP_ACTIONS))


def parse_banp(obj: Mapping, name: str) -> AdminPolicy:
    if name != BANP_NAME:
        raise InvalidSpec("metadata.name", f"{name!r}: only one baseline admin network policy with "
                                           f"metadata.name=\"{BANP_NAME}\" can be created in the cluster")
    spec = _spec(obj)
    return AdminPolicy("BaselineAdminNetworkPolicy", name, None, _parse_subject(spec.get("subject")),
                       _parse_rules(spec, "ingress", BANP_ACTIONS),
                       _parse_rules(spec, "egress", BANP_ACTIONS))


def _spec(obj: Mapping) -> Mapping:
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec", "Required value")
    return spec


def _one_of(obj, path: str, fields: tuple[str, ...]) -> str:
    """The single field set in `obj` (the schema's minProperties/maxProperties 1)."""
    if not isinstance(obj, Mapping):
        raise InvalidSpec(path, f"must be an object with exactly one of {', '.join(fields)}")
    present = [f for f in obj if obj[f] is not None]
    unknown = [f for f in present if f not in fields]
    if unknown:
        raise InvalidSpec(f"{path}.{unknown[0]}", f"unknown field (expected one of {', '.join(fields)})")
    if len(present) != 1:
        raise InvalidSpec(path, f"exactly one of {', '.join(fields)} must be set, got "
                                + (", ".join(present) if present else "none"))
    return present[0]


def _parse_subject(subject) -> Subject:
    path = "spec.subject"
    if subject is None:
        raise InvalidSpec(path, "Required value")
    kind = PeerKind(_one_of(subject, path, SUBJECT_KINDS))
    where = f"{path}.{kind}"
    if kind is PeerKind.NAMESPACES:
        return Subject(selectors.parse(subject[kind], where))
    ns_sel, pod_sel = _namespaced_pod(subject[kind], where)
    return Subject(ns_sel, pod_sel)


def _namespaced_pod(obj, path: str):
    if not isinstance(obj, Mapping):
        raise InvalidSpec(path, "must be an object with namespaceSelector and podSelector")
    return (selectors.parse(obj.get("namespaceSelector"), f"{path}.namespaceSelector"),
            selectors.parse(obj.get("podSelector"), f"{path}.podSelector"))


def _parse_rules(spec: Mapping, direction: str, actions: tuple[str, ...]) -> tuple[AdminRule, ...]:
    rules = spec.get(direction)
    path = f"spec.{direction}"
    if rules is None:
        return ()
    if not isinstance(rules, list):
        raise InvalidSpec(path, "must be a list of rules")
    if len(rules) > MAX_RULES:
        raise InvalidSpec(path, f"must have at most {MAX_RULES} items, got {len(rules)}")
    peers_field = "from" if direction == "ingress" else "to"
    peer_kinds = INGRESS_PEER_KINDS if direction == "ingress" else EGRESS_PEER_KINDS
    parsed = []
    for i, rule in enumerate(rules):
        where = f"{path}[{i}]"
        if not isinstance(rule, Mapping):
            raise InvalidSpec(where, "must be a rule object")
        name = rule.get("name", "")
        if not isinstance(name, str) or len(name) > 100:
            raise InvalidSpec(f"{where}.name", f"{name!r} must be a string of at most 100 characters "
                                               "(quote names like no, on, 1 in YAML)")
        action = rule.get("action")
        if action is None:
            raise InvalidSpec(f"{where}.action", "Required value")
        if action not in actions:
            raise InvalidSpec(f"{where}.action", f"Unsupported value: {action!r}: supported values: "
                                                 + ", ".join(f'"{a}"' for a in actions))
        peers = rule.get(peers_field)
        if not isinstance(peers, list) or not peers:
            raise InvalidSpec(f"{where}.{peers_field}", "Required value: must contain at least one peer")
        if len(peers) > MAX_PEERS:
            raise InvalidSpec(f"{where}.{peers_field}", f"must have at most {MAX_PEERS} items")
        parsed.append(AdminRule(
            name, action,
            tuple(_parse_peer(p, f"{where}.{peers_field}[{j}]", peer_kinds) for j, p in enumerate(peers)),
            _parse_ports(rule.get("ports"), f"{where}.ports")))
    return tuple(parsed)


def _parse_peer(peer, path: str, kinds: tuple[PeerKind, ...]) -> AdminPeer:
    kind = PeerKind(_one_of(peer, path, kinds))
    value = peer[kind]
    where = f"{path}.{kind}"
    if kind is PeerKind.NAMESPACES:
        return AdminPeer(kind, namespace_selector=selectors.parse(value, where))
    if kind is PeerKind.PODS:
        ns_sel, pod_sel = _namespaced_pod(value, where)
        return AdminPeer(kind, namespace_selector=ns_sel, pod_selector=pod_sel)
    if kind is PeerKind.NODES:
        return AdminPeer(kind, node_selector=selectors.parse(value, where))
    # NETWORKS
    if not isinstance(value, list) or not value:
        raise InvalidSpec(where, "must be a list of at least one CIDR")
    if len(value) > MAX_NETWORKS:
        raise InvalidSpec(where, f"must have at most {MAX_NETWORKS} items")
    return AdminPeer(kind, networks=tuple(parse_cidr(c, f"{where}[{i}]") for i, c in enumerate(value)))


def _parse_ports(port_list, path: str) -> tuple[ports_.PortMatch, ...] | None:
    if port_list is None:
        return None
    if not isinstance(port_list, list):
        raise InvalidSpec(path, "must be a list of ports")
    if not port_list:
        # The API gives an explicit empty list no meaning; refuse rather than guess.
        raise InvalidSpec(path, "must contain at least one port when present (omit it to match all ports)")
    if len(port_list) > MAX_PORTS:
        raise InvalidSpec(path, f"must have at most {MAX_PORTS} items")
    return tuple(_parse_port(p, f"{path}[{i}]") for i, p in enumerate(port_list))


def _parse_port(port, path: str) -> ports_.PortMatch:
    kind = _one_of(port, path, ("portNumber", "portRange", "namedPort"))
    value = port[kind]
    where = f"{path}.{kind}"
    if kind == "namedPort":
        return ports_.PortMatch(None, name=ports_.parse_port_name(value, where))
    if not isinstance(value, Mapping):
        raise InvalidSpec(where, "must be an object")
    protocol = ports_.parse_protocol(value.get("protocol"), f"{where}.protocol")
    if kind == "portNumber":
        if value.get("port") is None:
            raise InvalidSpec(f"{where}.port", "Required value")
        number = ports_.parse_port_number(value["port"], f"{where}.port")
        return ports_.PortMatch(protocol, number, number)
    for field in ("start", "end"):
        if value.get(field) is None:
            raise InvalidSpec(f"{where}.{field}", "Required value")
    start = ports_.parse_port_number(value["start"], f"{where}.start")
    end = ports_.parse_port_number(value["end"], f"{where}.end")
    if start >= end:
        raise InvalidSpec(where, f"start ({start}) must be less than end ({end})")
    return ports_.PortMatch(protocol, start, end)
