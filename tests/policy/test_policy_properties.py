"""Properties of the model over random policies (NetworkPolicy, ANP, BANP and
ClusterNetworkPolicy of both tiers; hypothesis):
- port interval sets agree with point queries (at boundaries and random ports);
- adding a NetworkPolicy never removes a connection for pods it does not newly isolate;
- connectivity() agrees with allowed_ports and its text round-trips;
- v1alpha1 ANPs and the BANP, rewritten as the v1alpha2 ClusterNetworkPolicies
  that say the same (Admin tier, same priority; Baseline tier, last), allow
  exactly the same ports between every pair."""
from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_world import topology
from tailor.operator import policy
from tailor.operator.cluster import manifests
from tailor.operator.cluster.ports import PROTOCOLS
from tailor.operator.cluster.state import ClusterState
from tailor.operator.policy import reachability

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.sampled_from(["a", "b", "c"])
ns_values = st.sampled_from(["x", "y", "z"])


def selector(value_strategy, key):
    return st.one_of(
        st.just({}),
        value_strategy.map(lambda v: {"matchLabels": {key: v}}),
        st.tuples(st.sampled_from(["In", "NotIn"]), st.lists(value_strategy, min_size=1, max_size=2, unique=True))
        .map(lambda t: {"matchExpressions": [{"key": key, "operator": t[0], "values": t[1]}]}),
        st.sampled_from(["Exists", "DoesNotExist"]).map(
            lambda op: {"matchExpressions": [{"key": key, "operator": op}]}))


pod_selector = selector(values, "pod")
ns_selector = selector(ns_values, "ns")
protocol = st.sampled_from(PROTOCOLS)
number = st.integers(78, 84)
port_name = st.sampled_from(["serve-80-tcp", "serve-81-udp", "serve-80-sctp", "missing"])

np_port = st.one_of(
    st.builds(lambda p: {"protocol": p}, protocol),
    st.builds(lambda p, n: {"protocol": p, "port": n}, protocol, number),
    st.builds(lambda p, n, w: {"protocol": p, "port": n, "endPort": n + w}, protocol, number, st.integers(0, 3)),
    st.builds(lambda p, n: {"protocol": p, "port": n}, protocol, port_name),
    st.builds(lambda n: {"port": n, "endPort": 65535}, st.integers(1, 65535)),
)
cidr_peer = st.builds(
    lambda k, ex: {"ipBlock": {"cidr": f"10.0.{k}.0/24", **({"except": [f"10.0.{k}.{10 + ex}/32"]} if ex < 3 else {})}},
    st.integers(0, 2), st.integers(0, 4))
np_peer = st.one_of(
    pod_selector.map(lambda s: {"podSelector": s}),
    ns_selector.map(lambda s: {"namespaceSelector": s}),
    st.builds(lambda p, n: {"podSelector": p, "namespaceSelector": n}, pod_selector, ns_selector),
    cidr_peer)
np_rule = st.fixed_dictionaries({}, optional={"peers": st.lists(np_peer, max_size=2),
                                              "ports": st.lists(np_port, max_size=2)})


def _rule(peers_field):
    return np_rule.map(lambda r: {k if k != "peers" else peers_field: v for k, v in r.items()})


@st.composite
def network_policy(draw, name):
    spec = {"podSelector": draw(pod_selector)}
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(_rule("from"), max_size=2))
    if draw(st.booleans()):
        spec["egress"] = draw(st.lists(_rule("to"), max_size=2))
    if draw(st.booleans()):
        spec["policyTypes"] = draw(st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": draw(ns_values)}, "spec": spec}


anp_port = st.one_of(
    st.builds(lambda p, n: {"portNumber": {"protocol": p, "port": n}}, protocol, number),
    st.builds(lambda p, n, w: {"portRange": {"protocol": p, "start": n, "end": n + w}}, protocol, number,
              st.integers(1, 3)),
    port_name.map(lambda n: {"namedPort": n}))
anp_peer = st.one_of(
    ns_selector.map(lambda s: {"namespaces": s}),
    st.builds(lambda n, p: {"pods": {"namespaceSelector": n, "podSelector": p}}, ns_selector, pod_selector))


def anp_rules(actions, egress):
    peer = st.one_of(anp_peer, cidr_peer.map(lambda c: {"networks": [c["ipBlock"]["cidr"]]})) if egress else anp_peer
    field = "to" if egress else "from"
    return st.lists(st.builds(
        lambda a, peers, ports: {"action": a, field: peers, **({"ports": ports} if ports else {})},
        st.sampled_from(actions), st.lists(peer, min_size=1, max_size=2), st.lists(anp_port, max_size=2)),
        max_size=2)


cnp_protocol = st.one_of(
    st.builds(lambda p, n: {p.lower(): {"destinationPort": {"number": n}}}, protocol, number),
    st.builds(lambda p, n, w: {p.lower(): {"destinationPort": {"range": {"start": n, "end": n + w}}}},
              protocol, number, st.integers(1, 3)),
    port_name.map(lambda n: {"destinationNamedPort": n}))
# A v1alpha2 `pods` subject or peer may leave its namespaceSelector out (all namespaces).
cnp_pods = st.one_of(
    st.builds(lambda n, p: {"pods": {"namespaceSelector": n, "podSelector": p}}, ns_selector, pod_selector),
    pod_selector.map(lambda p: {"pods": {"podSelector": p}}))
cnp_subject = st.one_of(ns_selector.map(lambda s: {"namespaces": s}), cnp_pods)


def cnp_rules(egress):
    peer = st.one_of(ns_selector.map(lambda s: {"namespaces": s}), cnp_pods)
    if egress:
        peer = st.one_of(peer, cidr_peer.map(lambda c: {"networks": [c["ipBlock"]["cidr"]]}))
    field = "to" if egress else "from"
    return st.lists(st.builds(
        lambda a, peers, protocols: {"action": a, field: peers, **({"protocols": protocols} if protocols else {})},
        st.sampled_from(["Accept", "Deny", "Pass"]), st.lists(peer, min_size=1, max_size=2),
        st.lists(cnp_protocol, max_size=2)),
        max_size=2)


@st.composite
def cluster_network_policy(draw, name, tier, priority):
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name},
            "spec": {"tier": tier, "priority": priority, "subject": draw(cnp_subject),
                     "ingress": draw(cnp_rules(False)), "egress": draw(cnp_rules(True))}}


