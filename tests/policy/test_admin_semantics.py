"""AdminNetworkPolicy / BaselineAdminNetworkPolicy semantics and their order
against NetworkPolicy: ANP (by priority, first matching rule) -> NetworkPolicy
(if it isolates the pod) -> BANP -> allow."""
import pytest

from policy_world import allowed, world
from tailor.operator import policy


def _yaml(kind, name, body):
    return (f"apiVersion: policy.networking.k8s.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n"
            + "\n".join("  " + line for line in body.strip("\n").splitlines()) + "\n---\n")


def anp(name, priority, body, subject="namespaces: {matchLabels: {ns: x}}"):
    return _yaml("AdminNetworkPolicy", name, f"priority: {priority}\nsubject: {{{subject}}}\n{body}")


def banp(body, subject="namespaces: {matchLabels: {ns: x}}"):
    return _yaml("BaselineAdminNetworkPolicy", "default", f"subject: {{{subject}}}\n{body}")


def np(name, ns, spec):
    return (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            "spec:\n" + "\n".join("  " + line for line in spec.strip("\n").splitlines()) + "\n---\n")


FROM_Y = "from: [{namespaces: {matchLabels: {ns: y}}}]"
NP_ONLY_Y_A = np("only-y-a", "x", "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, "
                                  "podSelector: {matchLabels: {pod: a}}}]}]")

