"""The cluster-wide policies, parsed and validated: AdminNetworkPolicy and
BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1) and
ClusterNetworkPolicy (v1alpha2), all as one `AdminPolicy` with its tier.

`parse_anp`, `parse_banp` and `parse_cnp` (obj, name) are called by
cluster.manifests and the operator's event translation; they apply the CRD
schema's defaults and validation and raise `InvalidSpec` with the field
path. The semantics live in policy.admin. Purely data-manipulative, no I/O.

The two API versions differ only in their surface, normalised here:
v1alpha2 folds ANP and BANP into one kind with `spec.tier` (Admin, ordered
before NetworkPolicy; Baseline, after it), names the allow action `Accept`
(stored as ALLOW, the v1alpha1 word, so the semantics and the compiler see
one vocabulary), writes ports as `protocols` (`tcp`/`udp`/`sctp` with a
`destinationPort` number or range, or `destinationNamedPort`), lets a `pods`
subject or peer omit its namespaceSelector (all namespaces), gives the
Baseline tier priorities and Pass, and allows 25 items where v1alpha1 allowed
100. A selector the schema requires but a manifest leaves out decodes as the
API's Go types decode it: the empty selector (`{}`, everything).

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
CNP_API_VERSION = "policy.networking.k8s.io/v1alpha2"
ANP, BANP, CNP = "AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "ClusterNetworkPolicy"
KINDS = (ANP, BANP, CNP)
BANP_NAME = "default"
MIN_PRIORITY, MAX_PRIORITY = 0, 1000
MAX_NETWORKS = 25
# The tiers a cluster-wide policy sits in, around NetworkPolicy.
ADMIN_TIER, BASELINE_TIER = "Admin", "Baseline"
TIERS = (ADMIN_TIER, BASELINE_TIER)
ALLOW, DENY, PASS = "Allow", "Deny", "Pass"


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
class _Dialect:
    """What differs between the API versions' rule lists."""
    actions: Mapping[str, str]          # action as written -> ALLOW / DENY / PASS
    max_items: int                      # rules per direction, peers per rule, ports per rule
    ports_field: str                    # "ports" (v1alpha1) or "protocols" (v1alpha2)
    domain_names: bool = False          # egress may name peers by DNS name (v1alpha2)


_ANP = _Dialect({ALLOW: ALLOW, DENY: DENY, PASS: PASS}, 100, "ports")
_BANP = _Dialect({ALLOW: ALLOW, DENY: DENY}, 100, "ports")
_CNP = _Dialect({"Accept": ALLOW, DENY: DENY, PASS: PASS}, 25, "protocols", domain_names=True)


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
    """One rule. `action` is ALLOW, DENY or PASS (v1alpha2's Accept is
    ALLOW). `ports` None means the rule does not filter by port."""
    name: str
    action: str
    peers: tuple[AdminPeer, ...]
    ports: tuple[ports_.PortMatch, ...] | None = None


@dataclasses.dataclass(frozen=True)
class AdminPolicy:
    """A cluster-wide policy in its tier: an AdminNetworkPolicy (Admin), the
    BaselineAdminNetworkPolicy (Baseline, `priority` None) or a
    ClusterNetworkPolicy (either tier, with a priority)."""
    kind: str
    name: str
    priority: int | None
    subject: Subject
    ingress: tuple[AdminRule, ...] = ()
    egress: tuple[AdminRule, ...] = ()
    tier: str = ADMIN_TIER
    # What of it tailor enforces otherwise than written (see _domain_names).
    notes: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return self.name


def parse_anp(obj: Mapping, name: str) -> AdminPolicy:
    spec = _spec(obj, ("priority", "subject", "ingress", "egress"))
    return _policy(ANP, name, _priority(spec), spec, _ANP, ADMIN_TIER)


def parse_banp(obj: Mapping, name: str) -> AdminPolicy:
    if name != BANP_NAME:
        raise InvalidSpec("metadata.name", f"{name!r}: only one baseline admin network policy with "
                                           f"metadata.name=\"{BANP_NAME}\" can be created in the cluster")
    spec = _spec(obj, ("subject", "ingress", "egress"))
    return _policy(BANP, name, None, spec, _BANP, BASELINE_TIER)


def parse_cnp(obj: Mapping, name: str) -> AdminPolicy:
    spec = _spec(obj, ("tier", "priority", "subject", "ingress", "egress"))
    tier = spec.get("tier")
    if tier is None:
        raise InvalidSpec("spec.tier", "Required value")
    if tier not in TIERS:
        raise InvalidSpec("spec.tier", f"Unsupported value: {tier!r}: supported values: "
                                       + ", ".join(f'"{t}"' for t in TIERS))
    return _policy(CNP, name, _priority(spec), spec, _CNP, tier)


