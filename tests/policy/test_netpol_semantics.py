"""NetworkPolicy networking.k8s.io/v1 semantics, as tables of
{policies, connections and whether they are allowed}.

Topology (policy_world): namespaces x, y, z (labels ns=<name>), pods a, b, c
(labels pod=<name>) in each, serving 80 and 81 on TCP, UDP and SCTP under the
names serve-<port>-<proto>. Pod IPs are 10.0.<ns index>.<10 + pod index>.
"""
import pytest

from policy_world import all_pairs, allowed, reachable, world
from tailor.operator import policy


def np(name, ns, spec):
    return f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n" \
        + "\n".join("  " + line for line in spec.strip("\n").splitlines()) + "\n---\n"


CASES = [
    ("no-policy-allows-all", "", [
        ("x/a", "y/b", "TCP", 80, True), ("y/c", "x/a", "UDP", 12345, True)]),
    ("absent-ingress-with-default-types-denies-ingress", np("deny", "x", "podSelector: {}"), [
        ("y/a", "x/a", "TCP", 80, False), ("x/b", "x/a", "TCP", 80, False),
        ("x/a", "y/a", "TCP", 80, True)]),  # egress of x/a not isolated
    ("empty-ingress-list-denies-ingress", np("deny", "x", "podSelector: {}\ningress: []"), [
        ("y/a", "x/a", "TCP", 80, False), ("x/a", "y/a", "TCP", 80, True)]),
    ("empty-rule-allows-all-ingress", np("all", "x", "podSelector: {}\ningress: [{}]"), [
        ("y/a", "x/a", "TCP", 80, True), ("z/c", "x/b", "SCTP", 9, True), ("203.0.113.9", "x/a", "UDP", 5, True)]),
    ("empty-from-list-means-all-sources", np("all", "x", "podSelector: {}\ningress: [{from: [], ports: [{port: 80}]}]"), [
        ("y/a", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 81, False), ("203.0.113.9", "x/a", "TCP", 80, True)]),
    ("empty-ports-list-means-all-ports", np("p", "x", "podSelector: {}\ningress: [{from: [{podSelector: {}}], ports: []}]"), [
        ("x/b", "x/a", "UDP", 7, True), ("y/b", "x/a", "UDP", 7, False)]),
    ("egress-only-types-leave-ingress-open", np("e", "x", "podSelector: {}\npolicyTypes: [Egress]"), [
        ("y/a", "x/a", "TCP", 80, True), ("x/a", "y/a", "TCP", 80, False), ("x/a", "x/b", "TCP", 80, False)]),
    ("egress-rules-default-policy-types-to-both", np("e", "x", "podSelector: {}\negress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"), [
        ("x/a", "y/a", "TCP", 80, True), ("x/a", "z/a", "TCP", 80, False), ("y/a", "x/a", "TCP", 80, False)]),
    ("empty-egress-list-does-not-default-egress", np("e", "x", "podSelector: {}\negress: []"), [
        ("x/a", "z/a", "TCP", 80, True), ("z/a", "x/a", "TCP", 80, False)]),
    ("policy-types-egress-ignores-ingress-rules", np("e", "x", "podSelector: {}\npolicyTypes: [Egress]\ningress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"), [
        ("y/a", "x/a", "TCP", 80, True), ("x/a", "y/a", "TCP", 80, False)]),
    ("pod-selector-peer-is-same-namespace-only", np("p", "x", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"), [
        ("x/b", "x/a", "TCP", 80, True), ("y/b", "x/a", "TCP", 80, False), ("x/c", "x/a", "TCP", 80, False),
        ("y/b", "x/b", "TCP", 80, True)]),  # x/b is not selected
    ("namespace-selector-peer-is-all-pods-there", np("n", "x", "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"), [
        ("y/a", "x/a", "TCP", 80, True), ("y/c", "x/b", "TCP", 80, True), ("x/b", "x/a", "TCP", 80, False),
        ("z/a", "x/a", "TCP", 80, False)]),
    ("both-selectors-in-one-peer-are-anded", np("and", "x", "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]"), [
        ("y/b", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 80, False), ("x/b", "x/a", "TCP", 80, False),
        ("z/b", "x/a", "TCP", 80, False)]),
    ("two-peers-are-ored", np("or", "x", "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]"), [
        ("y/a", "x/a", "TCP", 80, True), ("x/b", "x/a", "TCP", 80, True), ("z/b", "x/a", "TCP", 80, False),
        ("x/c", "x/a", "TCP", 80, False)]),
    ("empty-namespace-selector-is-every-namespace", np("n", "x", "podSelector: {}\ningress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}]}]"), [
        ("z/c", "x/a", "TCP", 80, True), ("y/c", "x/a", "TCP", 80, True), ("z/b", "x/a", "TCP", 80, False)]),
    ("namespace-name-label-is-set-by-default", np("n", "x", "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]"), [
        ("z/a", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 80, False)]),
    ("numeric-port-and-protocol-default-tcp", np("p", "x", "podSelector: {}\ningress: [{ports: [{port: 81}]}]"), [
        ("y/a", "x/a", "TCP", 81, True), ("y/a", "x/a", "TCP", 80, False), ("y/a", "x/a", "UDP", 81, False)]),
    ("protocol-only-port-is-every-port-of-it", np("p", "x", "podSelector: {}\ningress: [{ports: [{protocol: UDP}]}]"), [
        ("y/a", "x/a", "UDP", 1, True), ("y/a", "x/a", "UDP", 65535, True), ("y/a", "x/a", "TCP", 80, False)]),
    ("sctp-port", np("p", "x", "podSelector: {}\ningress: [{ports: [{protocol: SCTP, port: 80}]}]"), [
        ("y/a", "x/a", "SCTP", 80, True), ("y/a", "x/a", "TCP", 80, False)]),
    ("end-port-range-is-inclusive", np("p", "x", "podSelector: {}\ningress: [{ports: [{port: 80, endPort: 90}]}]"), [
        ("y/a", "x/a", "TCP", 79, False), ("y/a", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 90, True),
        ("y/a", "x/a", "TCP", 91, False)]),
    ("named-port-resolves-on-destination", np("p", "x", "podSelector: {}\ningress: [{ports: [{port: serve-81-tcp}]}]"), [
        ("y/a", "x/a", "TCP", 81, True), ("y/a", "x/a", "TCP", 80, False)]),
    ("named-port-needs-matching-protocol", np("p", "x", "podSelector: {}\ningress: [{ports: [{port: serve-81-udp}]}]"), [
        ("y/a", "x/a", "TCP", 81, False), ("y/a", "x/a", "UDP", 81, False)]),  # protocol defaults to TCP
    ("named-port-with-its-protocol", np("p", "x", "podSelector: {}\ningress: [{ports: [{port: serve-81-udp, protocol: UDP}]}]"), [
        ("y/a", "x/a", "UDP", 81, True), ("y/a", "x/a", "TCP", 81, False)]),
    ("unknown-named-port-matches-nothing", np("p", "x", "podSelector: {}\ningress: [{ports: [{port: nope}]}]"), [
        ("y/a", "x/a", "TCP", 80, False), ("y/a", "x/a", "TCP", 81, False)]),
    ("egress-named-port-resolves-on-destination-pod", np("p", "x", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress: [{ports: [{port: serve-80-tcp}]}]"), [
        ("x/a", "y/a", "TCP", 80, True), ("x/a", "y/a", "TCP", 81, False)]),
    ("ipblock-matches-pod-addresses", np("ip", "x", "podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.1.0/24}}]}]"), [
        ("y/a", "x/a", "TCP", 80, True), ("z/a", "x/a", "TCP", 80, False), ("10.0.1.99", "x/a", "TCP", 80, True)]),
    ("ipblock-except", np("ip", "x", "podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.11/32]}}]}]"), [
        ("y/a", "x/a", "TCP", 80, True), ("y/b", "x/a", "TCP", 80, False), ("z/c", "x/a", "TCP", 80, True),
        ("192.168.0.1", "x/a", "TCP", 80, False)]),
    ("egress-ipblock-except", np("ip", "x", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress: [{to: [{ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.12/32]}}]}]"), [
        ("x/a", "z/a", "TCP", 80, True), ("x/a", "z/c", "TCP", 80, False), ("x/a", "y/a", "TCP", 80, False)]),
    ("allows-are-additive-across-policies",
     np("one", "x", "podSelector: {}\ningress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]")
     + np("two", "x", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]"), [
        ("x/b", "x/a", "TCP", 80, True), ("z/a", "x/a", "TCP", 80, True), ("z/a", "x/c", "TCP", 80, False),
        ("y/a", "x/a", "TCP", 80, False)]),
    ("deny-all-plus-allow-is-allow",
     np("deny", "x", "podSelector: {}") + np("allow", "x", "podSelector: {}\ningress: [{ports: [{port: 80}]}]"), [
        ("y/a", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 81, False)]),
    ("egress-and-ingress-must-both-allow",
     np("eg", "x", "podSelector: {matchLabels: {pod: a}}\negress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]")
     + np("in", "y", "podSelector: {matchLabels: {pod: b}}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]"), [
        ("x/a", "y/a", "TCP", 80, True),    # egress allowed, y/a not isolated
        ("x/a", "y/b", "TCP", 80, False),   # egress allowed, ingress denied
        ("z/a", "y/b", "TCP", 80, True),
        ("x/a", "z/a", "TCP", 80, False),   # egress denied
        ("x/b", "y/b", "TCP", 80, False)]),
    ("policy-in-other-namespace-does-not-select", np("deny", "y", "podSelector: {}"), [
        ("z/a", "x/a", "TCP", 80, True), ("z/a", "y/a", "TCP", 80, False)]),
    ("match-expressions-select-pods", np("me", "x", "podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}\ningress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}}]}]"), [
        ("x/b", "x/a", "TCP", 80, True), ("x/c", "x/a", "TCP", 80, False), ("x/a", "x/c", "TCP", 80, True)]),
]