CASES = [
    ("deny-ingress-from-namespace", anp("d", 10, f"ingress: [{{action: Deny, {FROM_Y}}}]"), [
        ("y/a", "x/a", "TCP", 80, False), ("z/a", "x/a", "TCP", 80, True), ("x/a", "y/a", "TCP", 80, True)]),
    ("deny-egress-to-namespace", anp("d", 10, "egress: [{action: Deny, to: [{namespaces: {matchLabels: {ns: z}}}]}]"), [
        ("x/a", "z/a", "TCP", 80, False), ("x/a", "y/a", "TCP", 80, True), ("z/a", "x/a", "TCP", 80, True)]),
    ("lower-priority-number-wins",
     anp("allow", 5, f"ingress: [{{action: Allow, {FROM_Y}}}]") + anp("deny", 10, f"ingress: [{{action: Deny, {FROM_Y}}}]"), [
        ("y/a", "x/a", "TCP", 80, True)]),
    ("lower-priority-number-wins-reversed",
     anp("allow", 10, f"ingress: [{{action: Allow, {FROM_Y}}}]") + anp("deny", 5, f"ingress: [{{action: Deny, {FROM_Y}}}]"), [
        ("y/a", "x/a", "TCP", 80, False)]),
    ("equal-priority-ordered-by-name",
     anp("b-deny", 7, f"ingress: [{{action: Deny, {FROM_Y}}}]") + anp("a-allow", 7, f"ingress: [{{action: Allow, {FROM_Y}}}]"), [
        ("y/a", "x/a", "TCP", 80, True)]),
    ("rule-order-within-policy", anp("r", 1, f"ingress: [{{action: Allow, {FROM_Y}, ports: [{{portNumber: {{port: 80}}}}]}}, "
                                             f"{{action: Deny, {FROM_Y}}}]"), [
        ("y/a", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 81, False)]),
    ("deny-over-networkpolicy-allow",
     anp("d", 1, f"ingress: [{{action: Deny, {FROM_Y}}}]") + np("all", "x", "podSelector: {}\ningress: [{}]"), [
        ("y/a", "x/a", "TCP", 80, False), ("z/a", "x/a", "TCP", 80, True)]),
    ("allow-over-networkpolicy-deny",
     anp("a", 1, f"ingress: [{{action: Allow, {FROM_Y}}}]") + np("deny", "x", "podSelector: {}"), [
        ("y/b", "x/a", "TCP", 80, True), ("z/a", "x/a", "TCP", 80, False)]),
    ("pass-hands-over-to-networkpolicy",
     anp("pass", 5, f"ingress: [{{action: Pass, {FROM_Y}}}]") + anp("deny", 10, f"ingress: [{{action: Deny, {FROM_Y}}}]")
     + NP_ONLY_Y_A, [
        ("y/a", "x/a", "TCP", 80, True), ("y/b", "x/a", "TCP", 80, False), ("z/a", "x/a", "TCP", 80, False)]),
    ("pass-without-np-or-banp-allows",
     anp("pass", 5, f"ingress: [{{action: Pass, {FROM_Y}}}]") + anp("deny", 10, f"ingress: [{{action: Deny, {FROM_Y}}}]"), [
        ("y/b", "x/a", "TCP", 80, True)]),
    ("pass-into-banp-when-np-does-not-isolate",
     anp("pass", 5, f"ingress: [{{action: Pass, {FROM_Y}}}]") + banp(f"ingress: [{{action: Deny, {FROM_Y}}}]"), [
        ("y/b", "x/a", "TCP", 80, False), ("z/a", "x/a", "TCP", 80, True)]),
    ("np-isolation-hides-banp",
     banp(f"ingress: [{{action: Deny, {FROM_Y}}}]") + NP_ONLY_Y_A, [
        ("y/a", "x/a", "TCP", 80, True),    # NetworkPolicy allows; BANP never consulted
        ("y/b", "x/a", "TCP", 80, False)]),
    ("banp-allow-does-not-override-np-deny",
     banp("ingress: [{action: Allow, from: [{namespaces: {}}]}]") + np("deny", "x", "podSelector: {}"), [
        ("y/a", "x/a", "TCP", 80, False)]),
    ("banp-deny-only-where-np-does-not-isolate",
     banp("ingress: [{action: Deny, from: [{namespaces: {}}]}]") + np("deny-a", "x", "podSelector: {matchLabels: {pod: a}}\ningress: [{}]"), [
        ("y/a", "x/a", "TCP", 80, True), ("y/a", "x/b", "TCP", 80, False)]),
    ("banp-egress-with-np-ingress-isolation-only",
     banp("egress: [{action: Deny, to: [{namespaces: {matchLabels: {ns: z}}}]}]") + np("in", "x", "podSelector: {}\ningress: [{}]"), [
        ("x/a", "z/a", "TCP", 80, False), ("x/a", "y/a", "TCP", 80, True)]),
    ("ingress-allow-does-not-bypass-source-egress",
     anp("a", 1, f"ingress: [{{action: Allow, {FROM_Y}}}]") + np("eg", "y", "podSelector: {}\npolicyTypes: [Egress]"), [
        ("y/a", "x/a", "TCP", 80, False)]),
    ("subject-pods",
     anp("d", 1, "ingress: [{action: Deny, from: [{namespaces: {}}]}]",
         subject="pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: b}}}"), [
        ("y/a", "x/b", "TCP", 80, False), ("y/a", "x/a", "TCP", 80, True), ("y/a", "z/b", "TCP", 80, True)]),
    ("peer-pods",
     anp("d", 1, "ingress: [{action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}}]}]"), [
        ("y/c", "x/a", "TCP", 80, False), ("z/c", "x/a", "TCP", 80, False), ("y/b", "x/a", "TCP", 80, True)]),
    ("ingress-peers-do-not-match-external-sources",
     anp("d", 1, "ingress: [{action: Deny, from: [{namespaces: {}}]}]"), [
        ("203.0.113.1", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 80, False)]),
    ("port-number-and-protocol",
     anp("d", 1, f"ingress: [{{action: Deny, {FROM_Y}, ports: [{{portNumber: {{protocol: UDP, port: 81}}}}]}}]"), [
        ("y/a", "x/a", "UDP", 81, False), ("y/a", "x/a", "TCP", 81, True), ("y/a", "x/a", "UDP", 80, True)]),
    ("port-number-protocol-defaults-tcp",
     anp("d", 1, f"ingress: [{{action: Deny, {FROM_Y}, ports: [{{portNumber: {{port: 81}}}}]}}]"), [
        ("y/a", "x/a", "TCP", 81, False), ("y/a", "x/a", "UDP", 81, True)]),
    ("port-range-inclusive",
     anp("d", 1, f"ingress: [{{action: Deny, {FROM_Y}, ports: [{{portRange: {{start: 80, end: 81}}}}]}}]"), [
        ("y/a", "x/a", "TCP", 79, True), ("y/a", "x/a", "TCP", 80, False), ("y/a", "x/a", "TCP", 81, False),
        ("y/a", "x/a", "TCP", 82, True), ("y/a", "x/a", "SCTP", 80, True)]),
    ("named-port-any-declared-protocol",
     anp("d", 1, f"ingress: [{{action: Deny, {FROM_Y}, ports: [{{namedPort: serve-80-udp}}]}}]"), [
        ("y/a", "x/a", "UDP", 80, False), ("y/a", "x/a", "TCP", 80, True)]),
    ("egress-named-port-resolves-on-destination",
     anp("d", 1, "egress: [{action: Deny, to: [{namespaces: {}}], ports: [{namedPort: serve-81-tcp}]}]"), [
        ("x/a", "y/a", "TCP", 81, False), ("x/a", "y/a", "TCP", 80, True)]),
    ("egress-networks-match-pod-addresses",
     anp("d", 1, "egress: [{action: Deny, to: [{networks: [10.0.1.0/24]}]}]"), [
        ("x/a", "y/a", "TCP", 80, False), ("x/a", "z/a", "TCP", 80, True)]),
    ("sctp",
     anp("d", 1, f"ingress: [{{action: Deny, {FROM_Y}, ports: [{{portNumber: {{protocol: SCTP, port: 80}}}}]}}]"), [
        ("y/a", "x/a", "SCTP", 80, False), ("y/a", "x/a", "TCP", 80, True)]),
]


