"""Properties of the compiled programs over random clusters (hypothesis):

a. the VM's verdict for a connection equals the model's, on every pair of
   pods, every family they share, every protocol and every port boundary
   the policies and the destination's declared ports imply (and one either
   side of each), from clean connection state each time; also with policies
   whose peer bitmaps span several words and whose named ports use high slots;
b. the same for the kernel (BPF_PROG_TEST_RUN), with fewer clusters;
c. the whole connectivity table computed by running the VM equals the model's;
d. compiling is deterministic (same state, or the same manifests in another
   order: same bytes, hashes and groups); a templated pod equals its direct
   compile; and peer churn (a pod added,
   relabelled or deleted) changes group members by that pod's addresses
   only, never other pods' programs; the members kept up to date change by
   change equal those computed afresh;
f. node traffic: with every pod on one node, connections from that node's
   addresses are allowed into every pod whatever the policies, and from
   another node's addresses judged like any address (ipBlocks), by the VM
   and the kernel as by the model;
e. specialisation: a pod no policy selects has no policy, conntrack, peer or
   named-port code or maps, and fewer instructions than the same pod
   isolated; the address families compiled in are exactly the pod's, and a
   dual-stack pod costs more than either of its single-stack halves.

Clusters come from cluster_strategies (NetworkPolicy, AdminNetworkPolicy, the
BANP and ClusterNetworkPolicy of both tiers); see there for the vocabularies.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import itertools
import os

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import cluster_strategies as cs
from tailor.datapath import packets as pk
from tailor.datapath import trace
from tailor.operator import tracing
from tailor.datapath.ebpf import isa
from tailor.operator import policy
from tailor.operator.cluster import adminpolicy, manifests
from tailor.operator.cluster.ports import MAX_PORT, MIN_PORT, PROTOCOLS
from tailor.operator.cluster.state import ClusterState
from tailor.operator import groups
from tailor.operator.compiler import build, program
from tailor.operator.compiler.spec import Direction, Tier, TierKind
from tailor.operator.errors import ManifestError
from tailor.operator.policy import endpoints, reachability

CI = os.environ.get("CI") == "true"
# A longer hunt: TAILOR_PROPERTY_SCALE=20 runs twenty times the examples.
SCALE = float(os.environ.get("TAILOR_PROPERTY_SCALE", "1"))


def examples(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=CI, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- helpers ------------------------------------------------------------------------------
def load(cluster: cs.Cluster, extra=()) -> ClusterState:
    """The cluster's state; a manifest the loader rejects is a strategy bug
    to fix, so it is assumed away (and counted) rather than failed."""
    try:
        return cluster.state(list(extra))
    except ManifestError as exc:
        event(f"rejected by the loader: {exc}")
        assume(False)
        raise


def compilable(state: ClusterState) -> ClusterState:
    """`state`, unless a pod's rules exceed a stated compiler limit (more
    than 32 named-port slots): such clusters are assumed away."""
    try:
        build.build(state)
    except program.CompileError as exc:
        event(f"compile limit: {exc}")
        assume(False)
    return state


@contextlib.contextmanager
def loaded(state: ClusterState, engine: str):
    """Every pod compiled and loaded into one node of `engine`."""
    built = build.build(state)
    node = tracing.Node(trace.engine(engine), state)
    try:
        for b in built.values():
            node.add(b.spec, b.programs)
        yield built, node
    finally:
        node.close()


def run(node: tracing.Node, built, src, dst, protocol: str, port: int, flow=None) -> tracing.Trace:
    """The connection src -> dst traced from clean connection state, over
    `flow` or else the family `flow_between` picks (IPv4 first)."""
    if flow is None:
        flow = tracing.flow_between(built[src.ref].spec, built[dst.ref].spec, protocol, port)
    node.reset_conntrack()
    return node.trace(src.ref, dst.ref, flow)


def flows(built, src, dst, protocol: str, port: int):
    """(family, flow) for every family both pods have: dual-stack pairs are
    probed over IPv6 too, though a connection would prefer IPv4."""
    s, d = built[src.ref].spec, built[dst.ref].spec
    for family, a, b in ((4, s.ipv4, d.ipv4), (6, s.ipv6, d.ipv6)):
        if a and b:
            yield family, pk.Flow(a, b, protocol, tracing.CLIENT_PORT, port)


def pairs(state: ClusterState):
    """Ordered pairs of distinct pods that share an address family."""
    return [(s, d) for s, d in itertools.permutations(state.sorted_pods(), 2)
            if endpoints.common_family(s, d) is not None]


def probe_ports(state: ClusterState, dst, protocol: str) -> list[int]:
    """Every port where a verdict can change for `dst` (policy boundaries,
    its declared ports), one either side, and both ends of the range."""
    cuts = reachability.boundaries(state, protocol) | {cp.port for cp in dst.ports if cp.protocol == protocol}
    near = {c + d for c in cuts for d in (-1, 0, 1)} | {MIN_PORT, MAX_PORT}
    return sorted(p for p in near if MIN_PORT <= p <= MAX_PORT)


def describe(state, src, dst, protocol, port, family, got: tracing.Trace) -> str:
    steps = ", ".join(f"{s.pod} {s.direction}={s.retval}" for s in got.steps)
    model = policy.connection_verdict(state, src, dst, protocol, port, family)
    return f"{src.ref} -> {dst.ref} {protocol}/{port} IPv{family}: model {model}; programs {steps}"


def mismatches(state: ClusterState, engine: str) -> tuple[list[str], int]:
    """Every probe where the programs and the model disagree, and the number of probes."""
    wrong, count = [], 0
    with loaded(state, engine) as (built, node):
        note_coverage(built)
        note_policies(state)
        for src, dst in pairs(state):
            for protocol in PROTOCOLS:
                for port in probe_ports(state, dst, protocol):
                    for family, flow in flows(built, src, dst, protocol, port):
                        got = run(node, built, src, dst, protocol, port, flow)
                        count += 1
                        if got.allowed != policy.connection_allowed(state, src, dst, protocol, port, family):
                            wrong.append(describe(state, src, dst, protocol, port, family, got))
    return wrong, count


def agree(wrong: list[str], count: int) -> None:
    assert not wrong, f"{len(wrong)} of {count} probes differ:\n" + "\n".join(wrong[:15])


def note_coverage(built) -> None:
    for b in built.values():
        for feature in b.programs.features:
            event(f"feature {feature}")


def note_policies(state: ClusterState) -> None:
    """Which kinds of policy the cluster holds (a CNP by its tier)."""
    kinds = {p.kind if p.kind != adminpolicy.CNP else f"{p.kind} {p.tier}"
             for p in state.cluster_wide_policies()}
    for kind in sorted(kinds | ({"NetworkPolicy"} if state.network_policies else set())):
        event(f"policy {kind}")


# Client ports of sequential connections: above every port a policy names
# (and its neighbour), so no connection's reply tuple is another's request.
CLIENT_PORTS = 50000


# --- a, b: verdicts ----------------------------------------------------------------------------
@examples(200)
@given(cs.cluster())
def test_vm_verdicts_equal_the_model(cluster):
    state = load(cluster)
    wrong, count = mismatches(state, "emulated")
    event(f"probes: {'<100' if count < 100 else '<500' if count < 500 else '500+'}")
    agree(wrong, count)


@examples(60)
@given(cs.wide_cluster())
def test_vm_verdicts_equal_the_model_with_wide_bitmaps(cluster):
    state = compilable(load(cluster))
    wrong, count = mismatches(state, "emulated")
    agree(wrong, count)


@pytest.mark.kernel
@examples(40)
@given(st.one_of(cs.cluster(), cs.wide_cluster()))
def test_kernel_verdicts_equal_the_model(cluster):
    state = compilable(load(cluster))
    wrong, count = mismatches(state, "kernel")
    agree(wrong, count)


@examples(100)
@given(cs.cluster(), st.data())
def test_vm_verdicts_do_not_depend_on_earlier_connections(cluster, data):
    """Connections traced one after another against the node-wide connection
    state that the earlier ones left (each from its own client port): an
    entry one connection leaves never opens another."""
    state = load(cluster)
    candidates = pairs(state)
    assume(candidates)
    with loaded(state, "emulated") as (built, node):
        for i in range(data.draw(st.integers(10, 60), label="connections")):
            src, dst = data.draw(st.sampled_from(candidates), label="pair")
            protocol = data.draw(cs.protocols, label="protocol")
            port = data.draw(st.sampled_from(probe_ports(state, dst, protocol)), label="port")
            family, flow = data.draw(st.sampled_from(list(flows(built, src, dst, protocol, port))), label="family")
            flow = dataclasses.replace(flow, sport=CLIENT_PORTS + i)
            got = node.trace(src.ref, dst.ref, flow)
            want = policy.connection_allowed(state, src, dst, protocol, port, family)
            assert got.allowed == want, f"connection {i}: " + describe(state, src, dst, protocol, port, family, got)


# --- f: node traffic ------------------------------------------------------------------------
# Two nodes at addresses the strategies' CIDRs are built around, so ipBlocks
# sometimes hold the other node.
HOME = ("192.168.7.1", "2001:db8::1")
OTHER = ("10.2.0.1", "fd00::7:1")


def on_one_node(state: ClusterState) -> ClusterState:
    """`state` with every pod on node `home` and the nodes home and other."""
    from tailor.operator.cluster.objects import Node

    out = ClusterState()
    out.namespaces = dict(state.namespaces)
    out.nodes = dict(state.nodes)
    out.add_node(Node("home", {"kubernetes.io/hostname": "home"}, HOME))
    out.add_node(Node("other", {"kubernetes.io/hostname": "other"}, OTHER))
    for p in state.network_policies.values():
        out.add_network_policy(p)
    for p in state.cluster_wide_policies():
        out.add_admin_policy(p)
    for pod in state.sorted_pods():
        out.add_pod(dataclasses.replace(pod, node="home"))
    return out


def node_mismatches(state: ClusterState, engine: str) -> tuple[list[str], int]:
    wrong, count = [], 0
    built = build.build(state)
    node = tracing.Node(trace.engine(engine), state, addresses=HOME)
    try:
        for b in built.values():
            node.add(b.spec, b.programs)
        for dst in state.sorted_pods():
            for address in HOME + OTHER:
                family = ipaddress.ip_address(address).version
                target = dst.ip(family)
                if target is None:
                    continue
                for protocol in PROTOCOLS:
                    for port in probe_ports(state, dst, protocol):
                        node.reset_conntrack()
                        got = node.trace(address, dst.ref, pk.Flow(address, target, protocol,
                                                                   tracing.CLIENT_PORT, port))
                        want = policy.connection_allowed(state, address, dst, protocol, port)
                        count += 1
                        if got.allowed != want:
                            steps = ", ".join(f"{s.direction}={s.retval}" for s in got.steps)
                            wrong.append(f"{address} -> {dst.ref} {protocol}/{port}: model "
                                         f"{policy.connection_verdict(state, address, dst, protocol, port)};"
                                         f" programs {steps}")
    finally:
        node.close()
    return wrong, count


@examples(100)
@given(cs.cluster())
def test_vm_node_traffic_equals_the_model(cluster):
    state = on_one_node(load(cluster))
    wrong, count = node_mismatches(state, "emulated")
    agree(wrong, count)
    # The home node is always let in.
    for dst in state.sorted_pods():
        address = next((a for a in HOME if dst.ip(ipaddress.ip_address(a).version)), None)
        if address is not None:
            assert policy.connection_allowed(state, address, dst, "TCP", 80)


@pytest.mark.kernel
@examples(25)
@given(cs.cluster())
def test_kernel_node_traffic_equals_the_model(cluster):
    state = compilable(on_one_node(load(cluster)))
    wrong, count = node_mismatches(state, "kernel")
    agree(wrong, count)


# --- c: the connectivity table -------------------------------------------------------------------
@examples(60)
@given(cs.cluster(max_pods=4, max_policies=3))
def test_vm_connectivity_equals_the_model(cluster):
    state = load(cluster)
    with loaded(state, "emulated") as (built, node):
        def judge(src, dst, protocol, port):
            return run(node, built, src, dst, protocol, port).allowed
        by_vm = reachability.connectivity(state, judge=judge)
    assert by_vm == policy.connectivity(state)


# --- d: determinism and peer churn -------------------------------------------------------------
def fingerprint(built) -> dict:
    """Everything compiled per pod: bytes, hash, features, maps, map contents."""
    return {ref: (b.programs.hash, b.programs.features,
                  isa.encode(b.programs.ingress.insns), isa.encode(b.programs.egress.insns),
                  b.programs.ingress.maps, b.programs.egress.maps, sorted(b.spec.group_ids()))
            for ref, b in built.items()}


def is_allocated(doc: dict) -> bool:
    return doc["kind"] == "Pod" and "status" not in doc


@examples(100)
@given(cs.cluster(), st.randoms(use_true_random=False))
def test_compiling_is_deterministic(cluster, rnd):
    state = load(cluster)
    first = fingerprint(build.build(state))
    assert fingerprint(build.build(state)) == first
    # Any order, except among the pods that state no address: the loader
    # allocates theirs in manifest order.
    shuffled = list(cluster.docs)
    rnd.shuffle(shuffled)
    allocated = iter([d for d in cluster.docs if is_allocated(d)])
    shuffled = [next(allocated) if is_allocated(d) else d for d in shuffled]
    assert fingerprint(build.build(cs.Cluster(shuffled).state())) == first


@examples(100)
@given(cs.cluster())
def test_templated_programs_equal_direct_compiles(cluster):
    """compiler.template: compiled once per shape and patched, a pod's
    programs are what compiling it alone gives: bytes, instructions with
    their annotations and group names, relocations, hash."""
    state = load(cluster)
    templated = build.build(state)           # through compiler.template
    for ref, b in templated.items():
        direct = program.compile_pod(b.spec)
        assert b.programs.hash == direct.hash, ref
        for d in ("ingress", "egress"):
            t, o = b.programs.program(d), direct.program(d)
            assert (t.encoded, t.relocations, t.annotations, t.instructions) == \
                (o.encoded, o.relocations, o.annotations, o.instructions), (ref, d)
            assert list(t.insns) == list(o.insns), (ref, d)
            assert [i.comment for i in t.insns] == [i.comment for i in o.insns], (ref, d)
            assert [i.group for i in t.insns] == [i.group for i in o.insns], (ref, d)


@st.composite
def churn(draw):
    """A cluster and one change among its pods: ("add", pod doc),
    ("relabel", pod doc with new labels) or ("delete", pod doc)."""
    # Pods state their addresses: with loader-allocated ones, deleting a pod
    # would renumber the pods after it, which is not one pod's churn.
    cluster = draw(cs.cluster(min_pods=2, max_pods=5, families=cs.STATED_FAMILIES))
    kind = draw(st.sampled_from(("add", "add-bare", "relabel", "delete")))
    if kind in ("relabel", "delete"):
        pod = draw(st.sampled_from(cluster.pods))
        if kind == "relabel":
            pod = {**pod, "metadata": {**pod["metadata"], "labels": draw(cs.labels(cs.POD_LABELS))}}
        return cluster, kind, pod
    namespaces = [d["metadata"]["name"] for d in cluster.docs if d["kind"] == "Namespace"]
    # The new pod lives in an existing namespace or in a new one, ns-new;
    # a host part no pod of the strategy uses.
    namespace = draw(st.sampled_from(namespaces + ["ns-new"]))
    ns_index = namespaces.index(namespace) if namespace in namespaces else 9
    if kind == "add-bare":                  # unlabelled, no containerPorts
        pod = cs.pod_doc("new", namespace, ns_index, 99, {}, [], draw(cs.STATED_FAMILIES))
    else:
        pod = cs.pod_doc("new", namespace, ns_index, 99, draw(cs.labels(cs.POD_LABELS)),
                         draw(cs.container_ports()), draw(cs.STATED_FAMILIES))
    return cluster, kind, pod


def _members(state, built) -> dict:
    """{group id: members} of every group the built pods test."""
    index = groups.Memberships(state)
    for b in built.values():
        index.define(b.spec.definitions.values())
    return {gid: index.members(gid) for gid in index.ids()}


def _without(members: dict, addresses: set[str]) -> dict:
    return {gid: {m for m in ms if (m if isinstance(m, str) else m[0]) not in addresses}
            for gid, ms in members.items()}


@examples(150)
@given(churn())
def test_peer_churn_changes_maps_not_programs(change):
    cluster, kind, pod = change
    name = pod["metadata"]["name"]
    changed_ref = f"{pod['metadata']['namespace']}/{name}[Pod]"
    addresses = {str(ipaddress.ip_address(e["ip"])) for e in pod["status"]["podIPs"]}
    before_state = load(cluster)
    if kind == "delete":
        after_state = cs.Cluster([d for d in cluster.docs if d is not pod]).state()
    elif kind == "relabel":
        after_state = cs.Cluster([pod if d["kind"] == "Pod" and d["metadata"]["name"] == name else d
                                  for d in cluster.docs]).state()
    else:
        after_state = load(cluster, [pod])
    before, after = build.build(before_state), build.build(after_state)
    for ref in before.keys() & after.keys():
        if ref == changed_ref:
            continue
        assert after[ref].programs.hash == before[ref].programs.hash, \
            f"{kind} {changed_ref} changed the program of {ref}"
    old_members, new_members = _members(before_state, before), _members(after_state, before)
    assert _without(new_members, addresses) == _without(old_members, addresses), \
        f"{kind} {changed_ref} changed the members of groups by other addresses"
    event(f"{kind}: {'members changed' if new_members != old_members else 'members unchanged'}")
    # Kept up to date change by change, the members equal those computed afresh.
    index = groups.Memberships(before_state)
    for b in before.values():
        index.define(b.spec.definitions.values())
    old_pod = before_state.pods.get((pod["metadata"]["namespace"], name, "Pod"))
    if kind == "delete":
        before_state.delete("Pod", pod["metadata"]["namespace"], name)
        new_pod = None
    else:
        manifests.apply(before_state, [("<churn>", pod)])
        new_pod = before_state.pods[(pod["metadata"]["namespace"], name, "Pod")]
    moved = index.pod_changed(old_pod, new_pod)
    assert {gid: index.members(gid) for gid in index.ids()} == new_members
    assert moved == {gid for gid in new_members if new_members[gid] != old_members[gid]}


def test_a_new_peer_pod_is_a_map_update_only():
    """The example the design names: a pod whose ingress admits every pod of
    other namespaces; a new unlabelled pod with no ports appears in a
    namespace no policy selects. Its addresses join the peer map; the
    program stays the same."""
    base = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {}}}
            for n in ("ns-a", "ns-b")]
    base.append(cs.pod_doc("web", "ns-a", 0, 10, {"app": "web"}, [{"containerPort": 80, "name": "http"}], (4, 6)))
    base.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "web", "namespace": "ns-a"},
                 "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                          "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": "http"}]}]}})
    newcomer = cs.pod_doc("new", "ns-b", 1, 11, {}, [], (4, 6))
    before = build.build(cs.Cluster(base).state())["ns-a/web[Pod]"]
    after = build.build(cs.Cluster(base + [newcomer]).state())["ns-a/web[Pod]"]
    assert after.programs.hash == before.programs.hash
    (gid,) = after.spec.group_ids()
    members = {"before": groups.Memberships(cs.Cluster(base).state()),
               "after": groups.Memberships(cs.Cluster(base + [newcomer]).state())}
    for index in members.values():
        index.define(after.spec.definitions.values())
    assert members["after"].members(gid) - members["before"].members(gid) == {"10.1.1.11", "fd00::1:b"}


# --- e: specialisation ----------------------------------------------------------------------------
ISOLATED = Direction((Tier(TierKind.NETWORK, ()),))


@examples(150)
@given(cs.cluster())
def test_specialisation_is_monotone(cluster):
    state = load(cluster)
    for ref, b in build.build(state).items():
        pod, features = state.find_pod(ref), set(b.programs.features)
        assert {f for f in features if f in ("ipv4", "ipv6")} == {f"ipv{f}" for f in pod.families}, ref
        selecting = policy.policies_selecting(state, pod)
        ingress_isolated, egress_isolated = policy.isolation(state, pod)
        assert not ingress_isolated or "ingress-policy" in features, ref
        assert not egress_isolated or "egress-policy" in features, ref
        isolated = program.compile_pod(dataclasses.replace(b.spec, ingress=ISOLATED, egress=ISOLATED))
        assert {"ingress-policy", "egress-policy", "conntrack"} <= set(isolated.features)
        if not (selecting.admin or selecting.network or selecting.baseline):
            event("a pod no policy selects")
            assert not features & {"ingress-policy", "egress-policy", "conntrack", "anp", "banp",
                                   "selectors", "ipblock", "ports", "named-ports"}, (ref, features)
            maps = {m.name for m in b.programs.ingress.maps + b.programs.egress.maps}
            assert not {n for n in maps if n.startswith(("ct", "ids", "ports"))}, (ref, maps)
            assert b.programs.instructions < isolated.instructions, ref
        # One family fewer is fewer instructions, and no trace of the other family.
        if len(pod.families) == 2:
            for family in (4, 6):
                single = program.compile_pod(dataclasses.replace(
                    b.spec, **{"ipv6" if family == 4 else "ipv4": None}))
                assert set(single.features) & {"ipv4", "ipv6"} == {f"ipv{family}"}
                assert single.instructions < b.programs.instructions, (ref, family)
