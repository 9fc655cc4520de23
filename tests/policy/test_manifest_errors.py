"""Manifests the API server would reject are rejected with the file, the
object and the field named."""
import pytest

from tailor.operator.cluster import manifests
from tailor.operator.errors import ManifestError

NP = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny, namespace: x}}
spec:
{spec}
"""
ANP = """apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: anp}}
spec:
{spec}
"""
BANP = """apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {{name: {name}}}
spec:
{spec}
"""
CNP = """apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: cnp}}
spec:
{spec}
"""
SUBJECT = "  subject: {namespaces: {}}\n"
CNP_HEAD = "  tier: Admin\n  priority: 1\n" + SUBJECT


def _indent(text):
    return "\n".join("  " + line for line in text.strip("\n").splitlines())


BAD = [
    # (id, manifest, expected message fragments)
    ("np-named-port", NP.format(spec=_indent("""
podSelector: {}
ingress:
- ports: [{port: 80}, {port: http_x}]""")),
     ["NetworkPolicy x/deny", "spec.ingress[0].ports[1].port", "'http_x' is not a valid port name (IANA_SVC_NAME)"]),
    ("np-port-name-too-long", NP.format(spec=_indent("""
podSelector: {}
ingress: [{ports: [{port: a-very-long-port-name}]}]""")), ["no more than 15 characters"]),
    ("np-port-name-digits-only-string", NP.format(spec=_indent("""
podSelector: {}
ingress: [{ports: [{port: "80"}]}]""")), ["spec.ingress[0].ports[0].port", "at least one letter"]),
    ("np-port-zero", NP.format(spec=_indent("""
podSelector: {}
ingress: [{ports: [{port: 0}]}]""")), ["between 1 and 65535"]),
    ("np-port-too-big", NP.format(spec=_indent("""
podSelector: {}
egress: [{ports: [{port: 70000}]}]""")), ["spec.egress[0].ports[0].port", "between 1 and 65535"]),
    ("np-endport-below-port", NP.format(spec=_indent("""
podSelector: {}
ingress: [{ports: [{port: 90, endPort: 80}]}]""")),
     ["spec.ingress[0].ports[0].endPort", "greater than or equal to `port`"]),
    ("np-endport-without-port", NP.format(spec=_indent("""
podSelector: {}
ingress: [{ports: [{endPort: 80}]}]""")), ["endPort", "when `port` is not specified"]),
    ("np-endport-with-named-port", NP.format(spec=_indent("""
podSelector: {}
ingress: [{ports: [{port: http, endPort: 80}]}]""")), ["endPort", "named port"]),
    ("np-protocol", NP.format(spec=_indent("""
podSelector: {}
ingress: [{ports: [{protocol: ICMP, port: 80}]}]""")),
     ["spec.ingress[0].ports[0].protocol", "Unsupported value: 'ICMP'"]),
    ("np-lowercase-protocol", NP.format(spec=_indent("""
podSelector: {}
ingress: [{ports: [{protocol: tcp}]}]""")), ["Unsupported value: 'tcp'"]),
    ("np-bad-cidr", NP.format(spec=_indent("""
podSelector: {}
ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]""")),
     ["spec.ingress[0].from[0].ipBlock.cidr", "not a valid CIDR"]),
    ("np-cidr-without-prefix", NP.format(spec=_indent("""
podSelector: {}
ingress: [{from: [{ipBlock: {cidr: 10.0.0.1}}]}]""")), ["not a valid CIDR"]),
    ("np-except-outside", NP.format(spec=_indent("""
podSelector: {}
ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]""")),
     ["ipBlock.except[0]", "strict subset of `cidr`"]),
    ("np-except-equal", NP.format(spec=_indent("""
podSelector: {}
egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}]""")),
     ["spec.egress[0].to[0].ipBlock.except[0]", "strict subset"]),
    ("np-except-other-family", NP.format(spec=_indent("""
podSelector: {}
egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: ["fd00::/64"]}}]}]""")), ["strict subset"]),
    ("np-ipblock-and-selector", NP.format(spec=_indent("""
podSelector: {}
ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]""")), ["more than 1 peer type"]),
    ("np-empty-peer", NP.format(spec=_indent("""
