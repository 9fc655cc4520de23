"""hostPort on the kernel lab, through the chain the chart writes: tailor,
then Debian's portmap (lab/cni.py). The outside host reaches web's port 80
(and UDP 81) at web's node's address on 8081, portmap's DNAT rules being in
that node's namespace; the pods' programs still judge what portmap
translates (closed's policy drops the outside host's connections to 8082,
a pod outside the ipBlock cannot use web's hostPort); the probe equals the
model; a portmap ADD that fails leaves nothing behind; DEL removes the
rules."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tailor.lab import cni, lab, netns
from tailor.lab import state as state_
from tailor.lab.probing import probe

pytestmark = pytest.mark.kernel
MANIFEST = os.path.join(os.path.dirname(__file__), "hostport.yaml")
NAME = "thp0"
TIMEOUT = 1.0


@pytest.fixture(scope="module")
def up():
    if state_.exists(NAME):
        lab.down(NAME, echo=lambda _: None)
    data = lab.up([MANIFEST], backend="kernel", name=NAME, echo=lambda _: None)
    yield data
    lab.down(NAME, echo=lambda _: None)
    assert lab.leftovers(data) == []


def _pod(data: dict, ref: str) -> dict:
    return state_.pod(data, ref)


def _node_address(data: dict, pod: dict) -> str:
    return probe.node_addresses(state_.node(data, pod["node"]))[0]


class _Serving:
    """The probe's servers (`serve --peers`) in a pod's namespace, for the
    length of a `with`; `peers()` (after the `with`) the source addresses
    the pod saw."""

    def __init__(self, pod: dict, tcp: list[int], udp: list[int] = ()):
        self.argv = netns.exec_argv(pod["netns"], [
            sys.executable, "-m", "tailor.lab.probing.serve", "--peers",
            "--tcp", ",".join(map(str, tcp)), "--udp", ",".join(map(str, udp))])
        self.out = ""

    def __enter__(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()   # waits until every socket is bound
        if line != "ready":
            self.proc.kill()
            raise AssertionError(f"serve did not start: {line}{self.proc.stderr.read()}")
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.out, _ = self.proc.communicate()

    def peers(self) -> set[str]:
        return {line.split()[1] for line in self.out.splitlines() if line.startswith("peer ")}


def _dial(netns_name: str, targets: list[tuple[str, str, int]]) -> list[str]:
    """The lab's dial helper from `netns_name`: each (protocol, address,
    port) -> "open" | "refused" | "timeout" | "error: ...", in order."""
    request = [{"id": i, "protocol": p, "address": a, "port": n} for i, (p, a, n) in enumerate(targets)]
    proc = subprocess.run(netns.exec_argv(netns_name, [sys.executable, "-m", "tailor.lab.probing.dial",
                                                       "--timeout", str(TIMEOUT)]),
                          input=json.dumps(request), capture_output=True, text=True, timeout=30, check=True)
    answers = json.loads(proc.stdout)
    return [answers[str(i)] for i in range(len(targets))]


def _nat_rules(netns_name: str, *extra: str) -> str:
    return subprocess.run(netns.exec_argv(netns_name, ["iptables", "-t", "nat", *extra]),
                          capture_output=True, text=True, check=True).stdout


def _hostport_rules(data: dict, pod: dict) -> list[str]:
    """The CNI-HOSTPORT-DNAT jumps portmap wrote for `pod` in its node's namespace."""
    node = state_.node(data, pod["node"])
    return [line for line in _nat_rules(node["netns"], "-S").splitlines()
            if line.startswith("-A CNI-HOSTPORT-DNAT") and f'id: \\"{pod["container_id"]}\\"' in line]


def _links(netns_name: str) -> set[str]:
    return {link["ifname"] for link in json.loads(netns.ip("-j", "link", "show", netns=netns_name))}


def test_outside_host_reaches_the_server_on_its_nodes_host_port(up):
    web = _pod(up, "hp/web")
    outside = up["outside"]
    address = _node_address(up, web)
    with _Serving(web, [80], [81]) as serving:
        got = _dial(outside["netns"], [("TCP", address, 8081), ("UDP", address, 8081)])
    assert got == ["open", "open"]
    # Not masqueraded: web's program sees the outside host, whom its ipBlock lets in.
    assert serving.peers() == {outside["addresses"][0].split("/")[0]}


