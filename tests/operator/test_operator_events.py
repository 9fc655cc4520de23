"""Watch events -> model changes (controller.events, pure) and the engine's
bookkeeping without any I/O: what the kopf handlers hand over becomes the
same ClusterState the manifests path builds, and nothing is invented."""
import threading
import time

import pytest

from tailor.datapath import groups as node_groups
from tailor.datapath.groups import GroupChange
from tailor.operator.cluster.objects import Pod
from tailor.operator.cluster.state import ClusterState
from tailor.operator.controller import engine as engine_
from tailor.operator.compiler import resolve
from tailor.operator.controller import events

pytestmark = pytest.mark.operator


def pod(name, labels=None, node="n1", ips=(), uid=None, host_network=False, phase="Running"):
    doc = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "x", "labels": labels or {}, "uid": uid or f"uid-{name}"},
           "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
               {"name": "http", "containerPort": 80}]}]},
           "status": {"phase": phase}}
    if host_network:
        doc["spec"]["hostNetwork"] = True
    if ips:
        doc["status"]["podIPs"] = [{"ip": ip} for ip in ips]
    return doc


POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "web", "namespace": "x"},
          "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}}


def test_add_pod_without_allocation_keeps_or_leaves_addresses_empty():
    state = ClusterState()
    added = state.add_pod(Pod("x", "a", {}, "n1", ()), allocate=False)
    assert added.ips == ()
    state.add_pod(Pod("x", "a", {}, "n1", ("10.1.0.5", "fd00::5")), allocate=False)
    relabelled = state.add_pod(Pod("x", "a", {"v": "2"}, "n1", ()), allocate=False)
    assert relabelled.ips == ("10.1.0.5", "fd00::5")        # any families, never re-allocated
    # The manifests path still allocates from the default pools.
    assert state.add_pod(Pod("x", "b", {}, None, ())).ips == ("10.244.0.1",)


def test_a_pod_joins_without_addresses_and_the_cni_gives_them():
    world = events.World()
    world.apply(events.NETWORK_POLICY, None, POLICY)
    out = world.apply(events.POD, "ADDED", pod("web", {"app": "web"}))
    assert world.state.pod("x", "web").ips == ()
    assert out.affected == {"x/web[Pod]"}
    # web's program tests the group of app=client pods (as the Desired
    # defines it once it compiles web).
    (clients, definition), = resolve.resolve(world.state, world.state.pod("x", "web")).definitions.items()
    world.memberships.define([definition])
    joined = world.apply(events.POD, "ADDED", pod("client", {"app": "client"}))
    assert joined.groups == set()                              # no address yet: in no group
    wired, touched, moved = world.wire("x", "client", "uid-client", "n1", ["10.1.0.7/24"])
    assert wired.ips == ("10.1.0.7",)
    # web's program does not change (it tests the group by id): only the group's members do.
    assert touched == set()
    assert moved == {clients}
    assert world.memberships.members(clients) == {"10.1.0.7"}
    # The kubelet's status update later says the same: nothing changes.
    again = world.apply(events.POD, "MODIFIED", pod("client", {"app": "client"}, ips=["10.1.0.7"]))
    assert again.affected == set() and again.groups == set()
    # Relabelled out of the group: its members shrink; deleted: nothing more to change.
    left = world.apply(events.POD, "MODIFIED", pod("client", {"app": "other"}, ips=["10.1.0.7"]))
    assert left.affected == {"x/client[Pod]"} and left.groups == {clients}
    assert world.memberships.members(clients) == frozenset()
    assert world.apply(events.POD, "DELETED", pod("client", {"app": "other"})).groups == set()


def test_wire_refuses_unknown_pods_other_uids_and_other_nodes():
    world = events.World()
    with pytest.raises(LookupError):
        world.wire("x", "a", "uid-a", "n1", ["10.1.0.2"])
    world.apply(events.POD, None, pod("a"))
    with pytest.raises(LookupError):
        world.wire("x", "a", "uid-other", "n1", ["10.1.0.2"])
    with pytest.raises(ValueError):
        world.wire("x", "a", "uid-a", "n2", ["10.1.0.2"])


def test_a_recreated_pod_does_not_inherit_addresses():
    world = events.World()
    world.apply(events.POD, None, pod("a", ips=["10.1.0.2"]))
    out = world.apply(events.POD, "ADDED", pod("a", uid="uid-new"))
    assert world.state.pod("x", "a").ips == ()
    assert world.uids["x/a[Pod]"] == "uid-new"
    assert "x/a[Pod]" in out.affected