@pytest.mark.parametrize("policies, checks", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_admin_policy_semantics(policies, checks):
    state = world(policies)
    wrong = [(src, dst, proto, port, want) for src, dst, proto, port, want in checks
             if allowed(state, src, dst, proto, port) is not want]
    assert not wrong, f"expected (src, dst, proto, port, allowed) but got the opposite: {wrong}"


def test_egress_to_nodes():
    text = ("apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {role: cp}}\n"
            "status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: Hostname, address: n1}]}\n---\n"
            + anp("d", 1, "egress: [{action: Deny, to: [{nodes: {matchLabels: {role: cp}}}]}]"))
    state = world(text)
    a = state.find_pod("x/a")
    assert not policy.egress_verdict(state, a, "172.18.0.2", "TCP", 6443).allowed
    assert policy.egress_verdict(state, a, "172.18.0.3", "TCP", 6443).allowed


def test_verdicts_name_tier_policy_and_rule():
    state = world(anp("pass", 5, f"ingress: [{{name: to-np, action: Pass, {FROM_Y}}}]") + NP_ONLY_Y_A)
    v = policy.ingress_verdict(state, state.find_pod("x/a"), state.find_pod("y/b"), "TCP", 80)
    assert (v.allowed, v.tier) == (False, "NetworkPolicy")
    assert "passed by pass spec.ingress[0] (to-np)" in v.reason
    state = world(anp("d", 3, f"ingress: [{{action: Allow, {FROM_Y}}}, {{name: rest, action: Deny, from: [{{namespaces: {{}}}}]}}]"))
    v = policy.ingress_verdict(state, state.find_pod("x/a"), state.find_pod("z/b"), "TCP", 80)
    assert (v.allowed, v.tier, v.policy, v.rule) == (False, "AdminNetworkPolicy", "d", "spec.ingress[1] (rest)")
    state = world(banp(f"ingress: [{{action: Deny, {FROM_Y}}}]"))
    v = policy.ingress_verdict(state, state.find_pod("x/a"), state.find_pod("y/b"), "TCP", 80)
    assert (v.allowed, v.tier, v.policy) == (False, "BaselineAdminNetworkPolicy", "default")


def test_policies_selecting_orders_anps():
    state = world(anp("late", 9, f"ingress: [{{action: Deny, {FROM_Y}}}]")
                  + anp("early", 2, f"ingress: [{{action: Deny, {FROM_Y}}}]")
                  + anp("other", 1, f"ingress: [{{action: Deny, {FROM_Y}}}]", subject="namespaces: {matchLabels: {ns: z}}")
                  + banp(f"ingress: [{{action: Deny, {FROM_Y}}}]"))
    sel = policy.policies_selecting(state, state.find_pod("x/a"))
    assert [p.name for p in sel.admin] == ["early", "late"] and [p.name for p in sel.baseline] == ["default"]
    sel = policy.policies_selecting(state, state.find_pod("y/a"))
    assert sel.admin == [] and sel.baseline == []
    # ANPs never isolate by themselves.
    assert policy.isolation(state, state.find_pod("x/a")) == (False, False)
