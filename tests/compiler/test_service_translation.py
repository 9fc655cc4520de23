"""Service translation in the pod's own programs, in the VM and in the
kernel, against the model: a connection to a ClusterIP reaches one of the
Service's backends, is judged by egress and ingress policy on that backend
(operator/policy/services.py), and its reply comes back from the Service's
address with valid checksums; later packets keep their backend; ClientIP
affinity keeps a client's backend across connections; a Service without a
backend is left untranslated (the node rejects it); and a pod gets Service
code only when the cluster's Services need it."""
from __future__ import annotations

import pytest

from tailor.datapath import packets as pk
from tailor.datapath import trace
from tailor.operator import tracing
from tailor.operator.cluster.services import endpoints
from tailor.operator.compiler import build, servicemaps
from tailor.operator.policy import evaluate

from test_specialisation import netpol, pod, state_of

TRIES = 12          # connections per (client, Service port): random picks cover every backend


def service(name, selector, ips, ports, affinity="None"):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "app"},
            "spec": {"selector": selector, "clusterIPs": list(ips), "ports": ports,
                     "sessionAffinity": affinity}}


WEB = [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]
CLUSTER = [
    pod("client", {"role": "client"}, ips=("10.1.0.1", "fd00::1")),
    pod("other", {"role": "other"}, ips=("10.1.0.2", "fd00::2")),
    pod("w1", {"app": "web", "tier": "open"}, ips=("10.1.0.11", "fd00::11"), ports=WEB),
    pod("w2", {"app": "web", "tier": "closed"}, ips=("10.1.0.12", "fd00::12"), ports=WEB),
    pod("w3", {"app": "web", "tier": "open"}, ips=("10.1.0.13",), ports=WEB),
    # w2 lets in only the client; `other` may send only to tier=open.
    netpol("w2-from-client", {"podSelector": {"matchLabels": {"tier": "closed"}},
                              "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
    netpol("other-to-open", {"podSelector": {"matchLabels": {"role": "other"}}, "policyTypes": ["Egress"],
                             "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "open"}}}]}]}),
    service("web", {"app": "web"}, ("10.96.0.10", "fd00:96::10"),
            [{"name": "http", "port": 80, "targetPort": "http"},
             {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}]),
    service("sticky", {"app": "web"}, ("10.96.0.11",), [{"port": 81, "targetPort": 8080}], "ClientIP"),
    service("empty", {"app": "nothing"}, ("10.96.0.12",), [{"port": 82, "targetPort": 8080}]),
]


@pytest.fixture(params=["emulated", pytest.param("kernel", marks=pytest.mark.kernel), "emulated-generic",
                        pytest.param("kernel-generic", marks=pytest.mark.kernel)])
def node(request):
    """The cluster on one node: the specialised programs, or the generic
    ones (which translate whatever Services there are)."""
    engine, _, generic = request.param.partition("-")
    state = state_of(*CLUSTER)
    n = tracing.Node(trace.engine(engine), state)
    for b in build.build(state).values():
        if generic:
            n.add_generic(b.spec)
        else:
            n.add(b.spec, b.programs)
    table, warnings = servicemaps.entries(state)
    assert not warnings
    n.set_services(table)
    yield state, n
    n.close()


def _flows(state):
    """(client, Service, port, family, flow to the Service address)."""
    for svc in state.sorted_services():
        for address in svc.cluster_ips:
            family = 6 if ":" in address else 4
            for port in svc.ports:
                for client in ("client", "other"):
                    src = state.pod("app", client)
                    yield src, svc, port, family, pk.Flow(src.ip(family), address, port.protocol, 0, port.port)


def test_every_service_connection_gets_the_verdict_of_the_backend_it_reaches(node):
    state, n = node
    for src, svc, port, family, flow in _flows(state):
        backends = {b.ip(family): (b, target) for b, target in endpoints(svc, port, state.pods.values())
                    if b.ip(family)}
        reached = set()
        for i in range(TRIES):
            n.reset_conntrack()
            t = n.trace_service(src.ref, pk.Flow(flow.src, flow.dst, flow.protocol, 40000 + i, flow.dport))
            assert t.checksums, t
            if not backends:
                assert t.backend is None, f"{svc.name}: no backend, yet translated to {t.backend}"
                continue
            assert t.backend is not None and t.backend.dst in backends, (svc.name, t)
            backend, target = backends[t.backend.dst]
            assert t.backend.dport == target
            reached.add(backend.ref)
            want = evaluate.connection_allowed(state, src, backend, port.protocol, target, family)
            assert t.allowed == want, (src.ref, svc.name, port, backend.ref, t)
        if backends and svc.session_affinity == "None":
            assert len(reached) > 1, f"{svc.name}: {TRIES} connections all reached {reached}"


def test_later_packets_of_a_connection_keep_their_backend(node):
    state, n = node
    src = state.pod("app", "client")
    flow = pk.Flow(src.ip(4), "10.96.0.10", "TCP", 41000, 80)
    first = n.trace_service(src.ref, flow).backend
    assert all(n.trace_service(src.ref, flow).backend == first for _ in range(6))


def test_client_ip_affinity_keeps_the_backend_across_connections(node):
    state, n = node
    src = state.pod("app", "client")
    first = n.trace_service(src.ref, pk.Flow(src.ip(4), "10.96.0.11", "TCP", 42000, 81)).backend
    for sport in range(42001, 42010):
        assert n.trace_service(src.ref, pk.Flow(src.ip(4), "10.96.0.11", "TCP", sport, 81)).backend.dst == first.dst


def test_a_service_without_backends_is_left_to_the_node(node):
    state, n = node
    src = state.pod("app", "client")
    t = n.trace_service(src.ref, pk.Flow(src.ip(4), "10.96.0.12", "TCP", 43000, 82))
    assert t.backend is None and t.steps[0].passed      # on to the node, which rejects it


def _programs(*objs):
    return {ref: b.programs for ref, b in build.build(state_of(*objs)).items()}


def test_service_code_only_where_the_services_need_it():
    plain = pod("p", ips=("10.1.0.1", "fd00::1"))
    without = _programs(plain)["app/p[Pod]"]
    assert "services" not in without.features
    v4_tcp = _programs(plain, service("s", {"x": "y"}, ("10.96.0.1",), [{"port": 80}]))["app/p[Pod]"]
    assert "services" in v4_tcp.features and "session-affinity" not in v4_tcp.features
    dual = _programs(plain, service("s", {"x": "y"}, ("10.96.0.1", "fd00:96::1"),
                                    [{"port": 80}, {"port": 53, "protocol": "UDP"}], "ClientIP"))["app/p[Pod]"]
    assert "session-affinity" in dual.features
    assert without.egress.instructions < v4_tcp.egress.instructions < dual.egress.instructions
    assert without.ingress.instructions < v4_tcp.ingress.instructions < dual.ingress.instructions
    # A pod whose egress allows nothing gains nothing from translation.
    deny = netpol("deny", {"podSelector": {}, "policyTypes": ["Egress"]})
    denied = _programs(plain, deny, service("s", {"x": "y"}, ("10.96.0.1",), [{"port": 80}]))["app/p[Pod]"]
    assert "services" not in denied.features


# --- properties over random clusters (hypothesis) ----------------------------------------
import os  # noqa: E402

from hypothesis import HealthCheck, assume, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cluster_strategies as cs  # noqa: E402
from tailor.operator.errors import ManifestError  # noqa: E402

CI = os.environ.get("CI") == "true"


@st.composite
def services_for(draw, cluster: cs.Cluster):
    """One to three Services over the cluster's pods: a selector from the
    pods' label vocabulary in one of their namespaces, one or two ports of
    any protocol (targetPort a number or a container port's name), one or
    two ClusterIPs, affinity or not."""
    namespaces = sorted({p["metadata"]["namespace"] for p in cluster.pods})
    names = [n for p in cluster.pods for c in p["spec"]["containers"] for n in
             (cp.get("name") for cp in c.get("ports", [])) if n]
    out = []
    for i in range(draw(st.integers(1, 3))):
        ports = []
        for j, protocol in enumerate(draw(st.lists(st.sampled_from(("TCP", "UDP", "SCTP")), min_size=1,
                                                   max_size=2))):
            port = draw(st.sampled_from(cs.PORTS))
            target = draw(st.sampled_from(names)) if names and draw(st.booleans()) else \
                port if protocol == "SCTP" else draw(st.sampled_from(cs.PORTS))
            ports.append({"name": f"p{j}", "port": port + j * 1000, "targetPort": target, "protocol": protocol})
        ips = [f"10.96.{i}.1"] + ([f"fd00:96::{i + 1}"] if draw(st.booleans()) else [])
        out.append(service(f"svc{i}", draw(cs.labels(cs.POD_LABELS)), ips, ports,
                           draw(st.sampled_from(("None", "ClientIP")))))
        out[-1]["metadata"]["namespace"] = draw(st.sampled_from(namespaces))
    return out


@st.composite
def cluster_with_services(draw):
    cluster = draw(cs.cluster(max_pods=5, max_policies=3))
    return cluster, draw(services_for(cluster))


def service_mismatches(cluster, extra, engine: str) -> tuple[list[str], int]:
    try:
        state = cluster.state(extra)
    except ManifestError as exc:
        event(f"rejected by the loader: {exc}")
        assume(False)
        raise
    table, _ = servicemaps.entries(state)
    wrong, count = [], 0
    n = tracing.Node(trace.engine(engine), state)
    try:
        for b in build.build(state).values():
            n.add(b.spec, b.programs)
        n.set_services(table)
        pods = {p.ref: p for p in state.sorted_pods()}
        for svc in state.sorted_services():
            for address in svc.cluster_ips:
                family = 6 if ":" in address else 4
                for port in svc.ports:
                    ends = {b.ip(family): (b, t) for b, t in endpoints(svc, port, state.pods.values())
                            if b.ip(family) and (port.protocol != "SCTP" or t == port.port)}
                    for src in pods.values():
                        if src.ip(family) is None or any(b is src for b, _ in ends.values()):
                            continue
                        for i in range(3):
                            n.reset_conntrack()
                            t = n.trace_service(src.ref, pk.Flow(src.ip(family), address, port.protocol,
                                                                 50000 + i, port.port))
                            count += 1
                            if not ends:
                                if t.backend is not None:
                                    wrong.append(f"{src.ref} -> {svc.ref} {port}: translated without backends")
                                continue
                            if t.backend is None and not t.steps[0].passed and not any(
                                    evaluate.connection_allowed(state, src, b, port.protocol, tp, family)
                                    for b, tp in ends.values()):
                                continue        # dropped by the client's egress, whatever the backend
                            if t.backend is None or t.backend.dst not in ends or not t.checksums:
                                wrong.append(f"{src.ref} -> {svc.ref} {port}: {t}")
                                continue
                            backend, target = ends[t.backend.dst]
                            want = evaluate.connection_allowed(state, src, backend, port.protocol, target, family)
                            if t.backend.dport != target or t.allowed != want:
                                wrong.append(f"{src.ref} -> {svc.ref} {port} via {backend.ref}:{target}: "
                                             f"model {want}, programs {t}")
    finally:
        n.close()
    event(f"service probes > 0: {count > 0}")
    return wrong, count


@settings(max_examples=60, deadline=None, derandomize=CI, suppress_health_check=[HealthCheck.too_slow])
@given(cluster_with_services())
def test_vm_service_connections_equal_the_model_on_their_backends(drawn):
    wrong, count = service_mismatches(*drawn, "emulated")
    assert not wrong, f"{len(wrong)} of {count} differ:\n" + "\n".join(wrong[:10])


@pytest.mark.kernel
@settings(max_examples=12, deadline=None, derandomize=CI, suppress_health_check=[HealthCheck.too_slow])
@given(cluster_with_services())
def test_kernel_service_connections_equal_the_model_on_their_backends(drawn):
    wrong, count = service_mismatches(*drawn, "kernel")
    assert not wrong, f"{len(wrong)} of {count} differ:\n" + "\n".join(wrong[:10])