@pytest.mark.parametrize("policies, checks", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_networkpolicy_semantics(policies, checks):
    state = world(policies)
    wrong = [(src, dst, proto, port, want) for src, dst, proto, port, want in checks
             if allowed(state, src, dst, proto, port) is not want]
    assert not wrong, f"expected (src, dst, proto, port, allowed) but got the opposite: {wrong}"


def test_default_deny_ingress_matrix():
    state = world(np("deny", "x", "podSelector: {}"))
    expected = {(s, d) for s, d in all_pairs(state) if not d.startswith("x/")}
    assert reachable(state) == expected


def test_loopback_is_always_allowed():
    state = world(np("deny", "x", "podSelector: {}\npolicyTypes: [Ingress, Egress]"))
    a = state.find_pod("x/a")
    v = policy.connection_verdict(state, a, a, "TCP", 80)
    assert v.allowed and v.ingress.tier == "loopback"
    assert not policy.connection_allowed(state, a, state.find_pod("x/b"), "TCP", 80)
    assert not policy.ingress_verdict(state, a, a, "TCP", 80).allowed  # the pod's own program would deny


def test_verdict_names_the_deciding_rule():
    state = world(np("deny", "x", "podSelector: {}") + np("web", "x", "podSelector: {}\ningress: [{}, {ports: [{port: 80}]}]"))
    v = policy.ingress_verdict(state, state.find_pod("x/a"), state.find_pod("y/a"), "TCP", 80)
    assert (v.allowed, v.tier, v.policy, v.rule) == (True, "NetworkPolicy", "x/web", "spec.ingress[0]")
    state = world(np("deny", "x", "podSelector: {}"))
    v = policy.connection_verdict(state, state.find_pod("y/a"), state.find_pod("x/a"), "TCP", 80)
    assert not v.allowed and v.deciding.direction == "ingress" and "x/deny" in v.deciding.reason
    assert v.egress.tier == "default"


def test_isolation_and_selecting():
    state = world(np("in", "x", "podSelector: {matchLabels: {pod: a}}")
                  + np("out", "x", "podSelector: {}\npolicyTypes: [Egress]"))
    assert policy.isolation(state, state.find_pod("x/a")) == (True, True)
    assert policy.isolation(state, state.find_pod("x/b")) == (False, True)
    assert policy.isolation(state, state.find_pod("y/b")) == (False, False)
    assert [p.name for p in policy.policies_selecting(state, state.find_pod("x/a")).network] == ["in", "out"]


def test_external_destination_and_ipv6():
    dual = ("apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: x, annotations: "
            "{tailor.dev/ip-families: 'IPv4,IPv6'}}\nspec: {containers: []}\n---\n")
    state = world(dual + np("out", "x", "podSelector: {}\negress: [{to: [{ipBlock: {cidr: '2001:db8::/32'}}]}]"))
    d = state.find_pod("x/d")
    assert d.has_ipv6 and not state.find_pod("x/a").has_ipv6
    assert policy.egress_verdict(state, d, "2001:db8::1", "TCP", 443).allowed
    assert not policy.egress_verdict(state, d, "192.0.2.1", "TCP", 443).allowed
    with pytest.raises(ValueError, match="no IPv6 address"):
        policy.egress_verdict(state, state.find_pod("x/a"), "2001:db8::1", "TCP", 443)
    # An external destination has no containerPorts: named ports match nothing there.
    state = world(np("out", "x", "podSelector: {}\negress: [{ports: [{port: serve-80-tcp}]}]"))
    assert not policy.egress_verdict(state, state.find_pod("x/a"), "192.0.2.1", "TCP", 80).allowed


def test_bad_arguments():
    state = world()
    a, b = state.find_pod("x/a"), state.find_pod("x/b")
    for proto, port in (("ICMP", 1), ("TCP", 0), ("TCP", 65536)):
        with pytest.raises(ValueError):
            policy.connection_allowed(state, a, b, proto, port)
    with pytest.raises(ValueError, match="no IPv6 address"):
        policy.connection_allowed(state, a, b, "TCP", 80, family=6)