def test_portmap_rules_are_in_the_nodes_namespace(up):
    published = {"hp/web": {("tcp", 8081, 80), ("udp", 8081, 81)}, "hp/closed": {("tcp", 8082, 80)}}
    for ref, ports in published.items():
        pod = _pod(up, ref)
        jumps = _hostport_rules(up, pod)
        assert {(re.search(r"-p (\w+)", j).group(1), int(re.search(r"--dports (\d+)", j).group(1)))
                for j in jumps} == {(proto, host) for proto, host, _ in ports}, jumps
        chain = re.search(r"-j (CNI-DN-\w+)", jumps[0]).group(1)
        rules = _nat_rules(state_.node(up, pod["node"])["netns"], "-S", chain)
        for _, host, container in ports:
            assert f"--dport {host} -j DNAT --to-destination {pod['addresses'][0]}:{container}" in rules
    # No pod without a hostPort is handed to portmap.
    assert _hostport_rules(up, _pod(up, "hp/client")) == []


def test_policy_still_judges_host_port_traffic(up):
    web, closed, client = _pod(up, "hp/web"), _pod(up, "hp/closed"), _pod(up, "hp/client")
    closed_node = state_.node(up, closed["node"])
    with _Serving(web, [80], [81]), _Serving(closed, [80]) as closed_serving:
        got = _dial(up["outside"]["netns"], [("TCP", _node_address(up, web), 8081),
                                             ("TCP", _node_address(up, closed), 8082)])
        # A pod is not in web's ipBlock, whichever way it comes.
        from_pod = _dial(client["netns"], [("TCP", _node_address(up, web), 8081)])
    assert got == ["open", "timeout"]
    assert from_pod == ["timeout"]
    assert closed_serving.peers() == set()
    # portmap did translate the connection to closed: its program dropped it.
    chain = re.search(r"-j (CNI-DN-\w+)", _hostport_rules(up, closed)[0]).group(1)
    listed = _nat_rules(closed_node["netns"], "-L", chain, "-n", "-v", "-x")
    counted = [line.split() for line in listed.splitlines() if "DNAT" in line and "dpt:8082" in line]
    assert counted and int(counted[0][0]) > 0, counted


def test_probe_equals_the_model(up):
    assert probe.check(up, lab.probe(up["name"])) == []


def test_a_failed_portmap_add_leaves_nothing(up):
    """closed is taken off (chain DEL), then ADDed again with a portmap that
    writes its rules and then fails: the error names the pod and the
    plugin, and neither the rules nor tailor's attachment are left."""
    closed = _pod(up, "hp/closed")
    node = state_.node(up, closed["node"])
    cni.delete(up, node, closed)
    assert _hostport_rules(up, closed) == []
    real = cni.installed_portmap(up)
    os.replace(real, real + ".real")
    try:
        with open(real, "w") as f:
            f.write("#!/bin/sh\n"
                    'if [ "$CNI_COMMAND" = ADD ]; then\n'
                    f"  {real}.real >/dev/null || exit 1\n"
                    '  echo \'{"cniVersion": "1.0.0", "code": 11, "msg": "refused after writing its rules"}\'\n'
                    "  exit 1\n"
                    "fi\n"
                    f"exec {real}.real\n")
        os.chmod(real, 0o755)
        with pytest.raises(cni.CniError) as failed:
            cni.add(up, node, closed)
    finally:
        os.replace(real + ".real", real)
    assert failed.value.plugin == "portmap" and failed.value.pod == "hp/closed[Pod]"
    assert "hp/closed[Pod]" in str(failed.value) and "portmap" in str(failed.value)
    assert _hostport_rules(up, closed) == []
    assert closed["interface"] not in _links(node["netns"])   # the host side of its veth
    assert "eth0" not in _links(closed["netns"])


def test_del_removes_the_rules(up):
    web = _pod(up, "hp/web")
    assert _hostport_rules(up, web)
    cni.delete(up, state_.node(up, web["node"]), web)
    assert _hostport_rules(up, web) == []
    assert "8081" not in _nat_rules(state_.node(up, web["node"])["netns"], "-S")
    cni.delete(up, state_.node(up, web["node"]), web)   # idempotent, as `down` runs it again
