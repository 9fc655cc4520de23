"""Hypothesis strategies for random clusters: namespaces, pods and the
policies over them, as manifest dicts that `manifests.apply` accepts.

The vocabularies are small on purpose, so that selectors hit often, ipBlocks
cover pod addresses, named ports resolve and port boundaries line up with
declared ports:

- namespaces ns-a, ns-b, ns-c, labelled from {team: red|blue, env: prod|dev};
- pods p0..p5 labelled from {app: web|db|api, tier: front|back}, declaring
  ports from 53, 80, 81, 443, 8080 over TCP/UDP/SCTP (some named http, dns,
  alt, web), addressed IPv4-only, IPv6-only or dual stack (either order) at
  10.1.<ns>.<base+i> and fd00::<ns>:<base+i> (base 10, 130 or 240), or
  stating no address (the loader allocates from 10.244/16, fd00:10:244::/64
  by the tailor.dev/ip-families annotation);
- some namespaces without a manifest (implicit: only the name label);
- up to four policies drawn from NetworkPolicy, AdminNetworkPolicy, the
  BaselineAdminNetworkPolicy `default` and ClusterNetworkPolicy of either
  tier, whose CIDRs are built around those addresses. ANPs draw priorities
  0-3 and may tie (tailor orders ties by name); a CNP's priority is unique
  in its tier (ties are undefined in the API), from 0-5 or 1000, so it lands
  before, between or after the ANPs. Half the CNP subjects are built to
  select one of the pods (random ones mostly select none). A CNP is sometimes
  named like an ANP of the cluster or `default`: the kinds' names are separate.

`cluster()` draws a `Cluster`: its manifests (`docs`) and a `state()` to
build; everything is valid, so the loader should accept it.
"""
from __future__ import annotations

import dataclasses
import ipaddress

from hypothesis import strategies as st

from tailor.operator.cluster import manifests
from tailor.operator.cluster.objects import NAMESPACE_NAME_LABEL
from tailor.operator.cluster.ports import PROTOCOLS
from tailor.operator.cluster.state import ClusterState

NAMESPACES = ("ns-a", "ns-b", "ns-c")
NS_LABELS = {"team": ("red", "blue"), "env": ("prod", "dev")}
POD_LABELS = {"app": ("web", "db", "api"), "tier": ("front", "back")}
PORTS = (53, 80, 81, 443, 8080)
# Policy ports also name ports no container declares, one above 32767.
POLICY_PORTS = PORTS + (40000,)
PORT_NAMES = ("http", "dns", "alt", "web")
MISSING_NAME = "missing"
FAMILIES = ((4,), (6,), (4, 6), (6, 4))
HOST_BASES = (10, 130, 240)
V4_PREFIXES = (0, 8, 16, 23, 24, 28, 30, 31, 32)
V6_PREFIXES = (0, 16, 64, 100, 112, 120, 124, 127, 128)
# Addresses outside every pod, so CIDRs sometimes cover no pod at all.
OUTSIDE = ("192.168.7.1", "10.2.0.1", "2001:db8::1", "fd00::7:1")
# Pods that state no address get one from the loader's pools, lowest first.
POOL_ANCHORS = ("10.244.0.1", "10.244.0.2", "fd00:10:244::1", "fd00:10:244::2")
# `auto` pods ask for families with the annotation (absent: IPv4) instead.
AUTO = ({}, {"tailor.dev/ip-families": "IPv4"}, {"tailor.dev/ip-families": "IPv6"},
        {"tailor.dev/ip-families": "IPv4,IPv6"}, {"tailor.dev/ip-families": "IPv6,IPv4"})

protocols = st.sampled_from(PROTOCOLS)


def v4(ns_index: int, host: int) -> str:
    return f"10.1.{ns_index}.{host}"


def v6(ns_index: int, host: int) -> str:
    return f"fd00::{ns_index}:{host:x}"


