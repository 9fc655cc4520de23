"""The clusters the sections measure, as Kubernetes manifest dicts.

Called by the section modules. Pure: builds dicts, reads nothing. Every
cluster is deterministic (a fixed seed where anything is chosen), so two
runs measure the same objects.

  - scenarios(): the per-packet shapes, each with the pod whose program
    runs and a packet its policy allows (so the whole rule path runs);
  - mixed(n): n pods of varied shapes (no policy, ports, ipBlocks, named
    ports, egress, ANP and BANP tiers, dual-stack) for the compile section;
  - large(n): the control plane's cluster: 100 namespaces, 50 nodes, 997
    NetworkPolicies, 2 AdminNetworkPolicies and a Baseline, n pods;
  - data_plane_lab() and lab_cluster(n): kernel labs (as_list() makes them
    one manifests file).
"""
from __future__ import annotations

import dataclasses

ANP_API = "policy.networking.k8s.io/v1alpha1"


def namespace(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}


def pod(name: str, ns: str, labels: dict, ips, *, ports=(), node: str | None = None) -> dict:
    spec = {"containers": [{"name": "c", "image": "x", "ports": list(ports)}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": dict(labels), "resourceVersion": "1"},
            "spec": spec, "status": {"phase": "Running", "podIPs": [{"ip": ip} for ip in ips]}}


def netpol(name: str, ns: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def anp(name: str, priority: int, spec: dict) -> dict:
    return {"apiVersion": ANP_API, "kind": "AdminNetworkPolicy", "metadata": {"name": name},
            "spec": {"priority": priority, **spec}}


def banp(spec: dict) -> dict:
    return {"apiVersion": ANP_API, "kind": "BaselineAdminNetworkPolicy", "metadata": {"name": "default"},
            "spec": spec}


def sel(**labels) -> dict:
    return {"matchLabels": labels}


# -- per packet -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    objects: list[dict]
    subject: str                 # the pod whose program runs: "ns/name[Pod]"
    direction: str               # which of its programs: "ingress" or "egress"
    flow: tuple                  # (src, dst, protocol, sport, dport): allowed by the policy
    about: str


SUBJECT = "app/p[Pod]"
IP, IP6 = "10.1.0.1", "fd00::1"
CLIENT_IP, CLIENT_IP6 = "10.1.0.9", "fd00::9"
_NS = [namespace("app", {"team": "app"}), namespace("ops", {"team": "ops"})]
_IN = (CLIENT_IP, IP, "TCP", 40000, 80)


_OUT = (IP, CLIENT_IP, "TCP", 40000, 9090)


def _service() -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "app"},
            "spec": {"selector": {"role": "web"}, "clusterIP": "10.96.0.10",
                     "ports": [{"port": 80, "targetPort": 9090}, {"port": 53, "protocol": "UDP"}]}}


def _client(ips=(CLIENT_IP, CLIENT_IP6)) -> dict:
    return pod("client", "app", {"role": "web"}, ips,
               ports=[{"name": "metrics", "containerPort": 9090}])


def _subject(ips=(IP,)) -> dict:
    return pod("p", "app", {"role": "db"}, ips, ports=[{"name": "http", "containerPort": 80}])


def _web_peers(n: int) -> list[dict]:
    """n - 1 more pods like the client: the peer group holds n addresses."""
    return [pod(f"web{i}", "app", {"role": "web"}, (f"10.1.{1 + i // 250}.{i % 250 + 1}",))
            for i in range(n - 1)]


def _allow_web(ports=(80,)) -> dict:
    return netpol("db", "app", {"podSelector": {"matchLabels": {"role": "db"}}, "ingress": [
        {"from": [{"podSelector": sel(role="web")}], "ports": [{"port": p} for p in ports]}]})


def _ten_rules() -> dict:
    """Nine rules the packet fails (ipBlocks and selectors, other ports), then the one it matches."""
    rules = []
    for i in range(9):
        peer = {"ipBlock": {"cidr": f"10.{100 + i}.0.0/16"}} if i % 2 else {"podSelector": sel(app=f"x{i}")}
        rules.append({"from": [peer], "ports": [{"port": 8000 + i}]})
    rules.append({"from": [{"podSelector": sel(role="web")}], "ports": [{"port": 80}]})
    return netpol("db", "app", {"podSelector": {"matchLabels": {"role": "db"}}, "ingress": rules})