podSelector: {}
ingress: [{from: [{}]}]""")), ["spec.ingress[0].from[0]", "must specify a peer"]),
    ("np-policy-type", NP.format(spec=_indent("""
podSelector: {}
policyTypes: [Ingress, Outbound]""")), ["spec.policyTypes[1]", "Unsupported value: 'Outbound'"]),
    ("np-bad-selector-operator", NP.format(spec=_indent("""
podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}""")),
     ["spec.podSelector.matchExpressions[0].operator", "not a valid selector operator"]),
    ("np-bad-peer-selector", NP.format(spec=_indent("""
podSelector: {}
ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In}]}}]}]""")),
     ["spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values", "must be specified"]),
    ("np-wrong-api-version", NP.format(spec="  podSelector: {}").replace("networking.k8s.io/v1", "extensions/v1beta1"),
     ["apiVersion", "extensions/v1beta1"]),
    ("anp-priority-high", ANP.format(spec="  priority: 1001\n" + SUBJECT),
     ["AdminNetworkPolicy anp", "spec.priority", "between 0 and 1000"]),
    ("anp-priority-negative", ANP.format(spec="  priority: -1\n" + SUBJECT), ["spec.priority"]),
    ("anp-priority-missing", ANP.format(spec=SUBJECT), ["spec.priority", "Required value"]),
    ("anp-subject-missing", ANP.format(spec="  priority: 1\n"), ["spec.subject", "Required value"]),
    ("anp-subject-both", ANP.format(spec="  priority: 1\n  subject: {namespaces: {}, pods: "
                                         "{namespaceSelector: {}, podSelector: {}}}\n"),
     ["spec.subject", "exactly one of namespaces, pods"]),
    ("anp-action", ANP.format(spec="  priority: 1\n" + SUBJECT + _indent("""
ingress: [{action: Reject, from: [{namespaces: {}}]}]""")),
     ["spec.ingress[0].action", "Unsupported value: 'Reject'"]),
    ("anp-action-missing", ANP.format(spec="  priority: 1\n" + SUBJECT + _indent("""
ingress: [{from: [{namespaces: {}}]}]""")), ["spec.ingress[0].action", "Required value"]),
    ("anp-from-empty", ANP.format(spec="  priority: 1\n" + SUBJECT + _indent("""
ingress: [{action: Deny, from: []}]""")), ["spec.ingress[0].from", "at least one peer"]),
    ("anp-ingress-networks", ANP.format(spec="  priority: 1\n" + SUBJECT + _indent("""
ingress: [{action: Deny, from: [{networks: [10.0.0.0/8]}]}]""")),
     ["spec.ingress[0].from[0].networks", "unknown field"]),
    ("anp-peer-two-kinds", ANP.format(spec="  priority: 1\n" + SUBJECT + _indent("""
egress: [{action: Deny, to: [{namespaces: {}, networks: [10.0.0.0/8]}]}]""")),
     ["spec.egress[0].to[0]", "exactly one of"]),
    ("anp-bad-network", ANP.format(spec="  priority: 1\n" + SUBJECT + _indent("""
egress: [{action: Deny, to: [{networks: [10.0.0.0/40]}]}]""")),
     ["spec.egress[0].to[0].networks[0]", "not a valid CIDR"]),
    ("anp-port-range-reversed", ANP.format(spec="  priority: 1\n" + SUBJECT + _indent("""
egress: [{action: Deny, to: [{namespaces: {}}], ports: [{portRange: {start: 90, end: 80}}]}]""")),
     ["spec.egress[0].ports[0].portRange", "less than end"]),
    ("anp-port-two-kinds", ANP.format(spec="  priority: 1\n" + SUBJECT + _indent("""
ingress: [{action: Deny, from: [{namespaces: {}}], ports: [{portNumber: {port: 80}, namedPort: http}]}]""")),
     ["spec.ingress[0].ports[0]", "exactly one of"]),
    ("anp-port-protocol", ANP.format(spec="  priority: 1\n" + SUBJECT + _indent("""
ingress: [{action: Deny, from: [{namespaces: {}}], ports: [{portNumber: {protocol: ICMP, port: 80}}]}]""")),
     ["spec.ingress[0].ports[0].portNumber.protocol", "Unsupported value"]),
    ("anp-named-port", ANP.format(spec="  priority: 1\n" + SUBJECT + _indent("""
