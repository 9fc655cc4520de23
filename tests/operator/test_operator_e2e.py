"""The operator end to end: kmock as the Kubernetes API (real HTTP, kopf's
own operator entry point through app.run), three in-process agents with the
emulated backend, pods wired through the agents' CNI path so every program
reaches its agent through the ProgramFor hand-off first.

The oracle for "exactly the affected pods" is a full rebuild: every pod of
the test's objects compiled from scratch before and after a change, and the
members of every group the programs test computed from scratch
(operator.groups.Memberships). A pod whose hash changed must get exactly one
Apply, every other pod nothing at all (no UpdateMaps ever: a pod's own maps
hold only counters); a node on which a group its programs test changed
members, or that no longer needs a group, exactly one UpdateGroups; every
other node none. And each agent's node groups (and its identity maps) must
hold exactly the members the rebuild says, for exactly the groups its
programs test.
"""
import pathlib

import pytest
import yaml

from operator_world import World, eventually
from tailor.datapath import groups as node_groups
from tailor.datapath import layout
from tailor.operator import groups, policy
from tailor.operator.compiler import build

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


def compiled(world: World) -> dict[str, tuple[str, tuple, frozenset]]:
    """{"ns/name": (hash, features, group ids its program tests)} compiled from scratch."""
    return {ref.split("[")[0]: (built.programs.hash, built.programs.features, groups_tested(built.programs))
            for ref, built in build.build(world.model()).items()}


def groups_tested(programs) -> frozenset[str]:
    """The groups a compiled program's instructions test whose members the
    operator sends (the agent keeps HOST, its own addresses, itself)."""
    return frozenset(i.group for p in (programs.ingress, programs.egress) for i in p.insns
                     if i.group and i.group != node_groups.HOST)


def node_groups_wanted(world: World) -> dict[str, dict[str, tuple[frozenset, bool]]]:
    """{node: {group: (members, tested)}}: what each node's agent must hold,
    from scratch — every group its pods' programs test (a spec can name a
    group its program does not: a tier the compiler left out because an
    earlier one decides every packet; the operator sends only what the
    instructions test), with members computed by a fresh Memberships over
    the test's objects."""
    state = world.model()
    members = groups.Memberships(state)
    out: dict[str, dict] = {node: {} for node in World.NODES}
    for ref, built in build.build(state).items():
        members.define(built.spec.definitions.values())
        node = world.node_of[ref.split("[")[0]]
        must = groups_tested(built.programs)
        assert must <= built.spec.group_ids()
        for gid in must:
            out[node][gid] = (members.members(gid), True)
    return out


def held(world: World) -> dict[str, str]:
    """{"ns/name": hash} of what the agents hold."""
    out = {}
    for agent in world.agents.values():
        with agent.core._lock:
            for key, received in agent.core._programs.items():
                out[key] = received.hash
    return out


def held_groups(world: World) -> dict[str, dict[str, frozenset]]:
    """{node: {group: members}} of what each agent's node groups hold (the
    groups the program source wants there), after checking that its
    identity maps hold exactly the entries those members make."""
    out = {}
    for node, agent in world.agents.items():
        backend = agent.core.backend
        with backend._lock:
            registry = backend.groups
            identity = {m: dict(backend.node_maps[m].items())
                        for m in (*(s.name for s in layout.IDS_MAPS.values()),
                                  *(s.name for s in layout.PORTS_MAPS.values()))}
            want = {m: {k: v for k, v in entries.items()} for m, entries in registry.contents().items()}
            assert {m: {bytes(k): bytes(v) for k, v in e.items()} for m, e in identity.items()} == want, \
                f"node {node}: identity maps disagree with its groups"
            out[node] = {gid: registry.members(gid) for gid in registry.groups()}
    return out