def _tiers() -> list[dict]:
    return [
        anp("ops", 5, {"subject": {"namespaces": {}}, "ingress": [
            {"name": "deny-ops", "action": "Deny", "from": [{"namespaces": sel(team="ops")}]},
            {"name": "pass-rest", "action": "Pass", "from": [{"namespaces": {}}]}]}),
        netpol("db", "app", {"podSelector": {}, "ingress": [
            {"from": [{"podSelector": sel(role="web")}], "ports": [{"port": 80}]}]}),
        banp({"subject": {"namespaces": {}}, "ingress": [
            {"name": "deny-all", "action": "Deny", "from": [{"namespaces": {}}]}]})]


def scenarios() -> list[Scenario]:
    base = _NS + [_client()]
    named = netpol("db", "app", {"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Egress"],
                                 "egress": [{"to": [{"podSelector": sel(role="web")}],
                                             "ports": [{"port": "metrics"}]}]})
    except_ = netpol("db", "app", {"podSelector": {"matchLabels": {"role": "db"}}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8",
                               "except": ["10.9.0.0/16", "10.2.0.0/16", "10.1.128.0/17"]}}],
         "ports": [{"port": 80}]}]})
    return [
        Scenario("no-policy-v4", base + [_subject()], SUBJECT, "ingress", _IN, "IPv4 pod, no policy"),
        Scenario("no-policy-dual", base + [_subject((IP, IP6))], SUBJECT, "ingress",
                 (CLIENT_IP6, IP6, "TCP", 40000, 80), "dual-stack pod, no policy, an IPv6 packet"),
        Scenario("ingress-1-rule", base + [_subject(), _allow_web()], SUBJECT, "ingress", _IN,
                 "one rule: from role=web, TCP 80"),
        Scenario("ingress-10-rules", base + [_subject(), _ten_rules()], SUBJECT, "ingress", _IN,
                 "ten rules, the packet matches the last"),
        Scenario("peers-100", base + [_subject(), _allow_web()] + _web_peers(100), SUBJECT, "ingress", _IN,
                 "one rule whose selector holds 100 pods"),
        Scenario("peers-1000", base + [_subject(), _allow_web()] + _web_peers(1000), SUBJECT, "ingress",
                 _IN, "one rule whose selector holds 1,000 pods"),
        Scenario("ipblock-except", base + [_subject(), except_], SUBJECT, "ingress", _IN,
                 "ipBlock 10.0.0.0/8 with three excepts, TCP 80"),
        Scenario("named-ports", base + [_subject(), named], SUBJECT, "egress",
                 (IP, CLIENT_IP, "TCP", 40000, 9090), "egress to a named port (the peer's number), "
                                                       "the subject's egress program"),
        Scenario("anp-tiers", base + [_subject()] + _tiers(), SUBJECT, "ingress", _IN,
                 "ANP Deny/Pass, NetworkPolicy allow, BANP deny"),
        Scenario("egress-v4", base + [_subject()], SUBJECT, "egress", _OUT,
                 "what an IPv4 pod without policy sends, no Services in the cluster"),
        Scenario("egress-v4-services", base + [_subject(), _service()], SUBJECT, "egress", _OUT,
                 "the same with a TCP and a UDP Service in the cluster: the translation's lookups, "
                 "missed by a packet to a pod"),
    ]


# -- mixed shapes (compile) -------------------------------------------------------------------

ROLES = ("web", "db", "cache", "batch")
_PORTS = [{"name": "http", "containerPort": 80}, {"name": "metrics", "containerPort": 9090}]