@st.composite
def admin_policies(draw):
    """Up to two Admin-tier policies (ANPs, or ClusterNetworkPolicies of the
    Admin tier) and up to two Baseline-tier ones (the BANP, or CNPs of the
    Baseline tier). ANPs may tie (tailor orders ties by name); a CNP's
    priority is unique in its tier, as the API leaves ties undefined."""
    found = []
    admins = [draw(st.booleans()) for _ in range(draw(st.integers(0, 2)))]     # True: an ANP
    taken = set()
    for i, is_anp in enumerate(admins):
        if is_anp:
            priority = draw(st.integers(0, 3))
            taken.add(priority)
            found.append({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
                          "metadata": {"name": f"anp-{i}"},
                          "spec": {"priority": priority,
                                   "subject": {"namespaces": draw(ns_selector)},
                                   "ingress": draw(anp_rules(["Allow", "Deny", "Pass"], False)),
                                   "egress": draw(anp_rules(["Allow", "Deny", "Pass"], True))}})
    for i, is_anp in enumerate(admins):
        if not is_anp:
            priority = draw(st.sampled_from([p for p in range(5) if p not in taken]))
            taken.add(priority)
            found.append(draw(cluster_network_policy(f"cnp-{i}", "Admin", priority)))
    baselines = [draw(st.booleans()) for _ in range(draw(st.integers(0, 2)))]  # True: the BANP
    taken = set()
    for i, is_banp in enumerate(baselines):
        if is_banp and i == baselines.index(True):
            found.append({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
                          "metadata": {"name": "default"},
                          "spec": {"subject": {"namespaces": draw(ns_selector)},
                                   "ingress": draw(anp_rules(["Allow", "Deny"], False)),
                                   "egress": draw(anp_rules(["Allow", "Deny"], True))}})
        elif not is_banp:
            priority = draw(st.sampled_from([p for p in range(5) if p not in taken]))
            taken.add(priority)
            found.append(draw(cluster_network_policy(f"baseline-{i}", "Baseline", priority)))
    return found


def as_cnp(doc: dict) -> dict:
    """The ClusterNetworkPolicy that says what the v1alpha1 ANP or BANP `doc`
    says: an ANP in the Admin tier at its priority, the BANP in the Baseline
    tier after everything; Allow is Accept, `ports` are `protocols`."""
    spec = doc["spec"]
    baseline = doc["kind"] == "BaselineAdminNetworkPolicy"
    out = {"tier": "Baseline" if baseline else "Admin", "priority": 1000 if baseline else spec["priority"],
           "subject": spec["subject"]}
    for direction in ("ingress", "egress"):
        if direction in spec:
            out[direction] = [_as_cnp_rule(r) for r in spec[direction]]
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": dict(doc["metadata"]), "spec": out}


def _as_cnp_rule(rule: dict) -> dict:
    out = {k: v for k, v in rule.items() if k != "ports"}
    out["action"] = "Accept" if rule["action"] == "Allow" else rule["action"]
    if "ports" in rule:
        out["protocols"] = [_as_cnp_protocol(p) for p in rule["ports"]]
    return out


def _as_cnp_protocol(port: dict) -> dict:
    if "namedPort" in port:
        return {"destinationNamedPort": port["namedPort"]}
    if "portNumber" in port:
        number = port["portNumber"]
        return {number["protocol"].lower(): {"destinationPort": {"number": number["port"]}}}
    span = port["portRange"]
    return {span["protocol"].lower(): {"destinationPort": {"range": {"start": span["start"], "end": span["end"]}}}}