def test_host_network_and_finished_pods_are_not_tailors():
    world = events.World()
    world.apply(events.POD, None, pod("h", host_network=True, ips=["172.18.0.2"]))
    world.apply(events.POD, None, pod("done", ips=["10.1.0.3"], phase="Succeeded"))
    assert world.state.pods == {}
    world.apply(events.POD, None, pod("a", ips=["10.1.0.4"]))
    out = world.apply(events.POD, "MODIFIED", pod("a", ips=["10.1.0.4"], phase="Failed"))
    assert world.state.pods == {} and out.affected == {"x/a[Pod]"}


def test_agent_addresses_from_the_daemonset_pod_and_the_node_annotation():
    world = events.World()
    agent = pod("tailor-agent-abc", {"app.kubernetes.io/name": "tailor", "app.kubernetes.io/component": "agent"}, node="n1",
                host_network=True, ips=["172.18.0.2"])
    agent["status"]["podIP"] = "172.18.0.2"
    agent["spec"]["containers"][0]["ports"] = [{"name": "grpc", "containerPort": 9501}]
    out = world.apply(events.POD, "ADDED", agent)
    assert out.agents == {"n1"}
    assert world.agent_address("n1") == "172.18.0.2:9501"
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "annotations": {events.AGENT_ANNOTATION: "unix:/run/a.sock"}}}
    assert world.apply(events.NODE, "MODIFIED", node).agents == {"n1"}
    assert world.agent_address("n1") == "unix:/run/a.sock"      # the annotation wins
    world.apply(events.POD, "DELETED", agent)
    assert world.agent_address("n1") == "unix:/run/a.sock"


def test_a_refused_policy_changes_nothing_and_says_why():
    world = events.World()
    world.apply(events.POD, None, pod("web", {"app": "web"}, ips=["10.1.0.2"]))
    world.apply(events.NETWORK_POLICY, None, POLICY)
    bad = {**POLICY, "spec": {**POLICY["spec"], "policyTypes": ["Sideways"]}}
    out = world.apply(events.NETWORK_POLICY, "MODIFIED", bad)
    assert out.affected == set()
    assert out.error.startswith("NetworkPolicy x/web: spec.policyTypes[0]:")
    assert world.state.network_policies[("x", "web")].policy_types == frozenset({"Ingress"})


def test_namespace_relabel_and_delete():
    world = events.World()
    world.apply(events.NAMESPACE, None, {"kind": "Namespace", "metadata": {"name": "x", "labels": {"t": "1"}}})
    world.apply(events.POD, None, pod("a", ips=["10.1.0.2"]))
    same = world.apply(events.NAMESPACE, "MODIFIED",
                       {"kind": "Namespace", "metadata": {"name": "x", "labels": {"t": "1"}}})
    assert same.affected == set()
    relabel = world.apply(events.NAMESPACE, "MODIFIED",
                          {"kind": "Namespace", "metadata": {"name": "x", "labels": {"t": "2"}}})
    assert relabel.affected == {"x/a[Pod]"}
    gone = world.apply(events.NAMESPACE, "DELETED", {"kind": "Namespace", "metadata": {"name": "x"}})
    assert gone.affected == {"x/a[Pod]"} and world.state.pods == {}


def test_the_engine_hands_out_nothing_before_the_initial_listing():
    engine = engine_.Engine()
    engine.event(events.POD, None, pod("a"))
    with pytest.raises(engine_.NotReady):
        engine.program_for("x", "a", "uid-a", "n1", ["10.1.0.2"])
    engine.load([(events.POD, pod("a"))])
    _, uid, programs, entries, groups = engine.program_for("x", "a", "uid-a", "n1", ["10.1.0.2"])
    assert uid == "uid-a" and programs.hash
    assert entries == {} and groups == ()                 # no policy: no group to test
    # Handed out at CNI ADD: the pusher has nothing to send for it.
    assert engine.take(10, timeout=0) is None            # first: ask the agents what they hold
    engine.reports_taken()
    assert engine.take(10, timeout=0) == []