@dataclasses.dataclass
class Cluster:
    docs: list[dict]

    def state(self, extra: list[dict] = ()) -> ClusterState:
        state = ClusterState()
        manifests.apply(state, [("random.yaml", d) for d in [*self.docs, *extra]])
        return state

    @property
    def pods(self) -> list[dict]:
        return [d for d in self.docs if d["kind"] == "Pod"]

    @property
    def policies(self) -> list[dict]:
        return [d for d in self.docs if d["kind"] not in ("Namespace", "Pod")]


# --- labels and selectors -----------------------------------------------------------
def labels(vocabulary: dict[str, tuple[str, ...]]):
    return st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in vocabulary.items()})


def selector(vocabulary: dict[str, tuple[str, ...]], extra_match_labels=()):
    """A label selector over `vocabulary`: `{}`, matchLabels, matchExpressions
    (In, NotIn, Exists, DoesNotExist), or both."""
    pairs = [(k, v) for k, values in vocabulary.items() for v in values] + list(extra_match_labels)
    keys = st.sampled_from(sorted(vocabulary))

    @st.composite
    def expression(draw):
        key = draw(keys)
        op = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
        if op in ("Exists", "DoesNotExist"):
            return {"key": key, "operator": op}
        values = draw(st.permutations(vocabulary[key]))[:draw(st.integers(1, 2))]
        return {"key": key, "operator": op, "values": values}

    one_label = st.sampled_from(pairs).map(lambda kv: dict([kv]))
    match_labels = st.one_of(one_label, st.tuples(st.sampled_from(pairs), st.sampled_from(pairs)).map(dict))
    # Weighted towards selectors that select something: `{}` and one label.
    return st.one_of(
        st.just({}),
        one_label.map(lambda m: {"matchLabels": m}),
        match_labels.map(lambda m: {"matchLabels": m}),
        st.lists(expression(), min_size=1, max_size=2).map(lambda e: {"matchExpressions": e}),
        st.tuples(match_labels, expression()).map(
            lambda t: {"matchLabels": t[0], "matchExpressions": [t[1]]}))


def pod_selector():
    return selector(POD_LABELS)


def namespace_selector():
    names = [("kubernetes.io/metadata.name", n) for n in NAMESPACES]
    return selector(NS_LABELS, names)


# --- namespaces and pods ------------------------------------------------------------
PORT_ENTRIES = tuple((port, protocol) for port in PORTS for protocol in PROTOCOLS)


@st.composite
def container_ports(draw):
    """Up to three distinct (port, protocol) entries, most of them named
    (names unique within the pod, as the API requires)."""
    entries = draw(st.lists(st.sampled_from(PORT_ENTRIES), max_size=3, unique=True))
    names = draw(st.permutations(PORT_NAMES))
    out = []
    for (port, protocol), name in zip(entries, names):
        entry = {"containerPort": port}
        if protocol != "TCP" or draw(st.booleans()):
            entry["protocol"] = protocol
        if draw(st.integers(0, 2)):
            entry["name"] = name
        out.append(entry)
    return out