def converge(world: World, timeout: float = 30.0) -> dict:
    """Wait until every agent holds exactly what a full rebuild says
    (programs, and its node's groups and their members) and the operator
    is idle; returns the rebuild."""
    want = compiled(world)
    want_groups = node_groups_wanted(world)

    def check():
        have = held(world)
        missing = {k: v[0] for k, v in want.items() if have.get(k) != v[0]}
        extra = set(have) - set(want)
        assert not missing and not extra, (missing, extra)
        have_groups = held_groups(world)
        wrong = {n: {g: (sorted(have_groups[n][g], key=str), sorted(m, key=str))
                     for g, (m, _) in want_groups[n].items() if g in have_groups[n] and have_groups[n][g] != m}
                 for n in World.NODES}
        lacking = {n: {g for g, (_, must) in want_groups[n].items() if must and g not in have_groups[n]}
                   for n in World.NODES}
        stale = {n: set(have_groups[n]) - set(want_groups[n]) for n in World.NODES}
        assert not any(wrong.values()) and not any(lacking.values()) and not any(stale.values()), \
            (wrong, lacking, stale)
        return world.operator.engine.idle()
    eventually(check, timeout, what="the agents hold what a full rebuild says")
    return want


def _needs_group_update(before: dict[str, tuple], after: dict[str, tuple]) -> bool:
    """A node that held `before` and must hold `after` (node_groups_wanted):
    must it be sent an UpdateGroups? Yes when a group it keeps changed
    members or a group goes; a group that only arrives travels in the
    Apply that needs it."""
    return bool(set(before) - set(after)) or any(before[g][0] != after[g][0] for g in set(before) & set(after))


def changed_exactly(world: World, change) -> tuple[set, set, set]:
    """Run `change`, wait for convergence, and check the pushes against the
    full rebuild. Returns (reloaded pod keys, nodes sent group updates,
    removed pod keys)."""
    before, before_groups = compiled(world), node_groups_wanted(world)
    world.reset_counts()
    change()
    after = converge(world)
    after_groups = node_groups_wanted(world)
    reloaded = {k for k in after if k in before and after[k][0] != before[k][0]}
    nodes = {n for n in World.NODES if _needs_group_update(before_groups[n], after_groups[n])}
    removed = set(before) - set(after)
    eventually(lambda: world.operator.engine.idle())
    counts = world.counts()
    assert dict(counts["applies"]) == {k: 1 for k in reloaded}
    assert dict(counts["reloads"]) == {k: 1 for k in reloaded}
    assert dict(counts["map_updates"]) == {}
    assert dict(counts["removes"]) == {k: 1 for k in removed}
    assert dict(counts["group_updates"]) == {n: 1 for n in nodes}, \
        "\n".join([f"{n}: {a.core.group_changes}" for n, a in world.agents.items()]
                  + [f"engine: {dict(world.operator.engine.counters)}"])
    assert dict(counts["full_group_updates"]) == {}
    return reloaded, nodes, removed


def namespaces_group(world: World, key: str, labels: dict) -> str:
    """The id of the group, among those `key`'s program tests, of every pod
    in the namespaces with exactly these labels (of the test's namespaces)."""
    built = build.build(world.model())[key + "[Pod]"]
    others = [{"ns": n} for n in ("x", "y", "z") if {"ns": n} != labels]
    (gid,) = [g for g, d in built.spec.definitions.items()
              if isinstance(d, groups.PodGroup) and d.namespace is None and d.pod_selector is None
              and d.namespace_selector.matches(labels)
              and not any(d.namespace_selector.matches(o) for o in others)]
    return gid


def agents_members(world: World, gid: str) -> dict[str, frozenset]:
    """{node: members of `gid` in its agent's node groups}."""
    return {node: agent.core.backend.groups.members(gid) for node, agent in world.agents.items()}


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
        assert status["hash"] == want[key][0] == agents[key] == status["observedHash"]
        assert tuple(status["features"]) == want[key][1]
        assert status["featureList"] == ",".join(want[key][1])
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
    # Its labels name no group (x's groups choose pods by namespace): no node
    # gets a group update either.
    reloaded, nodes, removed = changed_exactly(
        world, lambda: world.patch("Pod", "y", "b", {"metadata": {"labels": {"pod": "a", "extra": "1"}}}))
    assert reloaded == set() and nodes == set() and removed == set()   # y has no policy on `pod`
    # x/b relabelled to `pod: a`: x/a-from-y now selects it. The groups its
    # new program tests travel in its Apply. Isolated now, its NetworkPolicy
    # tier decides every packet: the baseline tier after it is gone from its
    # program, and its node (n2), where no other program tests the baseline's
    # group, is told to drop that group; no other node is touched.
    reloaded, nodes, removed = changed_exactly(
        world, lambda: world.patch("Pod", "x", "b", {"metadata": {"labels": {"pod": "a"}}}))
    assert reloaded == {"x/b"} and nodes == {world.node_of["x/b"]}


