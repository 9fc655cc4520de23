"""The operator end to end: kmock as the Kubernetes API (real HTTP, kopf's
own operator entry point through app.run), three in-process agents with the
emulated backend, pods wired through the agents' CNI path so every program
reaches its agent through the ProgramFor hand-off first.

The oracle for "exactly the affected pods" is a full rebuild: every pod of
the test's objects compiled from scratch before and after a change. A pod
whose hash changed must get exactly one Apply; a pod whose map contents
changed (same hash) exactly one UpdateMaps and no Apply; every other pod
nothing at all.
"""
import pathlib

import pytest
import yaml

from operator_world import World, eventually
from tailor.operator import policy
from tailor.operator.compiler import build, mapdata

pytestmark = pytest.mark.operator

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/02-admin-tiers"


def example_docs():
    topology = yaml.safe_load((EXAMPLE / "00-topology.yaml").read_text())["items"]
    policies = [d for d in yaml.safe_load_all((EXAMPLE / "10-policies.yaml").read_text()) if d]
    return topology, policies


def start_with_pods(w: World, topology: list[dict]) -> None:
    """The namespaces, the operator (started), then the pods round-robin on the nodes, each wired."""
    for doc in topology:
        if doc["kind"] == "Namespace":
            w.create(doc)
    w.start_operator()
    w.operator.controller
    for i, doc in enumerate(d for d in topology if d["kind"] == "Pod"):
        w.create_pod(doc, World.NODES[i % len(World.NODES)])


@pytest.fixture
def world(tmp_path):
    """Example 02 (namespaces x, y, z; pods a, b, c in each; an ANP, a BANP
    and a NetworkPolicy) on three nodes, every pod wired, all settled."""
    w = World(str(tmp_path))
    try:
        topology, policies = example_docs()
        start_with_pods(w, topology)
        for doc in policies:
            w.create(doc)
        converge(w)
        yield w
    finally:
        w.close()


def compiled(world: World) -> dict[str, tuple[str, dict, tuple]]:
    """{"ns/name": (hash, map entries, features)} compiled from scratch."""
    out = {}
    for ref, built in build.build(world.model()).items():
        out[ref.split("[")[0]] = (built.programs.hash, _nonempty(mapdata.entries(built.spec)),
                                  built.programs.features)
    return out


def _nonempty(entries: dict) -> dict:
    return {d: {m: t for m, t in maps.items() if t} for d, maps in entries.items()}


def held(world: World) -> dict[str, tuple[str, dict]]:
    """{"ns/name": (hash, map entries)} of what the agents hold."""
    out = {}
    for agent in world.agents.values():
        with agent.core._lock:
            for key, received in agent.core._programs.items():
                out[key] = (received.hash, _nonempty(received.entries))
    return out


def converge(world: World, timeout: float = 30.0) -> dict:
    """Wait until every agent holds exactly what a full rebuild says (program
    and map contents) and the operator is idle; returns the rebuild."""
    want = compiled(world)

    def check():
        have = held(world)
        missing = {k: v[0] for k, v in want.items() if have.get(k, (None,))[0] != v[0]}
        stale = {k for k, v in want.items() if k in have and have[k][1] != v[1]}
        extra = set(have) - set(want)
        assert not missing and not stale and not extra, (missing, stale, extra)
        return world.operator.engine.idle()
    eventually(check, timeout, what="the agents hold what a full rebuild says")
    return want


def changed_exactly(world: World, change) -> tuple[set, set, set]:
    """Run `change`, wait for convergence, and check the pushes against the
    full rebuild. Returns (reloaded, maps updated, removed) pod keys."""
    before = compiled(world)
    world.reset_counts()
    change()
    after = converge(world)
    reloaded = {k for k in after if k in before and after[k][0] != before[k][0]}
    maps = {k for k in after if k in before and after[k][0] == before[k][0] and after[k][1] != before[k][1]}
    removed = set(before) - set(after)
    eventually(lambda: world.operator.engine.idle())
    counts = world.counts()
    assert dict(counts["applies"]) == {k: 1 for k in reloaded}
    assert dict(counts["reloads"]) == {k: 1 for k in reloaded}
    assert dict(counts["map_updates"]) == {k: 1 for k in maps}
    assert dict(counts["removes"]) == {k: 1 for k in removed}
    return reloaded, maps, removed