def pod_doc(name: str, namespace: str, ns_index: int, host: int, pod_labels: dict,
            ports: list[dict], families: tuple[int, ...] | dict) -> dict:
    """A Pod manifest; `families` in order (primary first), or a dict of
    annotations for a pod that states no address and gets it from the loader."""
    container = {"name": "c", "image": "agnhost"}
    if ports:
        container["ports"] = ports
    doc = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "labels": pod_labels},
           "spec": {"containers": [container]}}
    if isinstance(families, dict):
        if families:
            doc["metadata"]["annotations"] = dict(families)
        return doc
    ips = [v4(ns_index, host) if f == 4 else v6(ns_index, host) for f in families]
    doc["status"] = {"podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]}
    return doc


# --- CIDRs --------------------------------------------------------------------------------
def _anchors(pods: list[dict]) -> list[str]:
    stated = {ip["ip"] for p in pods for ip in (p.get("status") or {}).get("podIPs", ())}
    return sorted(stated) + list(OUTSIDE) + list(POOL_ANCHORS)


@st.composite
def cidr(draw, anchors: list[str], family: int | None = None):
    """A network around one of `anchors` (a pod address, usually)."""
    pool = [a for a in anchors if family is None or ipaddress.ip_address(a).version == family]
    anchor = ipaddress.ip_address(draw(st.sampled_from(pool)))
    prefix = draw(st.sampled_from(V4_PREFIXES if anchor.version == 4 else V6_PREFIXES))
    net = ipaddress.ip_network(f"{anchor}/{prefix}", strict=False)
    # Sometimes written with host bits set, which the API accepts.
    return f"{anchor}/{prefix}" if draw(st.integers(0, 4)) == 0 else str(net)


@st.composite
def ip_block(draw, anchors: list[str]):
    text = draw(cidr(anchors))
    net = ipaddress.ip_network(text, strict=False)
    block = {"cidr": text}
    inside = [a for a in anchors if ipaddress.ip_address(a) in net]
    longer = [p for p in (V4_PREFIXES if net.version == 4 else V6_PREFIXES) if p > net.prefixlen]
    if inside and longer and draw(st.booleans()):
        excepts = set()
        for _ in range(draw(st.integers(1, 2))):
            anchor = draw(st.sampled_from(inside))
            excepts.add(str(ipaddress.ip_network(f"{anchor}/{draw(st.sampled_from(longer))}", strict=False)))
        block["except"] = sorted(excepts)
    return block


# --- NetworkPolicy ------------------------------------------------------------------------
@st.composite
def np_port(draw):
    kind = draw(st.sampled_from(("protocol", "number", "range", "named", "named", "absent-protocol")))
    protocol = draw(protocols)
    if kind == "protocol":
        return {"protocol": protocol}
    if kind == "number":
        return {"protocol": protocol, "port": draw(st.sampled_from(POLICY_PORTS))}
    if kind == "range":
        start = draw(st.sampled_from(POLICY_PORTS))
        end = draw(st.sampled_from([p for p in POLICY_PORTS + (start + 1, 65535) if p >= start]))
        return {"protocol": protocol, "port": start, "endPort": end}
    if kind == "named":
        return {"protocol": protocol, "port": draw(st.sampled_from(PORT_NAMES + (MISSING_NAME,)))}
    return {"port": draw(st.sampled_from(PORTS + PORT_NAMES))}


@st.composite
def np_peer(draw, anchors):
    kind = draw(st.sampled_from(("pod", "namespace", "both", "ipBlock")))
    if kind == "pod":
        return {"podSelector": draw(pod_selector())}
    if kind == "namespace":
        return {"namespaceSelector": draw(namespace_selector())}
    if kind == "both":
        return {"podSelector": draw(pod_selector()), "namespaceSelector": draw(namespace_selector())}
    return {"ipBlock": draw(ip_block(anchors))}


@st.composite
def np_rule(draw, peers_field: str, anchors):
    rule = {}
    peers = draw(st.sampled_from(("absent", "empty", "some")))
    if peers == "empty":
        rule[peers_field] = []
    elif peers == "some":
        rule[peers_field] = draw(st.lists(np_peer(anchors), min_size=1, max_size=3))
    ports = draw(st.sampled_from(("absent", "empty", "some")))
    if ports == "empty":
        rule["ports"] = []
    elif ports == "some":
        rule["ports"] = draw(st.lists(np_port(), min_size=1, max_size=3))
    return rule


@st.composite
def network_policy(draw, name: str, namespaces: list[str], anchors):
    spec = {"podSelector": draw(pod_selector())}
    for field, peers_field in (("ingress", "from"), ("egress", "to")):
        shape = draw(st.sampled_from(("absent", "empty", "some")))
        if shape == "empty":
            spec[field] = []
        elif shape == "some":
            spec[field] = draw(st.lists(np_rule(peers_field, anchors), min_size=1, max_size=3))
    types = draw(st.sampled_from((None, ["Ingress"], ["Egress"], ["Ingress", "Egress"], ["Egress", "Ingress"])))
    if types is not None:
        spec["policyTypes"] = types
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": draw(st.sampled_from(namespaces))}, "spec": spec}


# --- AdminNetworkPolicy / BaselineAdminNetworkPolicy ---------------------------------------
@st.composite
def anp_port(draw):
    kind = draw(st.sampled_from(("portNumber", "portRange", "namedPort", "namedPort")))
    if kind == "portNumber":
        return {"portNumber": {"protocol": draw(protocols), "port": draw(st.sampled_from(POLICY_PORTS))}}
    if kind == "portRange":
        start = draw(st.sampled_from(POLICY_PORTS))
        end = draw(st.sampled_from([p for p in POLICY_PORTS + (start + 1, 65535) if p > start]))
        return {"portRange": {"protocol": draw(protocols), "start": start, "end": end}}
    return {"namedPort": draw(st.sampled_from(PORT_NAMES + (MISSING_NAME,)))}


@st.composite
def anp_peer(draw, egress: bool, anchors):
    kinds = ("namespaces", "pods") + (("networks",) if egress else ())
    kind = draw(st.sampled_from(kinds))
    if kind == "namespaces":
        return {"namespaces": draw(namespace_selector())}
    if kind == "pods":
        return {"pods": {"namespaceSelector": draw(namespace_selector()), "podSelector": draw(pod_selector())}}
    return {"networks": sorted(set(draw(st.lists(cidr(anchors), min_size=1, max_size=2))))}


@st.composite
def admin_rules(draw, actions, egress: bool, peer, ports_field: str, port, min_rules: int = 0):
    """Rules of a cluster-wide policy in either API version: `peer` draws
    a peer, `port` an item of `ports_field` (ports or protocols)."""
    rules = []
    for i in range(draw(st.integers(min_rules, 3))):
        rule = {"action": draw(st.sampled_from(actions)),
                "to" if egress else "from": draw(st.lists(peer, min_size=1, max_size=2))}
        if draw(st.booleans()):
            rule["name"] = f"rule-{i}"
        if draw(st.booleans()):
            rule[ports_field] = draw(st.lists(port, min_size=1, max_size=3))
        rules.append(rule)
    return rules


def anp_rules(actions, egress: bool, anchors):
    return admin_rules(actions, egress, anp_peer(egress, anchors), "ports", anp_port())


@st.composite
def admin_subject(draw):
    if draw(st.booleans()):
        return {"namespaces": draw(namespace_selector())}
    return {"pods": {"namespaceSelector": draw(namespace_selector()), "podSelector": draw(pod_selector())}}


@st.composite
def admin_policy(draw, name: str, anchors, baseline: bool = False, priority: int | None = None):
    actions = ("Allow", "Deny") if baseline else ("Allow", "Deny", "Pass")
    spec = {"subject": draw(admin_subject())}
    if not baseline:
        spec["priority"] = draw(st.integers(0, 3)) if priority is None else priority
    for field in ("ingress", "egress"):
        if draw(st.integers(0, 4)):
            spec[field] = draw(anp_rules(actions, field == "egress", anchors))
    kind = "BaselineAdminNetworkPolicy" if baseline else "AdminNetworkPolicy"
    return {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": kind,
            "metadata": {"name": name}, "spec": spec}


# --- ClusterNetworkPolicy (v1alpha2) -------------------------------------------------------
CNP_PRIORITIES = (0, 1, 2, 3, 4, 5, 1000)


@st.composite
def cnp_protocol(draw):
    """One `protocols` item: tcp/udp/sctp with a destinationPort number or
    range (start < end), or a destinationNamedPort."""
    kind = draw(st.sampled_from(("number", "range", "named", "named")))
    if kind == "named":
        return {"destinationNamedPort": draw(st.sampled_from(PORT_NAMES + (MISSING_NAME,)))}
    protocol = draw(protocols).lower()
    if kind == "number":
        return {protocol: {"destinationPort": {"number": draw(st.sampled_from(POLICY_PORTS))}}}
    start = draw(st.sampled_from(POLICY_PORTS))
    end = draw(st.sampled_from([p for p in POLICY_PORTS + (start + 1, 65535) if p > start]))
    return {protocol: {"destinationPort": {"range": {"start": start, "end": end}}}}


@st.composite
def cnp_pods(draw):
    """A `pods` subject or peer, its namespaceSelector optional (all namespaces)."""
    pods = {"podSelector": draw(pod_selector())}
    if draw(st.booleans()):
        pods["namespaceSelector"] = draw(namespace_selector())
    return {"pods": pods}


@st.composite
def cnp_peer(draw, egress: bool, anchors):
    kinds = ("namespaces", "pods") + (("networks",) if egress else ())
    kind = draw(st.sampled_from(kinds))
    if kind == "namespaces":
        return {"namespaces": draw(namespace_selector())}
    if kind == "pods":
        return draw(cnp_pods())
    return {"networks": sorted(set(draw(st.lists(cidr(anchors), min_size=1, max_size=2))))}


def cnp_rules(egress: bool, anchors):
    """One to three rules, each Accept, Deny or Pass (in either tier)."""
    return admin_rules(("Accept", "Deny", "Pass"), egress, cnp_peer(egress, anchors), "protocols",
                       cnp_protocol(), min_rules=1)


@st.composite
def selecting(draw, selected: dict[str, str]):
    """A selector that the labels `selected` satisfy: matchLabels of some of them ({} if none)."""
    chosen = draw(st.lists(st.sampled_from(sorted(selected)), max_size=2, unique=True)) if selected else []
    return {"matchLabels": {k: selected[k] for k in chosen}} if chosen else {}


@st.composite
def cnp_subject(draw, targets: list[tuple[dict, dict]]):
    """A random subject, or (half the time) one that selects a pod of
    `targets` ((namespace labels, pod labels) pairs): a random subject
    selects nothing two times in three, which leaves the policy untested."""
    if targets and draw(st.booleans()):
        ns_labels, pod_labels = draw(st.sampled_from(targets))
        if draw(st.booleans()):
            return {"namespaces": draw(selecting(ns_labels))}
        pods = {"podSelector": draw(selecting(pod_labels))}
        if draw(st.booleans()):
            pods["namespaceSelector"] = draw(selecting(ns_labels))
        return {"pods": pods}
    if draw(st.booleans()):
        return {"namespaces": draw(namespace_selector())}
    return draw(cnp_pods())


@st.composite
def cluster_network_policy(draw, name: str, tier: str, priority: int, anchors, targets=()):
    spec = {"tier": tier, "priority": priority, "subject": draw(cnp_subject(list(targets)))}
    # Each direction absent, an empty list, or (mostly) one to three rules.
    for field in ("ingress", "egress"):
        shape = draw(st.sampled_from(("absent", "empty", "rules", "rules", "rules")))
        if shape != "absent":
            spec[field] = draw(cnp_rules(field == "egress", anchors)) if shape == "rules" else []
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


# --- whole clusters -------------------------------------------------------------------------
# How often each kind of policy is drawn: NetworkPolicy two in five, as
# before the CNPs, which took half of the ANPs' draws and some of the BANP's.
POLICY_WEIGHTS = {"np": 8, "anp": 4, "cnp-admin": 3, "cnp-baseline": 3, "banp": 2}
POLICY_KINDS = tuple(kind for kind, weight in POLICY_WEIGHTS.items() for _ in range(weight))
STATED_FAMILIES = st.sampled_from(FAMILIES)
# Two in three pods state their addresses.
ANY_FAMILIES = st.one_of(STATED_FAMILIES, STATED_FAMILIES, st.sampled_from(AUTO))


@st.composite
def cluster(draw, min_pods: int = 2, max_pods: int = 6, max_policies: int = 4,
            families=ANY_FAMILIES, implicit_namespaces: bool = True):
    namespaces = list(NAMESPACES[:draw(st.integers(1, 3))])
    # A namespace without a manifest exists implicitly, with only its name label.
    docs = [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": ns, "labels": draw(labels(NS_LABELS))}} for ns in namespaces
            if not implicit_namespaces or ns == namespaces[0] or draw(st.integers(0, 3))]
    # Host parts from 10, 130 or 240 up: the last byte of an address is the
    # high byte of the little-endian words the programs compare.
    base = draw(st.sampled_from(HOST_BASES))
    for i in range(draw(st.integers(min_pods, max_pods))):
        ns_index = draw(st.integers(0, len(namespaces) - 1))
        docs.append(pod_doc(f"p{i}", namespaces[ns_index], ns_index, base + i, draw(labels(POD_LABELS)),
                            draw(container_ports()), draw(families)))
    anchors = _anchors([d for d in docs if d["kind"] == "Pod"])
    ns_labels = {ns: {NAMESPACE_NAME_LABEL: ns} for ns in namespaces}
    for d in docs:
        if d["kind"] == "Namespace":
            ns_labels[d["metadata"]["name"]].update(d["metadata"]["labels"])
    targets = [(ns_labels[d["metadata"]["namespace"]], d["metadata"]["labels"]) for d in docs if d["kind"] == "Pod"]
    # Mostly two or more policies: a cluster without any tests little.
    count = draw(st.sampled_from([n for n in (0, 1, 2, 3, 4, 2, 3, 4, 3, 4) if n <= max_policies]))
    kinds = [draw(st.sampled_from(POLICY_KINDS)) for _ in range(count)]
    if kinds.count("banp") > 1:                      # at most one BANP, and it is `default`
        first = kinds.index("banp")
        kinds = [k for i, k in enumerate(kinds) if k != "banp" or i == first]
    # ANPs first draw their priorities (ties allowed); each CNP then one no
    # other policy of its tier holds.
    anp_priorities = {i: draw(st.integers(0, 3)) for i, k in enumerate(kinds) if k == "anp"}
    taken = {"Admin": set(anp_priorities.values()), "Baseline": set()}
    cnp_names: set[str] = set()
    for i, kind in enumerate(kinds):
        if kind == "np":
            docs.append(draw(network_policy(f"np-{i}", namespaces, anchors)))
        elif kind == "anp":
            docs.append(draw(admin_policy(f"anp-{i}", anchors, priority=anp_priorities[i])))
        elif kind == "banp":
            docs.append(draw(admin_policy("default", anchors, baseline=True)))
        else:
            tier = "Admin" if kind == "cnp-admin" else "Baseline"
            priority = draw(st.sampled_from([p for p in CNP_PRIORITIES if p not in taken[tier]]))
            taken[tier].add(priority)
            # One in four named like an ANP of the cluster or the BANP.
            shared = [n for n in [*(f"anp-{j}" for j in anp_priorities), "default"] if n not in cnp_names]
            name = draw(st.sampled_from(shared)) if shared and draw(st.integers(0, 3)) == 0 else f"cnp-{i}"
            cnp_names.add(name)
            docs.append(draw(cluster_network_policy(name, tier, priority, anchors, targets)))
    return Cluster(docs)


@st.composite
def wide_cluster(draw):
    """A cluster whose programs carry many peer groups and named-port slots:
    an AdminNetworkPolicy `aaa-wide` (priority 0, evaluated first: a CNP at
    0 ties with it, and tailor orders ANPs first; its rules match no pod, so
    the tie decides nothing) holds up to 70 peers per direction and up to 10
    named ports that match nothing (no pod has the `wide` label, no container
    the `wide-*` names), so the random policies' groups land on bit 31, in
    the second and third bitmap words, and their named ports on high slots.
    The verdicts are the random policies'."""
    base = draw(cluster())
    groups = draw(st.integers(0, 70))
    names = draw(st.integers(0, 10))

    def peers(n):
        return [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"wide": f"w{i}"}}}}
                for i in range(max(n, 1))]

    wide = {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
            "metadata": {"name": "aaa-wide"},
            "spec": {"priority": 0, "subject": {"namespaces": {}},
                     "ingress": [{"action": "Deny", "from": peers(groups)}],
                     "egress": [{"action": "Deny", "to": peers(groups),
                                 **({"ports": [{"namedPort": f"wide-{i}"} for i in range(names)]}
                                    if names else {})}]}}
    return Cluster(base.docs + [wide])