def test_policy_create_edit_delete(world):
    allow_web = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "b-from-z", "namespace": "y"},
                 "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
                          "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
                                       "ports": [{"port": 81, "protocol": "TCP"}]}]}}
    # y/b's new rule tests namespace z's pods: the very group x/b, on the
    # same node, tests already (one group, whoever names it): nothing to send
    # but y/b's program.
    reloaded, nodes, _ = changed_exactly(world, lambda: world.create(allow_web))
    assert reloaded == {"y/b"} and nodes == set()
    assert namespaces_group(world, "y/b", {"ns": "z"}) == namespaces_group(world, "x/b", {"ns": "z"})
    reloaded, nodes, _ = changed_exactly(world, lambda: world.patch(
        "NetworkPolicy", "y", "b-from-z", {"spec": {"ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
             "ports": [{"port": 82, "protocol": "TCP"}]}]}}))
    assert reloaded == {"y/b"} and nodes == set()
    reloaded, nodes, _ = changed_exactly(world, lambda: world.delete("NetworkPolicy", "y", "b-from-z"))
    assert reloaded == {"y/b"} and nodes == set()                   # x/b still tests the group
    # An admin policy edit: the ANP's subjects (namespace x) only. Its
    # y-is-up-to-x rule goes, and with it namespace y's group on the nodes
    # where no other program tests it: x/a's NetworkPolicy keeps it on n1.
    from_y = namespaces_group(world, "x/b", {"ns": "y"})
    reloaded, nodes, _ = changed_exactly(world, lambda: world.patch(
        "AdminNetworkPolicy", None, "protect-x", {"spec": {"priority": 20, "ingress": [
            {"name": "deny-from-z", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "z"}}}],
             "ports": [{"portNumber": {"port": 80, "protocol": "TCP"}}]}]}}))
    assert reloaded == {"x/a", "x/b", "x/c"}
    assert nodes == {"n2", "n3"}
    assert {n: bool(m) for n, m in agents_members(world, from_y).items()} == {
        "n1": True, "n2": False, "n3": False}


def test_namespace_relabel(world):
    # z leaves `ns: z`: the ANP's deny-from-z group loses z's pods on every
    # node with one of x's pods (one group update each); no program changes,
    # and z's own pods are subjects of nothing.
    from_z = namespaces_group(world, "x/a", {"ns": "z"})
    z = {a for k, addresses in world.addresses.items() if k.startswith("z/") for a in addresses}
    assert agents_members(world, from_z) == {n: frozenset(z) for n in World.NODES}
    reloaded, nodes, _ = changed_exactly(
        world, lambda: world.patch("Namespace", None, "z", {"metadata": {"labels": {"ns": "zz"}}}))
    assert reloaded == set()
    assert nodes == {world.node_of[k] for k in ("x/a", "x/b", "x/c")} == set(World.NODES)
    assert agents_members(world, from_z) == {n: frozenset() for n in World.NODES}