ingress: [{action: Deny, from: [{namespaces: {}}], ports: [{namedPort: HTTP}]}]""")),
     ["spec.ingress[0].ports[0].namedPort", "IANA_SVC_NAME"]),
    ("anp-empty-ports", ANP.format(spec="  priority: 1\n" + SUBJECT + _indent("""
ingress: [{action: Deny, from: [{namespaces: {}}], ports: []}]""")), ["spec.ingress[0].ports", "at least one port"]),
    ("banp-name", BANP.format(name="strict", spec=SUBJECT),
     ["BaselineAdminNetworkPolicy strict", "metadata.name", 'metadata.name="default"']),
    ("banp-pass", BANP.format(name="default", spec=SUBJECT + _indent("""
ingress: [{action: Pass, from: [{namespaces: {}}]}]""")),
     ["spec.ingress[0].action", "Unsupported value: 'Pass'"]),
    ("pod-port-name", """apiVersion: v1
kind: Pod
metadata: {name: p, namespace: x}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 80, name: Web}]}]}
""", ["Pod x/p", "spec.containers[0].ports[0].name", "IANA_SVC_NAME"]),
    ("pod-ip", """apiVersion: v1
kind: Pod
metadata: {name: p, namespace: x}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.300}
""", ["status.podIP", "not a valid IP address"]),
    ("deployment-no-template", """apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: prod}
spec: {replicas: 1}
""", ["Deployment prod/web", "spec.template", "Required value"]),
    ("families-annotation", """apiVersion: v1
kind: Pod
metadata: {name: p, namespace: x, annotations: {tailor.dev/ip-families: IPv5}}
spec: {containers: [{name: c, image: i}]}
""", ["tailor.dev/ip-families", "not a list of IP families"]),
    ("namespace-label", """apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: "a b"}}
""", ["Namespace x", "metadata.labels.team", "not a valid label value"]),
    ("cnp-tier-missing", CNP.format(spec="  priority: 1\n" + SUBJECT),
     ["ClusterNetworkPolicy cnp", "spec.tier", "Required value"]),
    ("cnp-tier-lowercase", CNP.format(spec="  tier: admin\n  priority: 1\n" + SUBJECT),
     ["spec.tier", "Unsupported value: 'admin'"]),
    ("cnp-priority-range", CNP.format(spec="  tier: Baseline\n  priority: 1001\n" + SUBJECT),
     ["spec.priority", "between 0 and 1000"]),
    ("cnp-allow-is-v1alpha1", CNP.format(spec=CNP_HEAD + _indent("""
ingress: [{action: Allow, from: [{namespaces: {}}]}]""")),
     ["spec.ingress[0].action", "Unsupported value: 'Allow'", '"Accept"']),
    ("cnp-ports-is-v1alpha1", CNP.format(spec=CNP_HEAD + _indent("""
ingress: [{action: Accept, from: [{namespaces: {}}], ports: [{portNumber: {port: 80}}]}]""")),
     ["spec.ingress[0].ports", "unknown field"]),
    ("cnp-protocol-without-port", CNP.format(spec=CNP_HEAD + _indent("""
ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {}}]}]""")),
     ["spec.ingress[0].protocols[0].tcp.destinationPort", "Required value"]),
    ("cnp-port-number-and-range", CNP.format(spec=CNP_HEAD + _indent("""
egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{udp: {destinationPort: {number: 5, range: {start: 1, end: 9}}}}]}]""")),
     ["spec.egress[0].protocols[0].udp.destinationPort", "exactly one of number, range"]),
    ("cnp-range-empty", CNP.format(spec=CNP_HEAD + _indent("""
egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{sctp: {destinationPort: {range: {start: 80, end: 80}}}}]}]""")),
     ["destinationPort.range", "start (80) must be less than end (80)"]),
    ("cnp-two-protocols-in-one-entry", CNP.format(spec=CNP_HEAD + _indent("""
egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 1}}, destinationNamedPort: web}]}]""")),
     ["spec.egress[0].protocols[0]", "exactly one of tcp, udp, sctp, destinationNamedPort"]),
    ("cnp-ingress-networks", CNP.format(spec=CNP_HEAD + _indent("""