def _policy(kind: str, name: str, priority: int | None, spec: Mapping, dialect: _Dialect,
            tier: str) -> AdminPolicy:
    notes: list[str] = []
    return AdminPolicy(kind, name, priority, _parse_subject(spec.get("subject")),
                       _parse_rules(spec, "ingress", dialect, notes),
                       _parse_rules(spec, "egress", dialect, notes), tier, tuple(notes))


PARSERS = {ANP: parse_anp, BANP: parse_banp, CNP: parse_cnp}
API_VERSIONS = {ANP: API_VERSION, BANP: API_VERSION, CNP: CNP_API_VERSION}


def _priority(spec: Mapping) -> int:
    priority = spec.get("priority")
    if priority is None:
        raise InvalidSpec("spec.priority", "Required value")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidSpec("spec.priority", f"{priority!r} must be an integer")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidSpec("spec.priority", f"{priority} must be between {MIN_PRIORITY} and {MAX_PRIORITY}")
    return priority


def _spec(obj: Mapping, known: tuple[str, ...]) -> Mapping:
    """The spec, refusing a field the version does not define: pruned (as an
    API server would), a misspelt `egres` would silently drop rules."""
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec", "Required value")
    _known_fields(spec, "spec", known)
    return spec


def _known_fields(obj: Mapping, path: str, known: tuple[str, ...]) -> None:
    unknown = [k for k, v in obj.items() if k not in known and v is not None]
    if unknown:
        raise InvalidSpec(f"{path}.{unknown[0]}", "unknown field (expected " + ", ".join(known) + ")")


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
    """A `pods` subject or peer: (namespace selector, pod selector). Either
    left out decodes as the API's Go types decode it — the empty selector:
    the CRDs mark them required, but the structs hold them by value, and a
    v1alpha2 namespaceSelector is optional (all namespaces) by the API."""
    if not isinstance(obj, Mapping):
        raise InvalidSpec(path, "must be an object with namespaceSelector and podSelector")
    _known_fields(obj, path, ("namespaceSelector", "podSelector"))
    return (_selector_or_all(obj.get("namespaceSelector"), f"{path}.namespaceSelector"),
            _selector_or_all(obj.get("podSelector"), f"{path}.podSelector"))


def _selector_or_all(obj, path: str) -> selectors.LabelSelector:
    return selectors.MATCH_ALL if obj is None else selectors.parse(obj, path)


def _parse_rules(spec: Mapping, direction: str, dialect: _Dialect,
                 notes: list[str]) -> tuple[AdminRule, ...]:
    """The direction's rules; what is enforced otherwise than written is
    added to `notes`."""
    rules = spec.get(direction)
    path = f"spec.{direction}"
    if rules is None:
        return ()
    if not isinstance(rules, list):
        raise InvalidSpec(path, "must be a list of rules")
    if len(rules) > dialect.max_items:
        raise InvalidSpec(path, f"must have at most {dialect.max_items} items, got {len(rules)}")
    peers_field = "from" if direction == "ingress" else "to"
    peer_kinds = INGRESS_PEER_KINDS if direction == "ingress" else EGRESS_PEER_KINDS
    domain_names = dialect.domain_names and direction == "egress"
    parse_ports = _PORT_PARSERS[dialect.ports_field]
    parsed = []
    for i, rule in enumerate(rules):
        where = f"{path}[{i}]"
        if not isinstance(rule, Mapping):
            raise InvalidSpec(where, "must be a rule object")
        # A rule field the version does not define is refused: pruned (as an
        # API server would), a `protocols` in a v1alpha1 rule or a `ports` in
        # a v1alpha2 one would widen the rule to every port.
        _known_fields(rule, where, ("name", "action", peers_field, dialect.ports_field))
        name = rule.get("name", "")
        if not isinstance(name, str) or len(name) > 100:
            raise InvalidSpec(f"{where}.name", f"{name!r} must be a string of at most 100 characters "
                                               "(quote names like no, on, 1 in YAML)")
        action = rule.get("action")
        if action is None:
            raise InvalidSpec(f"{where}.action", "Required value")
        if not isinstance(action, str) or action not in dialect.actions:
            raise InvalidSpec(f"{where}.action", f"Unsupported value: {action!r}: supported values: "
                                                 + ", ".join(f'"{a}"' for a in dialect.actions))
        peers = rule.get(peers_field)
        if not isinstance(peers, list) or not peers:
            raise InvalidSpec(f"{where}.{peers_field}", "Required value: must contain at least one peer")
        if len(peers) > dialect.max_items:
            raise InvalidSpec(f"{where}.{peers_field}", f"must have at most {dialect.max_items} items")
        ports_path = f"{where}.{dialect.ports_field}"
        action = dialect.actions[action]
        parsed_peers, named_domains = [], []
        for j, peer in enumerate(peers):
            ppath = f"{where}.{peers_field}[{j}]"
            if domain_names and isinstance(peer, Mapping) and peer.get(DOMAIN_NAMES) is not None:
                _one_of(peer, ppath, (*peer_kinds, DOMAIN_NAMES))
                _domain_names(peer[DOMAIN_NAMES], f"{ppath}.{DOMAIN_NAMES}")
                named_domains.append(f"{ppath}.{DOMAIN_NAMES}")
                continue
            parsed_peers.append(_parse_peer(peer, ppath, peer_kinds))
        if named_domains:
            action, parsed_peers = _without_domain_names(action, parsed_peers, named_domains, notes)
        parsed.append(AdminRule(name, action, tuple(parsed_peers),
                                parse_ports(rule.get(dialect.ports_field), ports_path, dialect.max_items)))
    return tuple(parsed)