def test_pod_create_and_delete(world):
    new = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "d", "namespace": "z", "labels": {"pod": "d"}},
           "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80}]}]}}
    from_z = namespaces_group(world, "x/a", {"ns": "z"})
    # A new pod in z: x's pods deny z, so the group they test gains it — one
    # group update per node, and no push to any of x's pods; its own
    # program is handed out at CNI ADD (no Apply).
    reloaded, nodes, _ = changed_exactly(world, lambda: world.create_pod(new, "n2"))
    assert reloaded == set() and nodes == set(World.NODES)
    address, = world.addresses["z/d"]
    assert all(address in m for m in agents_members(world, from_z).values())
    # Denied by every x pod's agent, as the model says (x/c is on n3, z/d on n2).
    assert not world.trace("z/d", "x/c", "TCP", 80)
    assert world.trace("z/d", "y/a", "TCP", 80)
    reloaded, nodes, removed = changed_exactly(world, lambda: world.delete("Pod", "z", "d"))
    assert removed == {"z/d"} and nodes == set(World.NODES) and reloaded == set()
    assert not any(address in m for m in agents_members(world, from_z).values())
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


def test_lost_node_groups_come_back_through_the_reconcile_loop(world):
    # The agent on n1 loses its node groups and identity maps (as a restart
    # of the emulated backend would) but keeps its programs: its List's
    # groups digest no longer matches, and the operator sends it every
    # group its programs test, whole, in one UpdateGroups.
    engine = world.operator.engine
    agent = world.agents["n1"]
    backend = agent.core.backend
    want = held_groups(world)["n1"]
    from_z = namespaces_group(world, "x/a", {"ns": "z"})
    assert world.node_of["x/a"] == "n1" and want[from_z]
    digest = agent.core.groups_digest()
    assert digest == engine.desired.groups_digest("n1")
    world.reset_counts()
    repairs = engine.counters["group repairs"]
    with backend._lock:
        backend.groups = node_groups.NodeGroups()
        for spec in (*layout.IDS_MAPS.values(), *layout.PORTS_MAPS.values()):
            for key in backend.node_maps[spec.name].keys():
                backend.node_maps[spec.name].delete(key)
    assert held_groups(world)["n1"] == {} and agent.core.groups_digest() != digest
    eventually(lambda: held_groups(world)["n1"] == want, what="n1's groups are back")
    assert agent.core.groups_digest() == digest
    converge(world)
    assert engine.counters["group repairs"] - repairs == 1
    counts = world.counts()
    assert dict(counts["full_group_updates"]) == dict(counts["group_updates"]) == {"n1": 1}
    (full, changes), = agent.core.group_changes
    assert full and {c.group: frozenset(c.add) for c in changes} == want
    assert all(c.replace for c in changes)
    assert dict(counts["applies"]) == dict(counts["map_updates"]) == {}       # no program touched
    # And z's pods are denied again by the members that came back. (Trace
    # resolves the programs' group tests against the node's numbering now,
    # which the fresh registry may have changed; the programs loaded before
    # are not bound again.)
    assert not world.trace("z/b", "x/a", "TCP", 80)
    assert world.trace("y/b", "x/a", "TCP", 80)


def node_table_digest(world) -> str:
    """What every agent should hold: the test API's Nodes, as a SetNodes names them."""
    from tailor.datapath.agent.node import routes
    from tailor.operator.cluster import manifests

    nodes = [manifests.node_from(world.kube.get("Node", None, n), n) for n in World.NODES]
    return routes.digest([routes.ClusterNode(n.name, n.ips, n.pod_cidrs) for n in nodes], [])


def test_every_agent_holds_the_node_table_and_follows_a_node_change(world):
    # Routes between nodes come from the Nodes (spec.podCIDRs) through the
    # operator, not from anything a node installs by itself.
    for i, node in enumerate(World.NODES, 1):
        world.patch("Node", None, node, {"spec": {"podCIDRs": [f"10.244.{i}.0/24",
                                                               f"fd00:10:244:{i}::/64"]}})
    want = node_table_digest(world)
    eventually(lambda: {a.core.nodes_digest() for a in world.agents.values()} == {want},
               what="every agent holds the node table")
    # An agent that lost it (restarted without its state) gets it again from
    # the reconcile loop, which sees its List's digest.
    agent = world.agents["n2"]
    agent.core._nodes_digest = ""
    eventually(lambda: agent.core.nodes_digest() == want, what="n2's node table is back")
    # A bad pod CIDR is refused by name and changes nothing.
    engine = world.operator.engine
    world.patch("Node", None, "n3", {"spec": {"podCIDRs": ["10.244.300.0/24"]}})
    eventually(lambda: any("10.244.300.0/24" in str(e) for e in engine.errors), what="the error")
    assert all(a.core.nodes_digest() == want for a in world.agents.values())