# -- loading -----------------------------------------------------------------------------

def test_every_podprogram_loads_with_the_compiled_features(world):
    want = compiled(world)

    def loaded():
        pps = world.kube.podprograms()
        assert set(pps) == set(want)
        assert all(pp["status"]["state"] == "Loaded" and pp["status"]["hash"] == want[k][0]
                   for k, pp in pps.items()), \
            {k: (pp["status"]["state"], pp["status"]["message"]) for k, pp in pps.items()}
        return pps
    pps = eventually(loaded, what="every PodProgram Loaded")
    agents = held(world)
    for key, pp in pps.items():
        status = pp["status"]
        assert status["hash"] == want[key][0] == agents[key][0] == status["observedHash"]
        assert tuple(status["features"]) == want[key][2]
        assert status["featureList"] == ",".join(want[key][2])
        assert status["node"] == world.node_of[key]
        assert status["conditions"][0]["status"] == "True"
        owner, = pp["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", key.split("/")[1], world.uids[key])
        assert pp["spec"] == {"podName": key.split("/")[1], "podUID": world.uids[key]}
    # The policies each pod's program carries, as the model selects them.
    assert pps["x/a"]["status"]["policies"] == [
        "AdminNetworkPolicy/protect-x", "NetworkPolicy/x/a-from-y", "BaselineAdminNetworkPolicy/default"]
    assert pps["y/a"]["status"]["policies"] == []
    assert "ingress-policy" in pps["x/a"]["status"]["features"]
    assert "ingress-policy" not in pps["y/a"]["status"]["features"]
    # Every program reached its agent through the CNI hand-off first.
    assert world.operator.engine.counters["handed"] == len(want)
    metrics = world.metrics()
    assert metrics["tailor_operator_handed_total"] == len(want)
    assert metrics['tailor_operator_podprograms{state="Loaded"}'] == len(want)


def test_connectivity_through_the_agents_equals_the_model(world):
    state = world.model()
    pods = {p.ref.split("[")[0]: p for p in state.sorted_pods()}
    differences, checked = [], 0
    for src in pods:
        for dst, dst_pod in pods.items():
            if src == dst:
                continue
            for port in sorted({(cp.protocol, cp.port) for cp in dst_pod.ports}):
                want = policy.connection_allowed(state, pods[src], dst_pod, *port)
                got = world.trace(src, dst, *port)
                checked += 1
                if got != want:
                    differences.append(f"{src} -> {dst} {port}: agents {got}, model {want}")
    assert checked == 9 * 8 * 6
    assert not differences, differences


# -- changes reach exactly the affected pods --------------------------------------------

def test_pod_label_change(world):
    # y/b joins x/a's `pod: a` subject: its own program changes; nobody else's.
    reloaded, maps, removed = changed_exactly(
        world, lambda: world.patch("Pod", "y", "b", {"metadata": {"labels": {"pod": "a", "extra": "1"}}}))
    assert reloaded == set() and maps == set() and removed == set()   # y has no policy on `pod`
    # x/b relabelled to `pod: a`: x/a-from-y now selects it.
    reloaded, maps, removed = changed_exactly(
        world, lambda: world.patch("Pod", "x", "b", {"metadata": {"labels": {"pod": "a"}}}))
    assert reloaded == {"x/b"}


def test_policy_create_edit_delete(world):
    allow_web = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "b-from-z", "namespace": "y"},
                 "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
                          "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
                                       "ports": [{"port": 81, "protocol": "TCP"}]}]}}
    reloaded, maps, _ = changed_exactly(world, lambda: world.create(allow_web))
    assert reloaded == {"y/b"} and maps == set()
    reloaded, maps, _ = changed_exactly(world, lambda: world.patch(
        "NetworkPolicy", "y", "b-from-z", {"spec": {"ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
             "ports": [{"port": 82, "protocol": "TCP"}]}]}}))
    assert reloaded == {"y/b"}
    reloaded, maps, _ = changed_exactly(world, lambda: world.delete("NetworkPolicy", "y", "b-from-z"))
    assert reloaded == {"y/b"}
    # An admin policy edit: the ANP's subjects (namespace x) only.
    reloaded, _, _ = changed_exactly(world, lambda: world.patch(
        "AdminNetworkPolicy", None, "protect-x", {"spec": {"priority": 20, "ingress": [
            {"name": "deny-from-z", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "z"}}}],
             "ports": [{"portNumber": {"port": 80, "protocol": "TCP"}}]}]}}))
    assert reloaded == {"x/a", "x/b", "x/c"}


