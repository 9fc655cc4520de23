"""data_plane: pod-to-pod TCP throughput and request/response rate through
real network namespaces, tailor against a plain Linux bridge and against
nftables enforcing the same policy, measured side by side in one run.

Three set-ups, each two nodes on an underlay bridge with a server pod and
a client on the server's node (same-node path) and one on the other node
(cross-node path, routed between the nodes as the lab routes):
  - tailor: `tailor lab up` (kernel backend: the real CNI plugin, the
    agents, the pods' programs attached), the server isolated by one
    NetworkPolicy of 100 ingress rules — 99 ipBlock + port rules no client
    matches, then the one admitting the clients (clusters.data_plane_lab);
  - bridge: each node a Linux bridge with the pods' veths on it, no policy
    and no netfilter (bridge-nf-call-iptables off);
  - nftables: the same bridges, the same 100 rules as nft rules in the
    server's node — kube-network-policies' approach: a chain per pod, an
    established connection accepted by conntrack before the rules,
    bridged packets through the inet forward hook (br_netfilter).
Rounds take turns between the set-ups, so a slow moment of the machine hits
all three. Each set-up's enforcement is checked too: from a client, a port
outside the policy must time out (dropped), where the bridge refuses it.
Everything made here is removed in finally blocks, namespaces by name.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

from benchmarks import adapters, clusters, traffic
from benchmarks.common import Skip, median, need_root, need_tool, pick, ratio

# Many short rounds rather than a few long ones: request/response is
# latency-bound, so a moment of other work on the machine ruins the sample
# it falls in; the median of many shrugs it off (the best is kept too).
ROUNDS = {"full": 8, "quick": 5, "smoke": 1}
SECONDS = {"full": 2, "quick": 1, "smoke": 1}
IPERF, RR = clusters.SERVER_PORTS
CLOSED = 5202                     # a port the policy does not admit, where nothing listens
LAB = "tb-dataplane"
NETNS_DIR = "/var/run/netns"
PATHS = (("same-node", "local"), ("cross-node", "remote"))


def run(mode: str, say) -> dict:
    need_root("the data plane")
    for tool, package in (("iperf3", "iperf3"), ("nft", "nftables"), ("clang", "clang")):
        need_tool(tool, package)
    reason = adapters.kernel_unavailable()
    if reason:
        raise Skip(f"the kernel lab {reason}")
    rounds, seconds = pick(mode, ROUNDS), pick(mode, SECONDS)
    setups, servers = [], []
    with tempfile.TemporaryDirectory(prefix="tailor-bench-dp-") as tmp:
        try:
            rr = traffic.build_rr(tmp)
            say("tailor: lab up (2 nodes, a 100-rule policy on the server)")
            setups.append(_tailor(tmp))
            say("bridge: veths on Linux bridges, no policy")
            setups.append(Bridged("tbb", nft=False).make())
            say("nftables: the same bridges, the 100 rules in nft")
            setups.append(Bridged("tbn", nft=True).make())
            for s in setups:
                servers += traffic.start_servers(s["pods"]["server"][0], rr, IPERF, RR)
            for s in setups:
                server_ip = s["pods"]["server"][1]
                for _, client in PATHS:
                    traffic.wait_listening(s["pods"][client][0], server_ip, (IPERF, RR))
                s["enforced"] = _dropped(s["pods"]["local"][0], server_ip)
            samples = _measure(setups, rr, rounds, seconds, say)
        finally:
            for server in servers:
                server.stop()
            # Every set-up comes down even when one of them cannot.
            problems = []
            for s in reversed(setups):
                try:
                    s["down"]()
                except Exception as e:   # noqa: BLE001 - reported below, after the others
                    problems.append(f"{s['name']}: {e}")
            if problems:
                raise RuntimeError("clean-up failed: " + "; ".join(problems))
    return _summary(setups, samples, rounds, seconds)


def _measure(setups, rr, rounds, seconds, say) -> dict:
    samples: dict = {}
    steps, n = rounds * len(setups) * len(PATHS), 0
    for _ in range(rounds):
        for s in setups:
            for path, client in PATHS:
                n += 1
                say(f"{s['name']} {path}: iperf3 + request/response, {seconds}s each", n, steps)
                netns, address = s["pods"][client][0], s["pods"]["server"][1]
                got = samples.setdefault((s["name"], path), {"throughput_gbps": [], "rr_per_s": []})
                got["throughput_gbps"].append(traffic.throughput_gbps(netns, address, IPERF, seconds))
                got["rr_per_s"].append(traffic.rr_per_second(rr, netns, address, RR, seconds))
    return samples


def _summary(setups, samples, rounds, seconds) -> dict:
    rows, ratios = [], []
    for (name, path), got in samples.items():
        rows.append({"setup": name, "path": path, "throughput_gbps": median(got["throughput_gbps"]),
                     "rr_per_s": median(got["rr_per_s"]), "best_throughput_gbps": max(got["throughput_gbps"]),
                     "best_rr_per_s": max(got["rr_per_s"]), "samples": got})
    value = {(r["setup"], r["path"], m): r[m] for r in rows for m in ("throughput_gbps", "rr_per_s")}
    for path, _ in PATHS:
        for metric in ("throughput_gbps", "rr_per_s"):
            t = value.get(("tailor", path, metric))
            ratios.append({"path": path, "metric": metric,
                           "tailor/bridge": ratio(t, value.get(("bridge", path, metric))),
                           "tailor/nftables": ratio(t, value.get(("nftables", path, metric)))})
    return {"rounds": rounds, "seconds": seconds, "policy_rules": 100, "rows": rows, "ratios": ratios,
            "enforced": {s["name"]: s["enforced"] for s in setups},
            "statistic": "median of rounds; one TCP stream (iperf3 -J); request/response: 1 byte each "
                         "way over one TCP connection, client and server on one CPU (traffic.RR_C)"}


def _dropped(client_netns: str, address: str) -> bool:
    """A port the policy does not admit: dropped (a timeout), not refused."""
    code = ("import socket,sys\ntry: socket.create_connection((sys.argv[1], int(sys.argv[2])), 1.0)\n"
            "except socket.timeout: sys.exit(3)\nexcept OSError: sys.exit(4)\n")
    done = subprocess.run(traffic.in_netns(client_netns, ["python3", "-c", code, address, str(CLOSED)]))
    return done.returncode == 3


def _tailor(tmp: str) -> dict:
    path = os.path.join(tmp, "lab.json")
    with open(path, "w") as f:
        json.dump(clusters.as_list(clusters.data_plane_lab()), f)
    data = adapters.lab_up(path, nodes=2, name=LAB, control="lab")
    pods = {p["name"]: (p["netns"], p["addresses"][0]) for p in data["pods"]}
    return {"name": "tailor", "pods": pods, "down": lambda: adapters.lab_down(LAB)}


class Bridged:
    """Two nodes on an underlay bridge; each node a bridge (cbr0) for its pods,
    routing the other node's pod subnet via the underlay."""

    PODS = (("server", 1, 10), ("local", 1, 11), ("remote", 2, 10))

    def __init__(self, prefix: str, nft: bool):
        self.prefix, self.nft = prefix, nft

    def ns(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def make(self) -> dict:
        self.down()                                  # what an interrupted run left
        try:
            self._make()
        except BaseException:
            self.down()
            raise
        pods = {name: (self.ns(name), f"10.245.{node}.{host}") for name, node, host in self.PODS}
        return {"name": "nftables" if self.nft else "bridge", "pods": pods, "down": self.down}

    def _make(self) -> None:
        sw = self.ns("sw")
        _ip("netns", "add", sw)
        _batch(sw, ["link set lo up", "link add br0 type bridge", "link set br0 up"])
        for i in (1, 2):
            node = self.ns(f"n{i}")
            _ip("netns", "add", node)
            _batch(sw, [f"link add n{i} type veth peer name eth0 netns {node}",
                        f"link set n{i} master br0", f"link set n{i} up"])
            _sysctl(node, ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                           f"net.bridge.bridge-nf-call-iptables={int(self.nft)}"])
            other = 3 - i
            _batch(node, ["link set lo up", f"addr add 192.168.78.{i}/24 dev eth0", "link set eth0 up",
                          "link add cbr0 type bridge", f"addr add 10.245.{i}.1/24 dev cbr0", "link set cbr0 up",
                          f"route add 10.245.{other}.0/24 via 192.168.78.{other}"])
        for name, i, host in self.PODS:
            pod, node = self.ns(name), self.ns(f"n{i}")
            _ip("netns", "add", pod)
            _batch(node, [f"link add v{name} type veth peer name eth0 netns {pod}",
                          f"link set v{name} master cbr0", f"link set v{name} up"])
            _batch(pod, ["link set lo up", f"addr add 10.245.{i}.{host}/24 dev eth0", "link set eth0 up",
                         f"route add default via 10.245.{i}.1"])
        if self.nft:
            done = subprocess.run(traffic.in_netns(self.ns("n1"), ["nft", "-f", "-"]), input=self.ruleset(),
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"nft refused the ruleset: {done.stderr.strip()[-500:]}")

    def ruleset(self) -> str:
        """The server's 100 rules, as kube-network-policies writes a pod's: its
        own chain, reached by its address; replies by conntrack first."""
        server = "10.245.1.10"
        clients = ", ".join(f"10.245.{i}.{h}" for name, i, h in self.PODS if name != "server")
        rules = [f"    ip saddr {cidr} tcp dport {port} accept" for cidr, port in clusters.unrelated_rules()]
        return "\n".join([
            "table inet tailorbench {",
            f"  set clients {{ type ipv4_addr; elements = {{ {clients} }} }}",
            "  chain forward {",
            "    type filter hook forward priority 0; policy accept;",
            f"    ip daddr {server} jump pod_server",
            "  }",
            "  chain pod_server {",
            "    ct state established,related accept",
            *rules,
            f"    ip saddr @clients tcp dport {{ {IPERF}, {RR} }} accept",
            "    drop",
            "  }",
            "}", ""])

    def names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(self.prefix + "."))
        except FileNotFoundError:
            return []

    def down(self) -> None:
        """Delete this set-up's namespaces (their veths and bridges go with them)."""
        for name in self.names():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        if self.names():
            raise RuntimeError(f"namespaces left behind: {self.names()}")


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _batch(netns: str, commands: list[str]) -> None:
    done = subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(commands) + "\n",
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip -n {netns} -batch: {done.stderr.strip()}\n  " + "\n  ".join(commands))


def _sysctl(netns: str, settings: list[str]) -> None:
    done = subprocess.run(traffic.in_netns(netns, ["sysctl", "-q", "-w", *settings]), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sysctl in {netns}: {done.stderr.strip()}")