ingress: [{action: Deny, from: [{networks: [10.0.0.0/8]}]}]""")),
     ["spec.ingress[0].from[0].networks", "unknown field"]),
    ("cnp-domain-names-not-a-list", CNP.format(spec=CNP_HEAD + _indent("""
egress: [{action: Accept, to: [{domainNames: example.com}]}]""")),
     ["spec.egress[0].to[0].domainNames", "list of at least one domain name"]),
    ("cnp-ingress-domain-names", CNP.format(spec=CNP_HEAD + _indent("""
ingress: [{action: Accept, from: [{domainNames: [example.com]}]}]""")),
     ["spec.ingress[0].from[0].domainNames", "unknown field"]),
    ("cnp-misspelt-spec-field", CNP.format(spec=CNP_HEAD + _indent("""
egres: [{action: Deny, to: [{namespaces: {}}]}]""")), ["spec.egres", "unknown field"]),
    ("cnp-misspelt-pod-selector", CNP.format(spec=CNP_HEAD + _indent("""
ingress: [{action: Accept, from: [{pods: {podSelecter: {matchLabels: {app: a}}}}]}]""")),
     ["spec.ingress[0].from[0].pods.podSelecter", "unknown field"]),
    ("anp-protocols-is-v1alpha2", ANP.format(spec="  priority: 1\n" + SUBJECT + _indent("""
ingress: [{action: Allow, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 443}}}]}]""")),
     ["spec.ingress[0].protocols", "unknown field"]),
    ("cnp-too-many-rules", CNP.format(spec=CNP_HEAD + "  ingress:\n" + "".join(
        "  - {action: Deny, from: [{namespaces: {}}]}\n" for _ in range(26))),
     ["spec.ingress", "at most 25 items, got 26"]),
    ("cnp-bad-network", CNP.format(spec=CNP_HEAD + _indent("""
egress: [{action: Deny, to: [{networks: [10.0.0.1]}]}]""")),
     ["spec.egress[0].to[0].networks[0]", "not a valid CIDR"]),
    ("no-name", "apiVersion: v1\nkind: Namespace\nmetadata: {}\n", ["metadata.name", "Required value"]),
    ("no-kind", "apiVersion: v1\nmetadata: {name: x}\n", ["kind: Required value"]),
    ("bad-yaml", "kind: Pod\n  metadata: [\n", ["not valid YAML"]),
]


@pytest.mark.parametrize("manifest, fragments", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_manifest_is_rejected_with_location(tmp_path, manifest, fragments):
    (tmp_path / "policies").mkdir()
    path = tmp_path / "policies" / "bad.yaml"
    path.write_text(manifest)
    with pytest.raises(ManifestError) as err:
        manifests.load([str(tmp_path)])
    message = str(err.value)
    assert message.startswith(str(path) + ": "), message
    for fragment in fragments:
        assert fragment in message, message


def test_message_reads_file_object_field_problem(tmp_path):
    path = tmp_path / "deny.yaml"
    path.write_text(BAD[0][1])
    with pytest.raises(ManifestError) as err:
        manifests.load([str(path)])
    assert str(err.value) == (f"{path}: NetworkPolicy x/deny: spec.ingress[0].ports[1].port: "
                              "'http_x' is not a valid port name (IANA_SVC_NAME): must contain only "
                              "lowercase alphanumeric characters or '-'")
    assert err.value.obj == "NetworkPolicy x/deny"
    assert err.value.field == "spec.ingress[0].ports[1].port"


def test_missing_file_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="cannot read"):
        manifests.load([str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize("spec", [
    "  podSelector: {}\n  ingress: [{ports: [{port: 80, endPort: 80}]}]",            # endPort == port
    "  podSelector: {}\n  ingress: [{ports: [{port: 80, endPort: 90, protocol: SCTP}]}]",
    "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.1/8}}]}]",         # host bits are accepted
    "  podSelector: {}\n  ingress: [{from: [], ports: []}]",
    "  podSelector: {}\n  ingress: [{}, null]",
    "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 'fd00::/48', except: ['fd00::/64']}}]}]",
])
def test_valid_edge_cases_load(tmp_path, spec):
    path = tmp_path / "ok.yaml"
    path.write_text(NP.format(spec=spec))
    manifests.load([str(path)])
