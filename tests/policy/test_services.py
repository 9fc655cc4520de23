"""Services in the model: parsed as the API server reads them (errors name
the field), backends by selector with named targetPorts resolved per pod,
and a connection judged on the backend it reaches, never the Service address."""
from __future__ import annotations

import pytest

from tailor.operator.cluster import manifests
from tailor.operator.cluster.state import ClusterState
from tailor.operator.cluster import services
from tailor.operator.errors import ManifestError
from tailor.operator.policy import services as model

NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}


def pod(name, labels, ip, ports=()):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "app", "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": list(ports)}]},
            "status": {"podIPs": [{"ip": ip}]}}


def svc(name, spec):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "app"}, "spec": spec}


def load(*docs) -> ClusterState:
    state = ClusterState()
    manifests.apply(state, [("t.yaml", d) for d in (NS, *docs)])
    return state


WEB = [pod("w1", {"app": "web"}, "10.1.0.1", [{"name": "http", "containerPort": 8080}]),
       pod("w2", {"app": "web"}, "10.1.0.2", [{"name": "http", "containerPort": 9090}]),
       pod("w3", {"app": "web"}, "10.1.0.3"),                      # no port named http
       pod("client", {"app": "client"}, "10.1.0.9")]
SERVICE = svc("web", {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]})


def test_named_target_ports_resolve_per_backend():
    state = load(*WEB, SERVICE)
    s = state.services[("app", "web")]
    assert [(p.name, t) for p, t in services.endpoints(s, s.ports[0], state.pods.values())] == [
        ("w1", 8080), ("w2", 9090)]


@pytest.mark.parametrize("spec,field", [
    ({"ports": []}, "spec.ports"),
    ({"ports": [{"port": 0}]}, "spec.ports[0].port"),
    ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "spec.ports[0].protocol"),
    ({"ports": [{"port": 80}], "clusterIP": "10.96.0.300"}, "spec.clusterIPs[0]"),
    ({"ports": [{"port": 80}], "sessionAffinity": "Cookie"}, "spec.sessionAffinity"),
])
def test_bad_services_are_refused_by_name_and_field(spec, field):
    with pytest.raises(ManifestError) as e:
        load(svc("bad", spec))
    assert "Service app/bad" in str(e.value) and field in str(e.value)


def test_headless_and_external_name_services_are_ignored_with_a_warning():
    state = load(svc("headless", {"clusterIP": "None", "selector": {"app": "web"}}),
                 svc("alias", {"type": "ExternalName", "externalName": "example.org"}))
    assert state.services == {}
    assert any("Service app/headless" in w and "headless" in w for w in state.warnings)
    assert any("Service app/alias" in w and "ExternalName" in w for w in state.warnings)


def test_a_service_connection_is_judged_on_its_backends():
    only_8080 = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "p", "namespace": "app"},
                 "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                          "ingress": [{"ports": [{"port": 8080}]}]}}
    state = load(*WEB, SERVICE)
    client, s = state.pod("app", "client"), state.services[("app", "web")]
    assert model.verdict(state, client, s, s.ports[0], 4) == model.ALL
    # w1 serves on 8080, w2 on 9090: one backend allows, the other does not.
    state = load(*WEB, SERVICE, only_8080)
    assert model.verdict(state, client, s, s.ports[0], 4) == model.SOME
    empty = svc("none", {"selector": {"app": "nobody"}, "ports": [{"port": 80}]})
    state = load(*WEB, empty)
    e = state.services[("app", "none")]
    assert model.verdict(state, client, e, e.ports[0], 4) == model.NONE


def test_only_ready_pods_are_endpoints_and_affinity_keeps_its_timeout():
    from tailor.operator.cluster import manifests
    from tailor.operator.cluster.services import endpoints
    from tailor.operator.cluster.state import ClusterState

    def pod(name, ready=None, terminating=False):
        status = {"podIP": f"10.1.0.{len(name)}"}
        if ready is not None:
            status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        meta = {"name": name, "namespace": "app", "labels": {"app": "web"}}
        if terminating:
            meta["deletionTimestamp"] = "2026-12-03T00:00:00Z"
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": {"containers": [{"name": "c", "image": "x"}]}, "status": status}

    state = ClusterState()
    manifests.apply(state, [("t", o) for o in (
        pod("a"), pod("bb", ready=True), pod("ccc", ready=False), pod("dddd", ready=True, terminating=True),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "app"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}], "sessionAffinity": "ClientIP",
                  "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}})])
    svc = state.services[("app", "web")]
    assert [p.name for p, _ in endpoints(svc, svc.ports[0], state.pods.values())] == ["a", "bb"]
    assert svc.affinity_seconds == 60


def test_a_service_without_selector_takes_its_endpoint_slices_ready_addresses():
    from tailor.operator.cluster import manifests
    from tailor.operator.cluster.state import ClusterState
    from tailor.operator.compiler import servicemaps
    from tailor.operator.policy import services as model_services

    state = ClusterState()
    manifests.apply(state, [("t", o) for o in (
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "app"},
         "spec": {"containers": [{"name": "c", "image": "x"}]}, "status": {"podIP": "10.1.0.1"}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "only-api", "namespace": "app"},
         "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                  "egress": [{"to": [{"ipBlock": {"cidr": "192.168.77.1/32"}}], "ports": [{"port": 6443}]}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default"},
         "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "kubernetes", "namespace": "default",
                      "labels": {"kubernetes.io/service-name": "kubernetes"}},
         "addressType": "IPv4", "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["192.168.77.1"]},
                       {"addresses": ["192.168.77.9"], "conditions": {"ready": False}}]})])
    svc = state.services[("default", "kubernetes")]
    assert state.endpoints(svc, svc.ports[0]) == [("192.168.77.1", 6443)]
    assert [(e.address, e.port, e.backends) for e in servicemaps.entries(state)[0]] == [
        ("10.96.0.1", 443, (("192.168.77.1", 6443),))]
    # Egress policy judges the API server's address, not the Service's.
    assert model_services.verdict(state, state.pod("app", "client"), svc, svc.ports[0], 4) == model_services.ALL