def test_namespace_relabel(world):
    # z leaves `ns: z`: the ANP's deny-from-z group loses z's pods (x's maps
    # change, programs stay); z's own pods are subjects of nothing.
    reloaded, maps, _ = changed_exactly(
        world, lambda: world.patch("Namespace", None, "z", {"metadata": {"labels": {"ns": "zz"}}}))
    assert reloaded == set()
    assert maps == {"x/a", "x/b", "x/c"}


def test_pod_create_and_delete(world):
    new = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "d", "namespace": "z", "labels": {"pod": "d"}},
           "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80}]}]}}
    # A new pod in z: x's pods deny z, so their peer maps gain it; its own
    # program is handed out at CNI ADD (no Apply).
    reloaded, maps, _ = changed_exactly(world, lambda: world.create_pod(new, "n2"))
    assert reloaded == set() and maps == {"x/a", "x/b", "x/c"}
    reloaded, maps, removed = changed_exactly(world, lambda: world.delete("Pod", "z", "d"))
    assert removed == {"z/d"} and maps == {"x/a", "x/b", "x/c"} and reloaded == set()
    eventually(lambda: "z/d" not in world.kube.podprograms(), what="the PodProgram goes with its pod")


# -- restarts, drift, watch drops -------------------------------------------------------

def test_operator_restart_reloads_nothing(world):
    world.reset_counts()
    world.operator.stop()
    # While it is away: a policy edit (x/a's program changes) and a pod
    # deleted (its agent still holds it).
    world.patch("NetworkPolicy", "x", "a-from-y", {"spec": {"ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 81}]},
        {"from": [{"podSelector": {}}]}]}})
    world.delete("Pod", "y", "c")
    world.start_operator()
    converge(world)
    counts = world.counts()
    assert dict(counts["applies"]) == {"x/a": 1}          # only what changed meanwhile
    assert dict(counts["removes"]) == {"y/c": 1}          # the orphan
    assert world.operator.engine.counters["adopted"] == 7  # the rest: adopted, not reloaded


def test_agent_restart_is_repaired(world):
    engine = world.operator.engine
    agent = world.agents["n2"]
    on_node = set(agent.wired)
    repairs, handed = engine.counters["repairs"], engine.counters["handed"]
    agent.restart()                                       # an empty agent at the same address
    # The reconcile loop notices and sends every program again...
    eventually(lambda: set(agent.held()) == on_node, what="the agent's programs are back")
    assert engine.counters["repairs"] - repairs == len(on_node)
    # ...so when the CNI wires its pods again, nothing needs to be asked for.
    agent.rewire()
    assert engine.counters["handed"] == handed
    assert {state for _, state in agent.held().values()} == {"Loaded"}
    converge(world)
    # A lost push: the agent forgets one pod's program behind the operator's back.
    key = sorted(on_node)[0]
    repairs = engine.counters["repairs"]
    agent.core.remove(*key.split("/"))
    eventually(lambda: engine.counters["repairs"] > repairs, what="the drift is noticed")
    converge(world)
    assert agent.held()[key][0] == compiled(world)[key][0]


