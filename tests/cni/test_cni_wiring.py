"""The wiring carries packets: two pods wired by Wiring.create inside a
throw-away "node" namespace (with forwarding on there, as the lab sets it)
exchange UDP over IPv4 and IPv6 through their link-local gateways, with no
ARP or neighbour discovery towards the gateway (the static neighbours answer)."""
from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import threading

import pytest

import cni_harness
from tailor.datapath.agent.cni import wiring

CLONE_NEWNET = 0x40000000


def in_namespace(path: str, fn):
    """fn() on a thread inside `path`: IPRoute() there opens its sockets in
    that namespace, so Wiring treats it as the node."""
    box = {}

    def run():
        try:
            fd = os.open(path, os.O_RDONLY)
            assert wiring._libc().setns(fd, CLONE_NEWNET) == 0
            os.close(fd)
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 7007))
print("ready", flush=True)
s.settimeout(10)
for _ in range(int(sys.argv[1])):
    data, peer = s.recvfrom(100)
    s.sendto(data, peer)
"""

ECHO_CLIENT = """
import socket, sys
for addr in sys.argv[1:]:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    c = socket.socket(family, socket.SOCK_DGRAM)
    c.settimeout(3)
    c.sendto(addr.encode(), (addr, 7007))
    assert c.recvfrom(100)[0] == addr.encode(), addr
print("ok")
"""


def echo(server_ns: str, client_ns: str, addresses: list[str]) -> subprocess.CompletedProcess:
    """UDP from client_ns to each address in server_ns and back (the
    machine has no ping)."""
    server = subprocess.Popen(["ip", "netns", "exec", os.path.basename(server_ns), sys.executable, "-c",
                               ECHO_SERVER, str(len(addresses))], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        return subprocess.run(["ip", "netns", "exec", os.path.basename(client_ns), sys.executable, "-c",
                               ECHO_CLIENT, *addresses], capture_output=True, text=True, timeout=30)
    finally:
        server.kill()
        server.wait()


@pytest.mark.kernel
def test_two_pods_reach_each_other_through_the_node(netns):
    node, pod_a, pod_b = netns.new(), netns.new(), netns.new()
    w = wiring.Wiring()
    a_addrs = [ipaddress.ip_address("10.244.5.2"), ipaddress.ip_address("fd00:5::2")]
    b_addrs = [ipaddress.ip_address("10.244.5.3"), ipaddress.ip_address("fd00:5::3")]

    def wire():
        for path, value in (("/proc/sys/net/ipv4/ip_forward", "1"),
                            ("/proc/sys/net/ipv6/conf/all/forwarding", "1")):
            with open(path, "w") as f:
                f.write(value)
        return (w.create(cni_harness.container_id(), "eth0", pod_a, a_addrs),
                w.create(cni_harness.container_id(), "eth0", pod_b, b_addrs))

    ep_a, ep_b = in_namespace(node, wire)
    assert ep_a.host_ifname != ep_b.host_ifname and ep_a.host_ifname.startswith("tl")
    for server, client, addrs in ((pod_b, pod_a, b_addrs), (pod_a, pod_b, a_addrs)):
        done = echo(server, client, [str(a) for a in addrs])
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
    # The pods resolved their gateway from the static entry, never by asking.
    neigh = subprocess.run(["ip", "-n", os.path.basename(pod_a), "neigh"], capture_output=True, text=True).stdout
    assert "169.254.1.1 dev eth0 lladdr " + ep_a.host_mac + " PERMANENT" in neigh
    assert "fe80::1 dev eth0 lladdr " + ep_a.host_mac + " PERMANENT" in neigh
    # Teardown inside the node namespace removes both pairs; twice is fine.
    assert in_namespace(node, lambda: [w.teardown(ep.container_id, "eth0") for ep in (ep_a, ep_b)]) == [True, True]
    assert in_namespace(node, lambda: [w.teardown(ep.container_id, "eth0") for ep in (ep_a, ep_b)]) == [False, False]
    assert "eth0" not in subprocess.run(["ip", "-n", os.path.basename(pod_a), "link"],
                                        capture_output=True, text=True).stdout
