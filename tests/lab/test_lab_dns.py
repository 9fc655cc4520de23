"""DNS under policy on the kernel lab: clients under default-deny egress
plus the usual allow-DNS rule resolve through the kube-dns ClusterIP (UDP
and TCP 53) — the egress program translates the Service address first, so
the rule that names the CoreDNS pods matches — and reach nothing else, on
one node and on two, with and without kube-proxy's rules, over native
routing and over VXLAN; the probe equals the model throughout."""
from __future__ import annotations

import os

import pytest

from tailor.lab import lab
from tailor.lab.probing import probe
from tailor.lab import state as state_

pytestmark = pytest.mark.kernel
DNS = os.path.join(os.path.dirname(__file__), "dns.yaml")
LAYOUTS = {"1node": dict(nodes=1), "2nodes": dict(nodes=2), "2nodes-kube-proxy": dict(nodes=2, kube_proxy=True),
           "2nodes-vxlan": dict(nodes=2, underlay="routed", routing="vxlan")}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def up(request):
    name = "tdns" + str(list(LAYOUTS).index(request.param))
    if state_.exists(name):
        lab.down(name, echo=lambda _: None)
    data = lab.up([DNS], backend="kernel", name=name, echo=lambda _: None, **LAYOUTS[request.param])
    yield data
    lab.down(name, echo=lambda _: None)
    assert lab.leftovers(data) == []


def test_clients_resolve_through_kube_dns_and_reach_nothing_else(up):
    got = lab.probe(up["name"])
    assert probe.check(up, got) == []
    dns = {(c["src"], c["protocol"]) for c in got["services"] if c["dst"] == "kube-system/kube-dns[Service]"}
    clients = {"app/client-1[Pod]", "app/client-2[Pod]"}
    assert {(c, p) for c in clients for p in ("UDP", "TCP")} <= dns
    # Nothing else: not the web pod, not its Service, not the outside.
    for group in ("connections", "services", "outside"):
        assert not [c for c in got[group] if c["src"] in clients
                    and c["dst"] != "kube-system/kube-dns[Service]"
                    and not c["dst"].startswith("kube-system/coredns")], group


def test_pods_fit_the_overlay(up):
    """With VXLAN a full-sized pod packet must still fit once wrapped: the
    pods' MTU is the underlay's less VXLAN's 50 bytes; natively it is left alone."""
    import json
    import subprocess

    from tailor.lab import netns

    pod = up["pods"][0]
    links = json.loads(subprocess.run(netns.exec_argv(pod["netns"], ["ip", "-j", "link", "show", "eth0"]),
                                      capture_output=True, text=True, check=True).stdout)
    vxlan = up.get("routing") == "vxlan"
    assert links[0]["mtu"] == (1450 if vxlan else 1500), (up.get("routing"), links[0]["mtu"])