def _service_entries(world) -> set:
    """Every agent's Service table, as (address, port, protocol, backends)."""
    return {frozenset((e.address, e.port, e.protocol, e.backends) for e in a.core.backend.services.entries())
            if a.core.backend.services is not None else None for a in world.agents.values()}


def test_every_agent_holds_the_service_table_and_follows_service_and_pod_changes(world):
    from tailor.datapath import services as node_services

    world.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "x"},
                  "spec": {"selector": {"pod": "a"}, "clusterIP": "10.96.0.10",
                           "ports": [{"port": 80, "targetPort": 80}, {"port": 53, "protocol": "UDP"}]}})
    x_a = world.kube.get("Pod", "x", "a")["status"]["podIPs"][0]["ip"]
    want = frozenset({("10.96.0.10", 80, 6, ((x_a, 80),)), ("10.96.0.10", 53, 17, ((x_a, 53),))})
    eventually(lambda: _service_entries(world) == {want}, what="every agent holds the Service table")
    # The digest the List reports is what the operator compares.
    engine = world.operator.engine
    assert {a.core.services_digest() for a in world.agents.values()} == \
        {node_services.digest(engine.cluster_services()[0])}
    # Another backend: x/b joins by its label; the table follows, no program changes.
    world.patch("Pod", "x", "b", {"metadata": {"labels": {"pod": "a"}}})
    x_b = world.kube.get("Pod", "x", "b")["status"]["podIPs"][0]["ip"]
    both = tuple(sorted([(x_a, 80), (x_b, 80)]))
    eventually(lambda: all(any(e[3] == both for e in t) for t in _service_entries(world)),
               what="the new backend in every agent's table")
    # Deleted: the entries go.
    world.delete("Service", "x", "web")
    eventually(lambda: _service_entries(world) == {frozenset()}, what="the Service gone from every agent")
    # A Service without a selector (the `kubernetes` one) takes its EndpointSlice's ready addresses.
    world.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default"},
                  "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}})
    world.create({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": {"name": "kubernetes", "namespace": "default",
                               "labels": {"kubernetes.io/service-name": "kubernetes"}},
                  "addressType": "IPv4", "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
                  "endpoints": [{"addresses": ["192.168.77.1"], "conditions": {"ready": True}},
                                {"addresses": ["192.168.77.2"], "conditions": {"ready": False}}]})
    api = frozenset({("10.96.0.1", 443, 6, (("192.168.77.1", 6443),))})
    eventually(lambda: _service_entries(world) == {api}, what="the API servers' Service in every agent's table")


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


def test_agents_without_a_program_source_learn_the_active_operators(tmp_path):
    """As the chart starts them: agents with no --program-source (no cluster
    DNS, no Service) ask where the active operator told them it is."""
    w = World(str(tmp_path))
    try:
        for agent in w.agents.values():
            agent.program_source.address = None
        topology, _ = example_docs()
        for doc in topology:
            if doc["kind"] == "Namespace":
                w.create(doc)
        w.start_operator(source_advertise="127.0.0.1")
        eventually(lambda: all(a.program_source.learned == w.source for a in w.agents.values()),
                   what="every agent told the operator's address")
        pod = next(d for d in topology if d["kind"] == "Pod")
        key = w.create_pod(pod, "n2")
        assert w.agents["n2"].held()[key][1] == "Loaded"
        # The reconcile loop sees the agents hold the table it sent: no resend loop.
        sends = w.operator.controller.nodes.sends
        w.operator.controller.reconciler.kick()
        eventually(lambda: w.operator.controller.nodes.unsettled() == [], what="node tables settled")
        assert w.operator.controller.nodes.sends <= sends + 1
    finally:
        w.close()
