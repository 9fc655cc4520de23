"""Status on cluster-wide policy objects: the operator says, in each ANP's,
BANP's and ClusterNetworkPolicy's status.conditions, whether it took the
object in and, when it did not, which field is wrong — and a refused object
changes nothing (its previous version stays in force)."""
import pytest

from operator_world import World, eventually

pytestmark = pytest.mark.operator

CNP = "policy.networking.k8s.io/v1alpha2"


def cnp(name: str, tier: str, priority, action: str = "Deny", generation: int = 1) -> dict:
    return {"apiVersion": CNP, "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name, "generation": generation},
            "spec": {"tier": tier, "priority": priority, "subject": {"namespaces": {}},
                     "ingress": [{"name": "from-y", "action": action,
                                  "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}]}]}}


def condition(w: World, kind: str, name: str):
    obj = w.kube.get(kind, None, name) or {}
    conditions = (obj.get("status") or {}).get("conditions") or []
    ours = [c for c in conditions if c.get("type") == "tailor.dev/Accepted"]
    return ours[0] if ours else None


@pytest.fixture
def world(tmp_path):
    w = World(str(tmp_path))
    try:
        w.start_operator()
        w.operator.controller
        yield w
    finally:
        w.close()


def test_accepted_and_refused_policies_say_so(world):
    world.create(cnp("guard", "Admin", 10))
    world.create(cnp("fallback", "Baseline", 5, action="Accept"))
    world.create(cnp("typo", "admin", 10))                       # the tier enum is case-sensitive
    world.create({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
                  "metadata": {"name": "old", "generation": 3},
                  "spec": {"priority": 1001, "subject": {"namespaces": {}}}})

    guard = eventually(lambda: condition(world, "ClusterNetworkPolicy", "guard"), what="guard's status")
    assert guard["type"] == "tailor.dev/Accepted" and guard["status"] == "True"
    assert guard["reason"] == "Accepted"
    assert guard["message"] == "tailor: in force in the Admin tier at priority 10"
    assert guard["observedGeneration"] == 1 and guard["lastTransitionTime"]
    fallback = eventually(lambda: condition(world, "ClusterNetworkPolicy", "fallback"))
    assert fallback["message"] == "tailor: in force in the Baseline tier at priority 5"

    typo = eventually(lambda: condition(world, "ClusterNetworkPolicy", "typo"), what="typo's status")
    assert (typo["status"], typo["reason"]) == ("False", "Invalid")
    assert typo["message"] == "spec.tier: Unsupported value: 'admin': supported values: \"Admin\", \"Baseline\""
    old = eventually(lambda: condition(world, "AdminNetworkPolicy", "old"), what="the ANP's status")
    assert old["status"] == "False" and "spec.priority" in old["message"] and old["observedGeneration"] == 3
    assert set(world.operator.engine.world.state.cluster_policies) == {"guard", "fallback"}


def test_a_refused_edit_keeps_the_previous_version_and_says_why(world):
    world.create(cnp("guard", "Admin", 10))
    eventually(lambda: (condition(world, "ClusterNetworkPolicy", "guard") or {}).get("status") == "True")
    world.patch("ClusterNetworkPolicy", None, "guard",
                {"metadata": {"generation": 2}, "spec": {"priority": -1}})
    refused = eventually(lambda: (c := condition(world, "ClusterNetworkPolicy", "guard"))
                         and c["status"] == "False" and c, what="the edit refused")
    assert refused["observedGeneration"] == 2 and "spec.priority" in refused["message"]
    kept = world.operator.engine.world.state.cluster_policies["guard"]
    assert kept.priority == 10                                    # fail closed: the old one stays
    world.patch("ClusterNetworkPolicy", None, "guard",
                {"metadata": {"generation": 3}, "spec": {"priority": 20}})
    fixed = eventually(lambda: (c := condition(world, "ClusterNetworkPolicy", "guard"))
                       and c["status"] == "True" and c, what="the fix accepted")
    assert fixed["observedGeneration"] == 3 and fixed["message"].endswith("priority 20")


def test_status_is_written_once_per_verdict(world):
    world.create(cnp("guard", "Admin", 10))
    eventually(lambda: condition(world, "ClusterNetworkPolicy", "guard"))
    writer, engine = world.operator.controller.policy_status, world.operator.engine
    eventually(lambda: writer.written == 1, what="the first status write")
    # An event that changes neither the generation nor the verdict (a label;
    # the status patch's own event is another) writes nothing.
    seen = engine.counters["events"]
    world.patch("ClusterNetworkPolicy", None, "guard", {"metadata": {"labels": {"team": "a"}}})
    eventually(lambda: engine.counters["events"] > seen, what="the label event handled")
    world.settled()
    assert writer.written == 1 and engine.take_policy_verdicts() == []


def test_other_conditions_are_kept_and_transitions_dated_once(world):
    world.create(cnp("guard", "Admin", 10))
    first = eventually(lambda: condition(world, "ClusterNetworkPolicy", "guard"))
    # Another implementation's condition, written beside ours.
    world.kube.call(world.kube._request(
        "PATCH", "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies/guard/status",
        {"status": {"conditions": [first, {"type": "Ready-In-Zone-a", "status": "True", "reason": "SetupSucceeded",
                                           "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}},
        "application/merge-patch+json"))
    world.patch("ClusterNetworkPolicy", None, "guard", {"metadata": {"generation": 2}, "spec": {"priority": 11}})
    again = eventually(lambda: (c := condition(world, "ClusterNetworkPolicy", "guard"))
                       and c["observedGeneration"] == 2 and c, what="the new generation observed")
    assert again["lastTransitionTime"] == first["lastTransitionTime"]        # still True: no transition
    types = [c["type"] for c in world.kube.get("ClusterNetworkPolicy", None, "guard")["status"]["conditions"]]
    assert sorted(types) == ["Ready-In-Zone-a", "tailor.dev/Accepted"]


def test_domain_names_are_enforced_fail_closed_and_said_so(world):
    doc = cnp("egress", "Admin", 30)
    doc["spec"]["egress"] = [{"name": "web", "action": "Accept", "to": [{"domainNames": ["*.example.com"]}]},
                             {"name": "rest", "action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]
    world.create(doc)
    got = eventually(lambda: condition(world, "ClusterNetworkPolicy", "egress"))
    assert (got["status"], got["reason"]) == ("True", "PartiallyEnforced")
    assert "spec.egress[0].to[0].domainNames" in got["message"] and "matches no address" in got["message"]