@st.composite
def v1alpha1_policies(draw):
    """Up to three ANPs (priorities may tie), with namespaces or pods
    subjects, and maybe the BANP."""
    subject = st.one_of(ns_selector.map(lambda s: {"namespaces": s}),
                        st.builds(lambda n, p: {"pods": {"namespaceSelector": n, "podSelector": p}},
                                  ns_selector, pod_selector))
    found = [{"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
              "metadata": {"name": f"anp-{i}"},
              "spec": {"priority": draw(st.integers(0, 3)), "subject": draw(subject),
                       "ingress": draw(anp_rules(["Allow", "Deny", "Pass"], False)),
                       "egress": draw(anp_rules(["Allow", "Deny", "Pass"], True))}}
             for i in range(draw(st.integers(0, 3)))]
    if draw(st.booleans()):
        found.append({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
                      "metadata": {"name": "default"},
                      "spec": {"subject": draw(subject),
                               "ingress": draw(anp_rules(["Allow", "Deny"], False)),
                               "egress": draw(anp_rules(["Allow", "Deny"], True))}})
    return found


@st.composite
def policy_set(draw):
    nps = [draw(network_policy(f"np-{i}")) for i in range(draw(st.integers(0, 3)))]
    return nps + draw(admin_policies())


def build(objects) -> ClusterState:
    state = ClusterState()
    manifests.apply(state, [("topology", d) for d in topology()] + [("random", o) for o in objects])
    return state


pod_refs = st.sampled_from([f"{n}/{p}" for n in "xyz" for p in "abc"])


@SETTINGS
@given(policy_set(), pod_refs, pod_refs, protocol, st.lists(st.integers(1, 65535), max_size=5))
def test_intervals_agree_with_point_queries(objects, src_ref, dst_ref, proto, extra_ports):
    state = build(objects)
    src, dst = state.find_pod(src_ref), state.find_pod(dst_ref)
    ranges = policy.allowed_ports(state, src, dst, proto)
    # Sorted, disjoint, not adjacent (merged), within 1-65535.
    flat = [p for r in ranges for p in r]
    assert flat == sorted(flat) and all(lo <= hi for lo, hi in ranges)
    assert all(b[0] > a[1] + 1 for a, b in zip(ranges, ranges[1:]))
    probes = {1, 65535, *extra_ports} | {p + d for lo, hi in ranges for p in (lo, hi) for d in (-1, 0, 1)}
    probes |= {p + d for p in range(76, 87) for d in (0,)}
    for port in sorted(p for p in probes if 1 <= p <= 65535):
        assert reachability.contains(ranges, port) == policy.connection_allowed(state, src, dst, proto, port), port


@SETTINGS
@given(policy_set(), network_policy("added"), protocol, st.sampled_from([79, 80, 81, 82, 1000]))
def test_adding_a_networkpolicy_only_removes_what_it_newly_isolates(objects, added, proto, port):
    before = build(objects)
    after = build(objects + [added])
    for src, dst in itertools.permutations(before.sorted_pods(), 2):
        if not policy.connection_allowed(before, src, dst, proto, port):
            continue
        newly_in = policy.isolation(after, dst)[0] and not policy.isolation(before, dst)[0]
        newly_out = policy.isolation(after, src)[1] and not policy.isolation(before, src)[1]
        if not (newly_in or newly_out):
            assert policy.connection_allowed(after, after.find_pod(src.ref), after.find_pod(dst.ref), proto, port), \
                (src.ref, dst.ref)


@settings(max_examples=15, deadline=None)
@given(policy_set())
def test_connectivity_matches_allowed_ports(objects):
    state = build(objects)
    listed = {(c["src"], c["dst"], c["protocol"]): c["ports"] for c in policy.connectivity(state)}
    for src, dst in itertools.permutations(state.sorted_pods(), 2):
        for proto in PROTOCOLS:
            ranges = policy.allowed_ports(state, src, dst, proto)
            text = listed.get((src.ref, dst.ref, proto))
            assert (text is None) == (not ranges)
            if text is not None:
                assert policy.parse_ranges(text) == ranges and policy.format_ranges(ranges) == text
    assert all(s != d for s, d, _ in listed)


@SETTINGS
@given(st.integers(0, 2).flatmap(lambda n: st.tuples(*(network_policy(f"np-{i}") for i in range(n)))),
       v1alpha1_policies())
def test_cluster_network_policies_mean_what_their_v1alpha1_forms_mean(nps, olds):
    before = build([*nps, *olds])
    after = build([*nps, *(as_cnp(d) for d in olds)])
    assert not after.admin_policies and after.baseline is None
    for src, dst in itertools.permutations(before.sorted_pods(), 2):
        for proto in PROTOCOLS:
            assert (policy.allowed_ports(after, after.find_pod(src.ref), after.find_pod(dst.ref), proto)
                    == policy.allowed_ports(before, src, dst, proto)), (src.ref, dst.ref, proto)


def test_format_ranges():
    assert policy.format_ranges([(1, 79), (81, 65535)]) == "1-79,81-65535"
    assert policy.format_ranges([(80, 80)]) == "80"
    assert policy.parse_ranges("80,90-91") == [(80, 80), (90, 91)]
    assert policy.parse_ranges("") == []
