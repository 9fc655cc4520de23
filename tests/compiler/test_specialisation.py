"""What specialisation means, measured: features present only where needed,
fewer instructions for simpler pods, peers in maps (churn changes entries,
not programs), determinism, and verifier acceptance at scale."""
from __future__ import annotations

import pytest

from tailor.operator.cluster import manifests
from tailor.operator.cluster.state import ClusterState
from tailor.operator import groups
from tailor.operator.compiler import build, generic, program

NS = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app", "labels": {"team": "a"}}}]


def pod(name, labels=None, ips=("10.1.0.1",), ports=()):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "app", "labels": labels or {}},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": list(ports)}]},
            "status": {"podIPs": [{"ip": ip} for ip in ips]}}


def netpol(name, spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "app"}, "spec": spec}


def state_of(*objs) -> ClusterState:
    state = ClusterState()
    manifests.apply(state, [("test", o) for o in NS + list(objs)])
    return state


def compiled(state, name="p") -> program.PodPrograms:
    return build.build(state)[f"app/{name}[Pod]"].programs


ISOLATE = netpol("iso", {"podSelector": {"matchLabels": {"role": "db"}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "web"}}}],
                                      "ports": [{"port": 5432}]}]})


def test_unselected_pod_has_no_policy_and_no_conntrack_and_fewer_instructions():
    state = state_of(pod("p"), pod("q", {"role": "db"}, ips=("10.1.0.2",)), ISOLATE)
    free, isolated = compiled(state, "p"), compiled(state, "q")
    assert set(free.features) == {"ipv4", "anti-spoof", "redirect", "host-path"}
    assert {"ingress-policy", "conntrack", "ports", "selectors"} <= set(isolated.features)
    assert "egress-policy" not in isolated.features
    assert free.instructions < isolated.instructions
    # A pod nothing isolates looks nothing up but where to deliver (and
    # whether the node forwarded the pair: a translation to undo); it counts.
    assert {m.name for m in free.ingress.maps} == {"stats", "endpoints4", "hostpath4"}
    assert {m.name for m in free.egress.maps} == {"stats", "endpoints4", "hostpath4"}


def test_ipv4_only_pod_has_no_ipv6_code():
    state = state_of(pod("p", ips=("10.1.0.1",)), pod("d", ips=("10.1.0.3", "fd00::3")))
    v4, dual = compiled(state, "p"), compiled(state, "d")
    assert "ipv6" not in v4.features and {"ipv4", "ipv6"} <= set(dual.features)
    assert v4.instructions < dual.instructions


def test_two_ports_cost_two_compares():
    def size(ports):
        policy = netpol("iso", {"podSelector": {}, "ingress": [{"ports": [{"port": p} for p in ports]}]})
        return compiled(state_of(pod("p"), policy)).ingress.instructions
    one, two, three = size([80]), size([80, 81]), size([80, 81, 82])
    assert two - one == 1 and three - two == 1


def _members(state, built) -> frozenset:
    index = groups.Memberships(state)
    index.define(built.spec.definitions.values())
    return frozenset().union(*(index.members(g) for g in built.spec.group_ids()))


def test_peer_churn_changes_group_members_not_the_program():
    base = [pod("p", {"role": "db"}), pod("w1", {"role": "web"}, ips=("10.1.0.5",)), ISOLATE]
    before_state = state_of(*base)
    after_state = state_of(*base, pod("w2", {"role": "web"}, ips=("10.1.0.6",)))
    before = build.build(before_state)["app/p[Pod]"]
    after = build.build(after_state)["app/p[Pod]"]
    assert before.programs.hash == after.programs.hash
    assert _members(after_state, after) - _members(before_state, before) == {"10.1.0.6"}


def test_compilation_is_deterministic():
    objs = [pod("p", {"role": "db"}, ips=("10.1.0.1", "fd00::1")), ISOLATE,
            netpol("eg", {"podSelector": {}, "policyTypes": ["Egress"],
                          "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]})]
    a, b = compiled(state_of(*objs)), compiled(state_of(*objs))
    assert a.hash == b.hash
    assert a.ingress.insns == b.ingress.insns and a.egress.insns == b.egress.insns


def test_every_instruction_range_is_annotated_with_its_rule():
    p = compiled(state_of(pod("p", {"role": "db"}), ISOLATE))
    sources = {i.comment for i in p.ingress.insns if i.comment}
    assert "NetworkPolicy app/iso spec.ingress[0]" in sources
    assert any(s.startswith("conntrack") for s in sources)


def test_no_address_is_a_clear_error():
    spec = program.ProgramSpec("app/p[Pod]", None, None)
    with pytest.raises(program.CompileError, match=r"app/p\[Pod\] has no IP address"):
        program.compile_pod(spec)


def _scale_state(peers: int, rules: int) -> ClusterState:
    objs = [pod("p", {"role": "db"}, ips=("10.1.0.1", "fd00::1"),
                ports=[{"name": f"n{i}", "containerPort": 1000 + i} for i in range(4)])]
    for i in range(peers):
        objs.append(pod(f"peer{i}", {"role": "web", "shard": f"s{i % 100}"},
                        ips=(f"10.2.{i // 250}.{i % 250 + 1}", f"fd00::2:{i:x}")))
    rule_list = [{"from": [{"podSelector": {"matchLabels": {"role": "web"}}}], "ports": [{"port": 443}]}]
    for i in range(1, rules):
        kind = i % 4
        if kind == 0:
            rule_list.append({"from": [{"podSelector": {"matchLabels": {"shard": f"s{i}"}}}],
                              "ports": [{"port": 2000 + i}, {"port": 3000 + i, "endPort": 3005 + i}]})
        elif kind == 1:
            rule_list.append({"from": [{"ipBlock": {"cidr": f"10.{i}.0.0/16", "except": [f"10.{i}.1.0/24"]}}],
                              "ports": [{"port": f"n{i % 4}"}]})
        elif kind == 2:
            rule_list.append({"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                                        "podSelector": {"matchLabels": {"shard": f"s{i}"}}}],
                              "ports": [{"protocol": "UDP", "port": 53}]})
        else:
            rule_list.append({"from": [{"ipBlock": {"cidr": f"fd00:{i:x}::/32"}}]})
    objs.append(netpol("big", {"podSelector": {"matchLabels": {"role": "db"}}, "ingress": rule_list,
                               "egress": rule_list and [{"to": r["from"], **({"ports": r["ports"]} if "ports" in r else {})}
                                                        for r in rule_list],
                               "policyTypes": ["Ingress", "Egress"]}))
    return state_of(*objs)


@pytest.mark.kernel
def test_1000_peers_and_100_rules_pass_the_verifier():
    from tailor.datapath import trace
    from tailor.operator import tracing

    state = _scale_state(1000, 100)
    built = build.build(state)["app/p[Pod]"]
    assert {f"10.2.{i // 250}.{i % 250 + 1}" for i in range(1000)} <= _members(state, built)
    node = tracing.Node(trace.engine("kernel"), state)
    try:
        node.add(built.spec, built.programs)      # raises VerifierError on rejection
    finally:
        node.close()
    assert built.programs.instructions > 1000


def test_generic_program_is_one_for_all_pods_and_larger():
    state = state_of(pod("p", {"role": "db"}), ISOLATE)
    specialised = compiled(state)
    g = generic.compile_generic("ingress").instructions + generic.compile_generic("egress").instructions
    assert g > 2 * specialised.instructions