def mixed(n: int) -> list[dict]:
    """n pods over 10 namespaces; what isolates a pod depends on its role and
    namespace, so the shapes vary: unisolated (every 5th namespace has no
    NetworkPolicy), ports, ipBlocks with excepts, named ports both ways,
    egress, the ANP's tiers (namespaces team=t1), the BANP's (team=t0),
    dual-stack (every 3rd pod)."""
    objs = [namespace(f"ns{i}", {"team": f"t{i % 3}"}) for i in range(10)]
    for j in range(n):
        ips = [f"10.50.{j // 250}.{j % 250 + 1}"] + ([f"fd00:50::{j + 1:x}"] if j % 3 == 0 else [])
        objs.append(pod(f"p{j}", f"ns{j % 10}", {"app": f"a{j % 8}", "role": ROLES[j % 4]}, ips,
                        ports=_PORTS))
    for i in range(10):
        if i % 5 == 0:
            continue
        ns = f"ns{i}"
        objs.append(netpol("db", ns, {"podSelector": {"matchLabels": {"role": "db"}}, "ingress": [
            {"from": [{"podSelector": sel(role="web")}], "ports": [{"port": 5432}]},
            {"from": [{"namespaceSelector": sel(team="t0")}], "ports": [{"port": "http"}]}]}))
        objs.append(netpol("web", ns, {
            "podSelector": {"matchLabels": {"role": "web"}}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}}],
                         "ports": [{"port": 80}, {"port": 443}]}],
            "egress": [{"to": [{"podSelector": sel(role="db")}], "ports": [{"port": 5432}]},
                       {"to": [{"podSelector": {}}], "ports": [{"port": "metrics"}]}]}))
        objs.append(netpol("cache", ns, {"podSelector": {"matchLabels": {"role": "cache"}}, "ingress": [
            {"from": [{"podSelector": sel(app=f"a{k}")}], "ports": [{"port": 6379 + k}]} for k in range(8)]}))
    objs.append(anp("guard", 10, {"subject": {"namespaces": sel(team="t1")}, "ingress": [
        {"name": "deny-t2", "action": "Deny", "from": [{"namespaces": sel(team="t2")}]},
        {"name": "pass", "action": "Pass", "from": [{"namespaces": {}}]}]}))
    objs.append(banp({"subject": {"namespaces": sel(team="t0")}, "ingress": [
        {"name": "deny-t2", "action": "Deny", "from": [{"namespaces": sel(team="t2")}]}]}))
    return objs


# -- the control plane's cluster -----------------------------------------------------------------

NAMESPACES, NODES, POLICIES = 100, 50, 1000


def large_namespaces() -> list[dict]:
    return [namespace(f"ns{i:03d}", {"team": f"t{i % 10}", "env": "sandbox" if i % 20 == 0 else "prod"})
            for i in range(NAMESPACES)]


def large_pod(j: int, *, app: str | None = None, name: str | None = None) -> dict:
    """Pod j: namespace j % 100, node j % 50, a unique address; apps and
    roles cycle within a namespace (pod j is its namespace's (j // 100)th)."""
    a, b = divmod(j, 254)
    nth = j // NAMESPACES
    return pod(name or f"p{j}", f"ns{j % NAMESPACES:03d}",
               {"app": app or f"a{nth % 10}", "role": f"r{nth % 4}"},
               (f"10.{100 + a // 256}.{a % 256}.{b + 1}",), ports=_LARGE_PORTS, node=f"n{j % NODES}")


_LARGE_PORTS = [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]