# v1alpha2 egress peers by DNS name (experimental). tailor has no DNS
# interception, so it cannot know which addresses a name stands for; it
# follows the API's rule for peers an implementation cannot honour: an Accept
# rule's such peer matches nothing, a Deny or Pass rule denies every address.
DOMAIN_NAMES = "domainNames"
ANY_ADDRESS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def _domain_names(value, path: str) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise InvalidSpec(path, "must be a list of at least one domain name")
    if len(value) > MAX_NETWORKS:
        raise InvalidSpec(path, f"must have at most {MAX_NETWORKS} items")


def _without_domain_names(action: str, peers: list, where: list[str], notes: list[str]):
    if action == ALLOW:
        notes.extend(f"{w}: not enforced (tailor does not resolve domain names): matches no address"
                     for w in where)
        return action, peers
    notes.extend(f"{w}: tailor does not resolve domain names: this {action} rule denies every address"
                 for w in where)
    return DENY, [AdminPeer(PeerKind.NETWORKS, networks=ANY_ADDRESS)]


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


def _port_list(port_list, path: str, max_items: int) -> list | None:
    if port_list is None:
        return None
    if not isinstance(port_list, list):
        raise InvalidSpec(path, "must be a list of ports")
    if not port_list:
        # The API gives an explicit empty list no meaning; refuse rather than guess.
        raise InvalidSpec(path, "must contain at least one port when present (omit it to match all ports)")
    if len(port_list) > max_items:
        raise InvalidSpec(path, f"must have at most {max_items} items")
    return port_list


def _parse_ports(port_list, path: str, max_items: int) -> tuple[ports_.PortMatch, ...] | None:
    """v1alpha1 `ports`: portNumber, portRange or namedPort."""
    port_list = _port_list(port_list, path, max_items)
    if port_list is None:
        return None
    return tuple(_parse_port(p, f"{path}[{i}]") for i, p in enumerate(port_list))


def _parse_protocols(port_list, path: str, max_items: int) -> tuple[ports_.PortMatch, ...] | None:
    """v1alpha2 `protocols`: each exactly one of tcp / udp / sctp (with a
    destinationPort number or range) or destinationNamedPort."""
    port_list = _port_list(port_list, path, max_items)
    if port_list is None:
        return None
    out = []
    for i, entry in enumerate(port_list):
        where = f"{path}[{i}]"
        field = _one_of(entry, where, ("tcp", "udp", "sctp", "destinationNamedPort"))
        value = entry[field]
        if field == "destinationNamedPort":
            # The CRD sets no pattern: any string is stored, and one that is
            # no valid port name names no container port, so matches nothing.
            if not isinstance(value, str):
                raise InvalidSpec(f"{where}.{field}", "must be a string")
            out.append(ports_.PortMatch(None, name=value))
            continue
        where = f"{where}.{field}"
        if not isinstance(value, Mapping) or value.get("destinationPort") is None:
            raise InvalidSpec(f"{where}.destinationPort", "Required value")
        out.append(_destination_port(field.upper(), value["destinationPort"], f"{where}.destinationPort"))
    return tuple(out)


_PORT_PARSERS = {"ports": _parse_ports, "protocols": _parse_protocols}


def _destination_port(protocol: str, port, path: str) -> ports_.PortMatch:
    kind = _one_of(port, path, ("number", "range"))
    if kind == "number":
        number = ports_.parse_port_number(port["number"], f"{path}.number")
        return ports_.PortMatch(protocol, number, number)
    return _port_range(protocol, port["range"], f"{path}.range")


def _port_range(protocol: str, value, path: str) -> ports_.PortMatch:
    if not isinstance(value, Mapping):
        raise InvalidSpec(path, "must be an object with start and end")
    for field in ("start", "end"):
        if value.get(field) is None:
            raise InvalidSpec(f"{path}.{field}", "Required value")
    start = ports_.parse_port_number(value["start"], f"{path}.start")
    end = ports_.parse_port_number(value["end"], f"{path}.end")
    if start >= end:
        raise InvalidSpec(path, f"start ({start}) must be less than end ({end})")
    return ports_.PortMatch(protocol, start, end)


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
    return _port_range(protocol, value, where)
