"""Incremental recomputation: a change pushes to exactly the pods it
affects — a whole program when its logic changed, map entries when only its
peers did — and nothing to anyone else."""
import dataclasses
import pathlib

import pytest

from tailor.operator import affected, desired
from tailor.operator.cluster import manifests

pytestmark = pytest.mark.operator

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/01-namespaces-and-ports"


def fresh():
    state = manifests.load([str(EXAMPLE)])
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
    assert [p.action for p in pushes] == ["apply"]


def test_new_peer_pod_updates_maps_of_the_policy_subject_only():
    state, plan = fresh()
    new = dataclasses.replace(state.find_pod("y/a"), name="d", ips=("10.0.1.20",))
    state.add_pod(new)
    touched = affected.by_pod(state, None, new)
    pushes = plan.plan(state, touched)
    by_pod = {p.pod: p.action for p in pushes}
    # y/d is new (apply); x/a takes TCP 80 from namespace y (its peer map
    # grows); z/c's egress names serve-81-udp, which y/d declares too.
    assert by_pod == {"y/d[Pod]": "apply", "x/a[Pod]": "maps", "z/c[Pod]": "maps"}
    # Nothing else was even compiled: y/b, z/a... are outside the affected set.
    assert touched == {"y/d[Pod]", "x/a[Pod]", "z/c[Pod]"}


def test_policy_delete_reloads_its_subjects_only():
    state, plan = fresh()
    old = state.network_policies[("x", "a-from-y")]
    state.delete("NetworkPolicy", "x", "a-from-y")
    pushes = plan.plan(state, affected.by_network_policy(state, old, None))
    assert [(p.pod, p.action) for p in pushes] == [("x/a[Pod]", "apply")]
    assert "ingress-policy" not in pushes[0].programs.features


def test_namespace_relabel_reaches_pods_that_select_it():
    state, plan = fresh()
    old = dict(state.namespace_labels("y"))
    state.add_namespace("y", {"ns": "other"})
    touched = affected.by_namespace(state, "y", old, state.namespace_labels("y"))
    pushes = {p.pod: p.action for p in plan.plan(state, touched)}
    # x/a's peers (namespace y) are gone from its map; y's own pods are unchanged.
    assert pushes == {"x/a[Pod]": "maps"}


def test_pod_removal_is_planned_and_forgotten():
    state, plan = fresh()
    state.delete("Pod", "z", "c")
    pushes = plan.plan(state)
    assert [(p.pod, p.action) for p in pushes] == [("z/c[Pod]", "remove")]
    plan.sent(pushes[0])
    assert plan.plan(state) == []
