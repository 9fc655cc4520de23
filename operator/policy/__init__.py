"""Policy semantics as a reference evaluator ("the model"): plain functions
over a ClusterState. It is the oracle the compiled per-pod programs are
checked against, never on the packet path.

Purely data-manipulative, no I/O; never imports kopf, kubernetes, grpc or
pyroute2. Called by tests, the CLI (`tailor connectivity --datapath model`)
and the compiler (`isolation`, `policies_selecting`).

Public API (call through the package: `policy.connection_allowed(...)`):
    connection_allowed(state, src, dst, protocol, port, family=None) -> bool
    connection_verdict(...) -> ConnectionVerdict      (both directions, explained)
    ingress_verdict(state, dst_pod, src, protocol, port, family=None) -> Verdict
    egress_verdict(state, src_pod, dst, protocol, port, family=None) -> Verdict
    connectivity(state) -> [{"src", "dst", "protocol", "ports"}]
    allowed_ports(state, src, dst, protocol, family=None) -> [(lo, hi), ...]
    isolation(state, pod) -> (ingress_isolated, egress_isolated)
    policies_selecting(state, pod) -> Selecting(admin, network, baseline)

Modules: verdict (Verdict, tiers), endpoints (pods or addresses at one family),
netpol and admin (each tier's rules), evaluate (the tier ladder),
reachability (connectivity: port interval sets).
"""
from __future__ import annotations

import dataclasses

from tailor.operator.cluster.adminpolicy import AdminPolicy
from tailor.operator.cluster.networkpolicy import NetworkPolicy
from tailor.operator.cluster.objects import Pod
from tailor.operator.cluster.state import ClusterState
from tailor.operator.policy import admin, netpol
from tailor.operator.policy.reachability import allowed_ports, connectivity, format_ranges, parse_ranges
from tailor.operator.policy.evaluate import (connection_allowed, connection_verdict, egress_verdict,
                                              ingress_verdict)
from tailor.operator.policy.verdict import ConnectionVerdict, Verdict


@dataclasses.dataclass(frozen=True)
class Selecting:
    """The policies that apply to one pod: the Admin tier's (ANPs, Admin
    CNPs) in evaluation order, the NetworkPolicies selecting it (either
    direction), the Baseline tier's (Baseline CNPs, the BANP) in order."""
    admin: list[AdminPolicy]
    network: list[NetworkPolicy]
    baseline: list[AdminPolicy]


def policies_selecting(state: ClusterState, pod: Pod) -> Selecting:
    admins, baselines = admin.applying(state, pod)
    return Selecting(admins, netpol.selecting(state, pod), baselines)


def isolation(state: ClusterState, pod: Pod) -> tuple[bool, bool]:
    """(ingress isolated, egress isolated) by NetworkPolicies: whether a
    connection the ANPs leave undecided can be denied by NetworkPolicy."""
    return netpol.isolation(state, pod)


__all__ = ["connection_allowed", "connection_verdict", "ingress_verdict", "egress_verdict",
           "connectivity", "allowed_ports", "format_ranges", "parse_ranges", "isolation",
           "policies_selecting", "Selecting", "Verdict", "ConnectionVerdict"]