def test_the_engine_adopts_what_an_agent_already_holds():
    engine = engine_.Engine()
    engine.load([(events.POD, pod("a", ips=["10.1.0.2"]))])
    assert engine.take(10, timeout=0) is None
    # What the agent holds: the same program the engine will compile.
    probe = engine_.Engine()
    probe.load([(events.POD, pod("a"))])
    _, _, held, _, _ = probe.program_for("x", "a", "uid-a", "n1", ["10.1.0.2"])
    engine.reported("n1", [("x/a", engine_.Report("uid-a", held.hash, engine_.LOADED))], asked_at=0.0)
    engine.reports_taken()
    works = engine.take(10, timeout=0)
    # No Apply: an UpdateMaps with nothing in it, which the pusher does not even send.
    assert [(w.rpc, w.pod, w.maps) for w in works] == [(engine_.UPDATE_MAPS, "x/a[Pod]", {})]
    engine.done(works[0])
    assert engine.view("x/a[Pod]").state == engine_.LOADED


def test_the_engine_repairs_drift_and_removes_orphans():
    engine = engine_.Engine()
    engine.load([(events.POD, pod("a", ips=["10.1.0.2"]))])
    engine.reported("n1", [], asked_at=0.0)
    engine.reports_taken()
    (apply,) = engine.take(10, timeout=0)
    assert apply.rpc == engine_.APPLY
    engine.done(apply, engine_.Report("uid-a", apply.push.programs.hash, engine_.LOADED))
    asked = engine.clock()
    # The agent lost it (restart) and holds a pod the cluster does not have.
    orphans = engine.reported("n1", [("x/gone", engine_.Report("uid-g", "abc", engine_.LOADED))], asked)
    assert [(w.rpc, w.pod, w.uid) for w in orphans] == [(engine_.REMOVE, "x/gone[Pod]", "uid-g")]
    assert engine.counters["repairs"] == 1
    (again,) = engine.take(10, timeout=0)
    assert (again.rpc, again.pod) == (engine_.APPLY, "x/a[Pod]")


def _handed_pair():
    """Pods a (selected by a policy admitting app=client) and client; both
    handed out at their CNI ADD, neither reported by its agent yet."""
    engine = engine_.Engine()
    engine.load([(events.NETWORK_POLICY, POLICY),
                 (events.POD, pod("a", labels={"app": "web"})),
                 (events.POD, pod("c", labels={"app": "client"}))])
    assert engine.take(10, timeout=0) is None
    engine.reports_taken()
    _, _, _, _, groups = engine.program_for("x", "a", "uid-a", "n1", ["10.1.0.2"])
    # a's hand-off carries its group's whole membership: nobody has an address yet.
    assert groups == (GroupChange(_clients_group(engine), (), replace=True),)
    return engine


def _clients_group(engine) -> str:
    """The id of the group a's program tests (POLICY's app=client peers)."""
    (gid,) = resolve.resolve(engine.world.state, engine.world.state.pod("x", "a")).definitions
    return gid


def test_a_handed_out_pod_gets_peers_as_group_updates_and_is_not_repaired_while_its_add_runs():
    engine = _handed_pair()
    clients = _clients_group(engine)
    # The agent's List does not show a yet (its CNI ADD is still attaching).
    engine.reported("n1", [], asked_at=engine.clock())
    assert engine.counters["repairs"] == 0
    # A peer arrives: a's program is the same (it tests the group by id);
    # the node gets the group's new member, and a no push at all.
    _, _, _, _, given = engine.program_for("x", "c", "uid-c", "n1", ["10.1.0.3"])
    assert given == ()                                   # c tests no group
    works = engine.take(10, timeout=0)
    assert [(w.rpc, w.node, w.push.full) for w in works] == [(engine_.UPDATE_GROUPS, "n1", False)]
    assert works[0].push.groups == (GroupChange(clients, ("10.1.0.3",)),)
    engine.done(works[0])
    # Relabelled out of the group: the member goes, again as one group update.
    engine.event(events.POD, pod("c", labels={"app": "client"}), pod("c", labels={"app": "other"}))
    works = engine.take(10, timeout=0)
    assert [(w.rpc, w.node) for w in works] == [(engine_.UPDATE_GROUPS, "n1")]
    assert works[0].push.groups == (GroupChange(clients, (), ("10.1.0.3",)),)
    engine.done(works[0])
    assert engine.take(10, timeout=0) == [] and engine.counters["applies"] == 0