def test_watch_dropped_and_restored_converges(world):
    world.kube.drop_watches()
    # Changes the operator cannot see while its watches are down, a deleted
    # pod among them (a restored watch lists what is there, not what went).
    world.patch("Namespace", None, "y", {"metadata": {"labels": {"ns": "yy"}}})
    world.patch("NetworkPolicy", "x", "a-from-y", {"spec": {"ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "yy"}}}], "ports": [{"port": 80}]}]}})
    world.delete("Pod", "z", "c")
    import time
    time.sleep(0.5)
    engine = world.operator.engine
    assert engine.world.state.namespace_labels("y")["ns"] == "y"     # it really saw nothing
    world.kube.restore_watches()
    converge(world)
    assert engine.world.state.namespace_labels("y")["ns"] == "yy"
    want = compiled(world)

    def statuses():
        pps = world.kube.podprograms()
        assert set(pps) == set(want)                                  # z/c's went with it
        assert all(pp["status"]["state"] == "Loaded" and pp["status"]["hash"] == want[k][0]
                   for k, pp in pps.items())
        return True
    eventually(statuses, what="every PodProgram current")
    assert engine.counters["missed deletions"] == 1


def test_a_failed_load_is_an_event_and_blocks_no_other_pod(world):
    from tailor.datapath.agent.backends import base

    agent = world.agents[world.node_of["x/b"]]
    attach = agent.core.backend.attach

    def refuse_x_b(endpoint, received):
        if received.key == "x/b":
            raise base.AttachFailed("pod x/b: the verifier says no (test)")
        return attach(endpoint, received)
    agent.core.backend.attach = refuse_x_b
    # An ANP edit changes all of x's programs; x/b's is refused.
    world.patch("AdminNetworkPolicy", None, "protect-x", {"spec": {"priority": 30}})
    world.patch("AdminNetworkPolicy", None, "protect-x", {"spec": {"ingress": [
        {"name": "deny-from-z", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "z"}}}]}]}})

    def states():
        pps = world.kube.podprograms()
        assert pps["x/b"]["status"]["state"] == "Failed", pps["x/b"]["status"]
        assert pps["x/a"]["status"]["state"] == pps["x/c"]["status"]["state"] == "Loaded"
        return pps
    pps = eventually(states, what="x/b Failed, x/a and x/c Loaded")
    assert "the verifier says no" in pps["x/b"]["status"]["message"]
    assert pps["x/a"]["status"]["hash"] == compiled(world)["x/a"][0]
    events = eventually(lambda: [e for e in world.kube.events("x")
                                 if e["involvedObject"]["name"] == "b" and e["reason"] == "ProgramFailed"])
    assert events[0]["type"] == "Warning" and "verifier says no" in events[0]["message"]


def test_admin_policies_are_picked_up_when_their_crds_appear(tmp_path):
    w = World(str(tmp_path), admin_policies=False)
    try:
        topology, policies = example_docs()
        start_with_pods(w, topology)
        for doc in policies:
            if doc["kind"] == "NetworkPolicy":
                w.create(doc)
        converge(w)
        w.kube.add_admin_policy_crds()
        for doc in policies:
            if doc["kind"] != "NetworkPolicy":
                w.create(doc)
        converge(w)
        assert "anp" in held_features(w, "x/b")
    finally:
        w.close()


def held_features(world: World, key: str) -> tuple:
    for agent in world.agents.values():
        state = agent.core._programs.get(key)
        if state is not None:
            return state.features
    return ()


def test_two_operators_never_push_at_once(world):
    first = world.operator
    second = world.start_operator()
    # The second waits for the Lease: it has not even built its controller.
    import time
    time.sleep(1.0)
    assert second.controllers == []
    world.reset_counts()
    first.stop()                                          # graceful: the Lease is released
    eventually(lambda: second.controllers and second.controllers[0].started.is_set(),
               what="the second operator takes over")
    world.create({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                  "metadata": {"name": "deny-c", "namespace": "y"},
                  "spec": {"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Ingress"]}})
    converge(world)
    assert dict(world.counts()["applies"]) == {"y/c": 1}


def test_the_cni_hand_off_waits_for_the_operator_to_see_the_pod(world):
    import threading

    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "early", "namespace": "y",
                                                            "labels": {"pod": "early"}},
           "spec": {"nodeName": "n3", "containers": [{"name": "c", "image": "x"}]}}
    made = dict(doc)
    # The CNI ADD arrives before the operator has seen the pod (its uid is
    # not known yet): the agent keeps asking; the ADD returns once it did.
    uid = "11111111-2222-3333-4444-555555555555"
    done = threading.Event()
    errors = []

    def cni_add():
        try:
            world.agents["n3"].wire("y", "early", uid, ["10.244.3.77"])
        except Exception as e:    # noqa: BLE001
            errors.append(e)
        done.set()
    threading.Thread(target=cni_add, daemon=True).start()
    assert not done.wait(1.0)                             # still waiting: no program, no pod
    made["metadata"] = {**doc["metadata"], "uid": uid}
    world.create(made)
    assert done.wait(15.0) and not errors, errors
    assert world.agents["n3"].held()["y/early"][1] == "Loaded"
