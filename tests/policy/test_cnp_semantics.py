"""ClusterNetworkPolicy (v1alpha2) read into the tiers: parsing normalised
to the one AdminPolicy the semantics and the compiler see, and the peers
tailor cannot honour (domainNames) enforced fail-closed, as the API asks.
The truth tables live in cases/cnp/; these are the points a table cannot
show."""
import yaml

from tailor.operator import policy
from tailor.operator.cluster import adminpolicy, manifests
from tailor.operator.cluster.state import ClusterState

TOPOLOGY = """
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: x}}
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x},
   spec: {containers: [{name: c, image: i, ports: [{containerPort: 80, name: web}]}]},
   status: {podIP: 10.0.0.10}}
- {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: x},
   spec: {containers: [{name: c, image: i, ports: [{containerPort: 80, name: web}]}]},
   status: {podIP: 10.0.0.11}}
"""


def cnp(spec: str, name: str = "p") -> dict:
    return yaml.safe_load(f"""
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: {name}}}
spec:
{spec}
""")


def cluster(*docs) -> ClusterState:
    state = ClusterState()
    manifests.apply(state, [("topology", yaml.safe_load(TOPOLOGY))] + [("policy", d) for d in docs])
    return state


def test_accept_is_allow_and_the_tier_is_kept():
    policy_ = adminpolicy.parse_cnp(cnp("""
  tier: Baseline
  priority: 7
  subject: {pods: {podSelector: {}}}
  ingress: [{action: Accept, from: [{namespaces: {}}], protocols: [{destinationNamedPort: web}]}]
"""), "p")
    assert (policy_.kind, policy_.tier, policy_.priority) == ("ClusterNetworkPolicy", "Baseline", 7)
    assert policy_.ingress[0].action == adminpolicy.ALLOW
    assert policy_.subject.namespace_selector.matches({"any": "namespace"})


def test_an_accepted_domain_name_matches_nothing():
    state = cluster(cnp("""
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - {action: Accept, to: [{domainNames: [x.example.com]}, {networks: [10.0.0.11/32]}]}
  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}
"""))
    a, b = state.find_pod("x/a"), state.find_pod("x/b")
    assert policy.connection_allowed(state, a, b, "TCP", 80)             # the network peer still accepts
    assert not policy.connection_allowed(state, a, "192.0.2.1", "TCP", 443)
    (note,) = state.cluster_policies["p"].notes
    assert note.startswith("spec.egress[0].to[0].domainNames: not enforced")


def test_a_deny_or_pass_on_a_domain_name_denies_every_address():
    for action in ("Deny", "Pass"):
        state = cluster(cnp(f"""
  tier: Admin
  priority: 1
  subject: {{namespaces: {{}}}}
  egress: [{{action: {action}, to: [{{domainNames: [x.example.com]}}], protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]}}]
"""))
        a, b = state.find_pod("x/a"), state.find_pod("x/b")
        assert not policy.connection_allowed(state, a, b, "TCP", 80), action
        assert policy.connection_allowed(state, a, b, "TCP", 81), action   # its protocols still narrow it
        assert "denies every address" in state.cluster_policies["p"].notes[0]


def test_a_named_port_no_container_can_have_matches_nothing():
    state = cluster(cnp("""
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{destinationNamedPort: Not_A_Port_Name}]}]
"""))
    a, b = state.find_pod("x/a"), state.find_pod("x/b")
    assert policy.connection_allowed(state, a, b, "TCP", 80)