def large_policy(k: int, port_shift: int = 0) -> dict:
    """NetworkPolicy k of 997: namespace k % 100, selecting one app there;
    from a role in its namespace and an app in a team's namespaces, on one
    or two ports; every 4th also an ipBlock, every 7th an egress rule."""
    i = k % NAMESPACES
    ports = [{"port": 8080 + k % 3 + port_shift}] + ([{"port": "metrics"}] if k % 5 == 0 else [])
    peers = [{"podSelector": sel(role=f"r{k % 4}")},
             {"namespaceSelector": sel(team=f"t{(i + k) % 10}"), "podSelector": sel(app=f"a{(k + 1) % 10}")}]
    if k % 4 == 0:
        peers.append({"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}})
    spec = {"podSelector": {"matchLabels": {"app": f"a{(k // NAMESPACES) % 10}"}},
            "ingress": [{"from": peers, "ports": ports}]}
    if k % 7 == 0:
        spec["policyTypes"] = ["Ingress", "Egress"]
        spec["egress"] = [{"to": [{"namespaceSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}]}]
    return netpol(f"np{k}", f"ns{i:03d}", spec)


def large_admin() -> list[dict]:
    """Two ANPs and the BANP, all with namespace peers."""
    return [
        anp("sandbox", 10, {"subject": {"namespaces": sel(env="prod")}, "ingress": [
            {"name": "deny-sandbox", "action": "Deny", "from": [{"namespaces": sel(env="sandbox")}]}]}),
        anp("monitoring", 20, {"subject": {"namespaces": {}}, "ingress": [
            {"name": "scrape", "action": "Allow", "from": [{"namespaces": sel(team="t9")}],
             "ports": [{"portNumber": {"protocol": "TCP", "port": 9090}}]}]}),
        banp({"subject": {"namespaces": {}}, "ingress": [
            {"name": "deny-sandbox", "action": "Deny", "from": [{"namespaces": sel(env="sandbox")}]}]}),
    ]


def large(n: int) -> list[dict]:
    return (large_namespaces() + [large_pod(j) for j in range(n)]
            + [large_policy(k) for k in range(POLICIES - 3)] + large_admin())


# -- the data plane's lab ---------------------------------------------------------------------------

SERVER_PORTS = (5201, 7000)      # iperf3, request/response


def data_plane_lab(rules: int = 100) -> list[dict]:
    """A server on node1 isolated by one NetworkPolicy of `rules` ingress
    rules — rules - 1 ipBlock + port rules no client matches, then the one
    that admits role=client on the benchmark ports — and two clients, one
    on each node."""
    objs = [namespace("bench")]
    objs.append(pod("server", "bench", {"role": "server"}, (), node="node1",
                    ports=[{"containerPort": p} for p in SERVER_PORTS]))
    objs.append(pod("local", "bench", {"role": "client"}, (), node="node1"))
    objs.append(pod("remote", "bench", {"role": "client"}, (), node="node2"))
    objs.append(netpol("isolate-server", "bench", {
        "podSelector": {"matchLabels": {"role": "server"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": f"10.{200 + i // 250}.{i % 250}.0/24"}}],
                     "ports": [{"port": 10000 + i}]} for i in range(rules - 1)]
        + [{"from": [{"podSelector": sel(role="client")}], "ports": [{"port": p} for p in SERVER_PORTS]}]}))
    return objs


def unrelated_rules(rules: int = 100) -> list[tuple[str, int]]:
    """The (cidr, port) pairs of data_plane_lab's rules no client matches (for nftables)."""
    return [(f"10.{200 + i // 250}.{i % 250}.0/24", 10000 + i) for i in range(rules - 1)]


# -- the pod-start lab -------------------------------------------------------------------------------

LAB_NAMESPACES = ("front", "back", "data")


def lab_cluster(pods: int) -> list[dict]:
    """`pods` pods over three namespaces, each serving TCP 80 and UDP 81, and
    policies: `back` admits only `front` on TCP 80, `data` admits only pods
    labelled role=api on TCP 80 and denies all egress but UDP 81 — so most
    pods get policy, conntrack and selector peers compiled in."""
    objs = [namespace(n, {"tier": n}) for n in LAB_NAMESPACES]
    for i in range(pods):
        ns = LAB_NAMESPACES[i % len(LAB_NAMESPACES)]
        objs.append(pod(f"p{i:03d}", ns, {"app": f"a{i % 5}", "role": "api" if i % 4 == 0 else "worker"}, (),
                        ports=[{"containerPort": 80, "name": "http", "protocol": "TCP"},
                               {"containerPort": 81, "name": "dns", "protocol": "UDP"}]))
    objs.append(netpol("from-front", "back", {"podSelector": {}, "ingress": [{
        "from": [{"namespaceSelector": sel(tier="front")}], "ports": [{"protocol": "TCP", "port": 80}]}]}))
    objs.append(netpol("api-only", "data", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                                            "ingress": [{"from": [{"namespaceSelector": {},
                                                                   "podSelector": sel(role="api")}],
                                                         "ports": [{"protocol": "TCP", "port": "http"}]}],
                                            "egress": [{"ports": [{"protocol": "UDP", "port": 81}]}]}))
    return objs


def as_list(objs: list[dict]) -> dict:
    """One `kind: List` document (what a manifests file may hold), pods without
    status: in a lab the CNI gives the addresses."""
    items = []
    for o in objs:
        o = dict(o)
        o.pop("status", None)
        items.append(o)
    return {"apiVersion": "v1", "kind": "List", "items": items}