def test_a_push_planned_before_a_hand_off_is_sent_again_after_it():
    engine = _handed_pair()
    # The agent holds another program for a: a repair (Apply) is planned...
    engine.reported("n1", [("x/a", engine_.Report("uid-a", "old", engine_.LOADED))], engine.clock())
    assert engine.counters["repairs"] == 1
    engine.program_for("x", "c", "uid-c", "n1", ["10.1.0.3"])
    planned = engine.take(10, timeout=0)
    # ...with the group's new member for the node beside it.
    assert [(w.rpc, w.pod) for w in planned] == [(engine_.APPLY, "x/a[Pod]"), (engine_.UPDATE_GROUPS, "")]
    apply, groups = planned
    # a is ADDed again (a new sandbox) while that push is on its way.
    engine.program_for("x", "a", "uid-a", "n1", ["10.1.0.2"])
    engine.done(apply, engine_.Report("uid-a", apply.push.programs.hash, engine_.LOADED))
    engine.done(groups)
    assert engine.counters["applies"] + engine.counters["map updates"] == 0   # not taken as current
    (again,) = engine.take(10, timeout=0)
    assert (again.rpc, again.pod) == (engine_.APPLY, "x/a[Pod]")


def test_a_burst_of_arrivals_within_the_coalesce_window_is_one_push():
    engine = engine_.Engine(coalesce=0.5)
    engine.load([(events.NETWORK_POLICY, POLICY), (events.POD, pod("a", labels={"app": "web"})),
                 (events.POD, pod("c", labels={"app": "client"})),
                 (events.POD, pod("d", labels={"app": "client"}))])
    assert engine.take(10, timeout=0) is None
    engine.reports_taken()
    engine.program_for("x", "a", "uid-a", "n1", ["10.1.0.2"])
    engine.reported("n1", [("x/a", engine_.Report("uid-a", engine.view("x/a[Pod]").hash,
                                                  engine_.LOADED))], engine.clock())
    rounds = []
    taker = threading.Thread(target=lambda: rounds.append(engine.take(10)))
    taker.start()
    engine.program_for("x", "c", "uid-c", "n1", ["10.1.0.3"])    # a's peers change...
    time.sleep(0.1)
    engine.program_for("x", "d", "uid-d", "n1", ["10.1.0.4"])    # ...and again
    taker.join(5)
    # One group update for the node, with both new members; nothing for a itself.
    assert [(w.rpc, w.node) for w in rounds[0]] == [(engine_.UPDATE_GROUPS, "n1")]
    assert rounds[0][0].push.groups == (GroupChange(_clients_group(engine), ("10.1.0.3", "10.1.0.4")),)
    engine.done(rounds[0][0])
    assert engine.take(10, timeout=0) == []                      # nothing left for a second round


def test_known_objects_are_those_events_brought():
    # The resync deletes what a fresh listing lacks, out of these: a
    # namespace a pod merely names is not among them.
    world = events.World()
    world.apply(events.POD, None, pod("a", ips=["10.1.0.2"]))
    assert world.known(events.NAMESPACE) == set()
    assert world.known(events.POD) == {("x", "a")}
    world.apply(events.NAMESPACE, None, {"kind": "Namespace", "metadata": {"name": "x"}})
    assert world.known(events.NAMESPACE) == {(None, "x")}
    engine = engine_.Engine()
    engine.load([(events.POD, pod("a", ips=["10.1.0.2"]))])
    assert engine.vanished(events.POD, [("x", "a")]) == 1
    assert engine.world.state.pods == {}


def test_a_groups_digest_that_differs_sends_the_node_all_its_groups_whole():
    engine = _handed_pair()
    clients = _clients_group(engine)
    engine.program_for("x", "c", "uid-c", "n1", ["10.1.0.3"])
    (update,) = engine.take(10, timeout=0)
    engine.done(update)
    hash_ = engine.view("x/a[Pod]").hash
    held = [("x/a", engine_.Report("uid-a", hash_, engine_.LOADED)),
            ("x/c", engine_.Report("uid-c", engine.view("x/c[Pod]").hash, engine_.LOADED))]
    # The agent holds what was planned: nothing to do.
    right = engine.desired.groups_digest("n1")
    assert right == node_groups.digest({clients: frozenset({"10.1.0.3"})})
    engine.reported("n1", held, engine.clock(), right)
    assert engine.take(10, timeout=0) == [] and engine.counters["group repairs"] == 0
    # It lost them: one full UpdateGroups with every group, whole; no Apply.
    engine.reported("n1", held, engine.clock(), node_groups.digest({}))
    assert engine.counters["group repairs"] == 1
    (repair,) = engine.take(10, timeout=0)
    assert (repair.rpc, repair.node, repair.push.full) == (engine_.UPDATE_GROUPS, "n1", True)
    assert repair.push.groups == (GroupChange(clients, ("10.1.0.3",), replace=True),)
    engine.done(repair)
    assert engine.take(10, timeout=0) == [] and engine.idle()
