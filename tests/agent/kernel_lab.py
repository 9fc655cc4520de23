"""A node network namespace with pod namespaces wired to it by hand (veth,
/32 address, link-local gateway with a static neighbour, host route and
neighbour to the pod: as the CNI wires them), and probes that send real TCP/UDP between the pods. For the kernel
backend tests; needs root."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tailor.datapath.agent.backends import base

GATEWAY = "169.254.1.1"

# Runs inside a pod namespace: TCP accept on 80 and 8080, UDP echo on 80.
SERVER = textwrap.dedent("""
    import socket, threading
    def tcp(port):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port)); s.listen(64)
        while True:
            c, _ = s.accept(); c.sendall(b"hi"); c.close()
    def udp(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
        while True:
            data, peer = s.recvfrom(2048); s.sendto(data, peer)
    for p in (80, 8080):
        threading.Thread(target=tcp, args=(p,), daemon=True).start()
    threading.Thread(target=udp, args=(80,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
""")

PROBE = textwrap.dedent("""
    import socket, sys
    proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        if proto == "TCP":
            s = socket.create_connection((host, port), timeout=0.5); ok = s.recv(2) == b"hi"
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
            s.sendto(b"x", (host, port)); ok = s.recvfrom(16)[0] == b"x"
    except OSError:
        ok = False
    print("ok" if ok else "no")
""")

# A steady UDP exchange: N datagrams, one at a time, each waiting for its echo.
STREAM = textwrap.dedent("""
    import socket, sys, time
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
    lost = 0
    for i in range(count):
        s.sendto(i.to_bytes(4, "big"), (host, port))
        try:
            while s.recvfrom(16)[0] != i.to_bytes(4, "big"):
                pass
        except socket.timeout:
            lost += 1
        time.sleep(0.0005)
    print(lost)
""")


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


class Lab:
    def __init__(self, tag: str, pods: dict[str, str]):
        """pods: {name: address}."""
        self.node = f"tln-{tag}"
        self.pods = pods
        self.ns = {name: f"tlp-{tag}-{name}" for name in pods}
        self.host = {name: f"h-{name}"[:15] for name in pods}
        self.servers: list[subprocess.Popen] = []

    def up(self) -> None:
        sh("ip", "netns", "add", self.node)
        sh("ip", "-n", self.node, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for name, address in self.pods.items():
            self.wire(name, address)

    def wire(self, name: str, address: str) -> None:
        ns, host = self.ns[name], self.host[name]
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", self.node, "link", "add", host, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("ip", "-n", self.node, "link", "set", host, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # IPv4-only, as the CNI wires such a pod: no IPv6 chatter for the program to drop.
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{address}/32", "dev", "eth0")
        sh("ip", "-n", ns, "route", "add", GATEWAY, "dev", "eth0", "scope", "link")
        sh("ip", "-n", ns, "route", "add", "default", "via", GATEWAY, "dev", "eth0")
        sh("ip", "-n", ns, "neigh", "add", GATEWAY, "lladdr", self.link(self.node, host)["address"],
           "dev", "eth0", "nud", "permanent")
        # The node routes to the pod by itself too (as the CNI wires it), so
        # without a program the pods still reach each other.
        sh("ip", "-n", self.node, "route", "add", f"{address}/32", "dev", host, "scope", "link")
        sh("ip", "-n", self.node, "neigh", "add", address, "lladdr",
           self.link(ns, "eth0")["address"], "dev", host, "nud", "permanent")

    @staticmethod
    def link(ns: str, ifname: str) -> dict:
        return json.loads(sh("ip", "-j", "-n", ns, "link", "show", ifname))[0]

    def endpoint(self, name: str) -> base.Endpoint:
        host = self.link(self.node, self.host[name])
        pod = self.link(self.ns[name], "eth0")
        return base.Endpoint(container_id=f"c-{name}", ifname="eth0",
                             netns=f"/var/run/netns/{self.ns[name]}", host_ifname=self.host[name],
                             host_ifindex=host["ifindex"], host_mac=base.mac_bytes(host["address"]),
                             pod_mac=base.mac_bytes(pod["address"]), addresses=(self.pods[name],))

    def serve(self, name: str) -> None:
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[name], sys.executable, "-c", SERVER],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        self.servers.append(proc)

    def probe(self, src: str, dst: str, proto: str = "TCP", port: int = 80) -> bool:
        out = sh("ip", "netns", "exec", self.ns[src], sys.executable, "-c", PROBE, proto,
                 self.pods[dst], str(port))
        return out.strip() == "ok"

    def stream(self, src: str, dst: str, port: int, count: int) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns[src], sys.executable, "-c", STREAM,
                                 self.pods[dst], str(port), str(count)],
                                stdout=subprocess.PIPE, text=True)

    def unwire(self, name: str) -> None:
        sh("ip", "-n", self.node, "link", "del", self.host[name], check=False)

    def down(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for ns in (*self.ns.values(), self.node):
            sh("ip", "netns", "del", ns, check=False)


def tree(path: str) -> list[str]:
    """Every path under `path`, relative, sorted."""
    out = []
    for root, dirs, files in os.walk(path):
        rel = os.path.relpath(root, path)
        out += [os.path.normpath(os.path.join(rel, n)) for n in dirs + files]
    return sorted(out)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
