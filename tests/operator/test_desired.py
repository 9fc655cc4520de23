"""Incremental recomputation: a change pushes to exactly the pods it
affects — a whole program when its logic changed — and, when only peers
changed, no pod at all: one group update to each node whose programs test
the group (members are node data, operator/groups.py)."""
import dataclasses
import pathlib

import pytest

from tailor.datapath import groups as node_groups
from tailor.operator import affected, desired, groups
from tailor.operator.cluster import manifests
from tailor.operator.compiler import resolve

pytestmark = pytest.mark.operator

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/01-namespaces-and-ports"


NODES = ("n1", "n2", "n3")


def fresh():
    """Example 01 with its pods round-robin on three nodes (x/a, y/a, z/a on
    n1; ...; x/c, y/c, z/c on n3), every first push sent."""
    state = manifests.load([str(EXAMPLE)])
    for i, pod in enumerate(state.sorted_pods()):
        state.add_pod(dataclasses.replace(pod, node=NODES[i % len(NODES)]), allocate=False)
    plan = desired.Desired()
    for push in plan.plan(state):
        plan.sent(push)
    return state, plan


def test_first_plan_applies_every_pod_then_nothing():
    state, plan = fresh()
    assert plan.plan(state) == []
    # Planned again, an unchanged pod is resolved but not even compiled: its
    # spec has the shape it was compiled from, so its bytes are the same.
    assert plan.compiled == len(state.pods)


def test_a_changed_shape_is_compiled_again():
    state, plan = fresh()
    old = state.network_policies[("x", "a-from-y")]
    state.delete("NetworkPolicy", "x", "a-from-y")
    pushes = plan.plan(state, affected.by_network_policy(state, old, None))
    assert plan.compiled == len(state.pods) + 1
    assert [p.action for p in pushes] == ["apply", "groups"]   # and n1 drops the group it tested


def _group_pushes(pushes) -> dict[str, dict[str, tuple]]:
    """{node: {group: (added, removed)}} of the groups pushes."""
    out: dict = {}
    for p in pushes:
        if p.action == desired.GROUPS:
            assert p.pod == "" and not p.full
            for c in p.groups:
                assert not c.replace and not c.drop
                out.setdefault(p.node, {})[c.group] = (set(c.add), set(c.remove))
    return out


def test_new_peer_pod_updates_the_groups_of_the_nodes_that_test_them_only():
    state, plan = fresh()
    members = plan.memberships(state)
    x_a, z_c = (resolve.resolve(state, state.find_pod(k)) for k in ("x/a", "z/c"))
    from_y, = x_a.definitions                     # x/a: TCP 80 from namespace y
    assert members.members(from_y) == {"10.0.1.10", "10.0.1.11", "10.0.1.12"}
    serve_81_udp = groups.PortGroup(17, "serve-81-udp").id
    assert serve_81_udp in z_c.definitions        # z/c: egress to the named port
    new = dataclasses.replace(state.find_pod("y/a"), name="d", ips=("10.0.1.20",))
    new = state.add_pod(new, allocate=False)
    touched = affected.by_pod(state, None, new)
    moved = members.pod_changed(None, new)
    assert touched == {"y/d[Pod]"}                # no subject is even resolved again
    assert moved == {from_y, serve_81_udp}
    pushes = plan.plan(state, touched, moved)
    # y/d is new (apply, on n1); no pod of the policies' subjects gets
    # anything; the nodes whose programs test the groups get the new member.
    assert [(p.action, p.pod) for p in pushes if p.action != desired.GROUPS] == [("apply", "y/d[Pod]")]
    assert all(not p.entries for p in pushes)      # no per-pod map contents any more
    assert _group_pushes(pushes) == {
        "n1": {from_y: ({"10.0.1.20"}, set())},                # x/a's node
        "n3": {serve_81_udp: ({("10.0.1.20", 81)}, set())},    # z/c's node
    }
    assert members.members(from_y) == {"10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.20"}
    assert plan.groups_digest("n1") == node_groups.digest(
        {from_y: members.members(from_y)})
    # Planned once: nothing left to send.
    for p in pushes:
        plan.sent(p)
    assert plan.plan(state, touched, set()) == []


def test_policy_delete_reloads_its_subjects_only():
    state, plan = fresh()
    from_y, = resolve.resolve(state, state.find_pod("x/a")).definitions
    old = state.network_policies[("x", "a-from-y")]
    state.delete("NetworkPolicy", "x", "a-from-y")
    pushes = plan.plan(state, affected.by_network_policy(state, old, None))
    assert [(p.pod, p.action) for p in pushes] == [("x/a[Pod]", "apply"), ("", "groups")]
    assert "ingress-policy" not in pushes[0].programs.features
    assert pushes[0].groups == ()                  # its new program tests no group
    # x/a was the only program on n1 testing namespace y's group: n1 drops it.
    assert (pushes[1].node, pushes[1].groups) == ("n1", (node_groups.GroupChange(from_y, drop=True),))
    assert from_y not in plan.memberships(state)   # no program tests it: not kept up to date


def test_namespace_relabel_changes_the_group_and_no_program():
    state, plan = fresh()
    members = plan.memberships(state)
    from_y, = resolve.resolve(state, state.find_pod("x/a")).definitions
    old = dict(state.namespace_labels("y"))
    state.add_namespace("y", {"ns": "other"})
    touched = affected.by_namespace(state, "y", old, state.namespace_labels("y"))
    assert touched == {"y/a[Pod]", "y/b[Pod]", "y/c[Pod]"}   # as subjects: their programs stay
    moved = members.namespace_changed("y")
    assert moved == {from_y}
    pushes = plan.plan(state, touched, moved)
    # x/a's peers (namespace y) leave its group on n1; no program changes.
    assert [p for p in pushes if p.action != desired.GROUPS] == []
    assert _group_pushes(pushes) == {"n1": {from_y: (set(), {"10.0.1.10", "10.0.1.11", "10.0.1.12"})}}
    assert members.members(from_y) == frozenset()


def test_pod_removal_is_planned_and_forgotten():
    state, plan = fresh()
    tested = set(resolve.resolve(state, state.find_pod("z/c")).definitions)
    assert len(tested) == 2                        # x/b's pods and the named port serve-81-udp
    state.delete("Pod", "z", "c")
    pushes = plan.plan(state)
    assert [(p.pod, p.action, p.node) for p in pushes] == [("z/c[Pod]", "remove", "n3"),
                                                           ("", "groups", "n3")]
    # z/c's groups were tested by no other program on n3: dropped there.
    assert {(c.group, c.drop) for c in pushes[1].groups} == {(g, True) for g in tested}
    for p in pushes:
        plan.sent(p)
    assert plan.plan(state) == []
