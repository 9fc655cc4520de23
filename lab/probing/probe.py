"""Which connections the lab's datapath lets through, found by trying them.

Called by lab.probe (`tailor lab probe`) and tests. Every pod's declared
containerPorts are its targets. Kernel lab: a `serve` process in each pod's
namespace listens on them; from every other pod a `dial` process tries each
(pod, port, protocol) at once (TCP connect, UDP echo) with a short timeout,
all source pods in parallel, so a probe takes about one timeout. Emulated
lab: the agents' Trace RPC answers instead (the source's agent runs the
source's programs, the destination's agent the destination's).

The result has the `tailor connectivity` JSON shape, restricted to what was
probed: `{"connections": [{"src", "dst", "protocol", "ports"}], "datapath",
"probed": [...], "notes": [...]}`, ports being the probed ports that
connected. SCTP is not probed (no SCTP sockets in this kernel, or none in
the probe); the notes say so.
"""
from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import time
from concurrent import futures

from tailor.lab import netns as netns_
from tailor.operator.cluster import manifests
from tailor.operator.cluster.ports import PROTOCOLS
from tailor.operator.policy import reachability

PROBED = ("TCP", "UDP")
TIMEOUT = 1.0
SERVE_READY_SECONDS = 10.0


class ProbeError(Exception):
    pass


def targets(lab: dict) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """({pod ref: [(protocol, port)]}, notes) from the manifests' containerPorts."""
    declared = {p.ref: p for p in manifests.load(lab["manifests"]).sorted_pods()}
    out, sctp = {}, set()
    for pod in lab["pods"]:
        ports = sorted({(cp.protocol, cp.port) for cp in declared[pod["ref"]].ports},
                       key=lambda pp: (PROTOCOLS.index(pp[0]), pp[1]))
        out[pod["ref"]] = [pp for pp in ports if pp[0] in PROBED]
        sctp.update(port for protocol, port in ports if protocol == "SCTP")
    notes = []
    if sctp:
        why = "this kernel has no SCTP sockets" if not _sctp_sockets() else "the probe speaks TCP and UDP only"
        notes.append(f"SCTP not probed ({why}): declared SCTP ports "
                     f"{reachability.format_ranges(_ranges(sctp))} are left out")
    return out, notes


def pair_address(src: dict, dst: dict) -> str | None:
    """The address `src` dials `dst` on: IPv4 if both have it, else IPv6 (as the model does)."""
    for family in (4, 6):
        a = [x for x in src["addresses"] if ipaddress.ip_address(x).version == family]
        b = [x for x in dst["addresses"] if ipaddress.ip_address(x).version == family]
        if a and b:
            return b[0]
    return None


def run(lab: dict, timeout: float = TIMEOUT) -> dict:
    ports, notes = targets(lab)
    pods = [p for p in lab["pods"] if p.get("addresses")]
    missing = [p["ref"] for p in lab["pods"] if not p.get("addresses")]
    if missing:
        notes.append(f"not wired, not probed: {', '.join(missing)}")
    started = time.monotonic()
    if lab["backend"] == "kernel":
        opened = _kernel(pods, ports, timeout)
        datapath = "kernel"
    else:
        opened = _emulated(lab, pods, ports)
        datapath = "emulated"
        notes.append("emulated lab: answered by the agents' Trace RPC (the programs in the "
                     "userspace VM), not by packets on wires")
    connections = []
    order = sorted(pods, key=lambda p: (p["namespace"], p["name"], p["kind"]))
    for src in order:
        for dst in order:
            if src is dst:
                continue
            for protocol in PROBED:
                found = sorted(port for (s, d, proto, port) in opened
                               if s == src["ref"] and d == dst["ref"] and proto == protocol)
                if found:
                    connections.append({"src": src["ref"], "dst": dst["ref"], "protocol": protocol,
                                        "ports": reachability.format_ranges(_ranges(found))})
    all_ports = sorted({pp for v in ports.values() for pp in v}, key=lambda pp: (PROTOCOLS.index(pp[0]), pp[1]))
    probed = [f"{proto} {reachability.format_ranges(_ranges([p for q, p in all_ports if q == proto]))}"
              for proto in PROBED if any(q == proto for q, _ in all_ports)]
    return {"connections": connections, "datapath": datapath, "probed": probed, "notes": notes,
            "seconds": round(time.monotonic() - started, 2)}


def restrict(connections: list[dict], probed: dict[str, list[tuple[str, int]]]) -> list[dict]:
    """A `tailor connectivity` answer cut down to what a probe tries: TCP and
    UDP, and per destination its declared ports (for comparing the two)."""
    out = []
    for c in connections:
        if c["protocol"] not in PROBED:
            continue
        ranges = reachability.parse_ranges(c["ports"])
        kept = [port for proto, port in probed.get(c["dst"], [])
                if proto == c["protocol"] and reachability.contains(ranges, port)]
        if kept:
            out.append({**c, "ports": reachability.format_ranges(_ranges(kept))})
    return out


def expected(lab: dict) -> list[dict]:
    """What the model says a probe of `lab` should find: `tailor connectivity
    --datapath model` on the lab's manifests with each pod at the addresses
    the lab gave it (ipBlocks then see the same addresses as the datapath),
    restricted to the probed protocols and ports."""
    return restrict(reachability.connectivity(model(lab)), targets(lab)[0])


def model(lab: dict):
    """The ClusterState of the lab's manifests with each wired pod at the
    addresses the lab gave it (pods not wired are left out)."""
    import dataclasses

    from tailor.operator.cluster.state import ClusterState

    declared = manifests.load(lab["manifests"])
    at = {p["ref"]: tuple(p["addresses"]) for p in lab["pods"] if p.get("addresses")}
    cluster = ClusterState()
    cluster.namespaces = dict(declared.namespaces)
    cluster.nodes = dict(declared.nodes)
    for policy in declared.network_policies.values():
        cluster.add_network_policy(policy)
    for policy in declared.cluster_wide_policies():
        cluster.add_admin_policy(policy)
    for pod in declared.sorted_pods():
        if pod.ref in at:
            cluster.add_pod(dataclasses.replace(pod, ips=at[pod.ref]))
    return cluster


def differences(got: list[dict], want: list[dict]) -> list[str]:
    """Lines naming each (src, dst, protocol) whose ports differ."""
    key = lambda c: (c["src"], c["dst"], c["protocol"])
    a, b = {key(c): c["ports"] for c in got}, {key(c): c["ports"] for c in want}
    return [f"{s} -> {d} {proto}: probe {a.get((s, d, proto)) or 'none'}, model {b.get((s, d, proto)) or 'none'}"
            for s, d, proto in sorted(set(a) | set(b)) if a.get((s, d, proto)) != b.get((s, d, proto))]


# -- kernel: real sockets ---------------------------------------------------------

def _kernel(pods: list[dict], ports: dict, timeout: float) -> set[tuple]:
    servers = []
    try:
        for pod in pods:
            tcp = ",".join(str(p) for proto, p in ports[pod["ref"]] if proto == "TCP")
            udp = ",".join(str(p) for proto, p in ports[pod["ref"]] if proto == "UDP")
            if not tcp and not udp:
                continue
            argv = netns_.exec_argv(pod["netns"], [sys.executable, "-m", "tailor.lab.probing.serve",
                                                   "--tcp", tcp, "--udp", udp])
            servers.append((pod, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                  text=True)))
        for pod, proc in servers:
            line = proc.stdout.readline().strip()
            if line != "ready":
                proc.kill()
                raise ProbeError(f"the servers in {pod['ref']} did not start: "
                                 f"{(line + proc.stderr.read()).strip()[-300:]}")
        with futures.ThreadPoolExecutor(max_workers=min(32, len(pods) or 1)) as pool:
            results = pool.map(lambda src: _dial_from(src, pods, ports, timeout), pods)
            return set().union(*results) if pods else set()
    finally:
        for _, proc in servers:
            proc.kill()
            proc.wait()


def _dial_from(src: dict, pods: list[dict], ports: dict, timeout: float) -> set[tuple]:
    targets, keys = [], {}
    for dst in pods:
        if dst is src:
            continue
        address = pair_address(src, dst)
        if address is None:
            continue
        for protocol, port in ports[dst["ref"]]:
            keys[len(targets)] = (src["ref"], dst["ref"], protocol, port)
            targets.append({"id": len(targets), "address": address, "protocol": protocol, "port": port})
    if not targets:
        return set()
    argv = netns_.exec_argv(src["netns"], [sys.executable, "-m", "tailor.lab.probing.dial",
                                           "--timeout", str(timeout)])
    proc = subprocess.run(argv, input=json.dumps(targets), capture_output=True, text=True,
                          timeout=timeout * 4 + 20)
    if proc.returncode != 0:
        raise ProbeError(f"dialing from {src['ref']} failed: {proc.stderr.strip()[-300:]}")
    answers = json.loads(proc.stdout)
    return {keys[int(i)] for i, outcome in answers.items() if outcome == "open"}


# -- emulated: the agents' Trace ------------------------------------------------------

def _emulated(lab: dict, pods: list[dict], ports: dict) -> set[tuple]:
    import grpc

    from tailor.datapath.agent.api import agent_pb2 as pb
    from tailor.datapath.agent.api import agent_pb2_grpc as pb_grpc

    sockets = {n["name"]: n["agent_socket"] for n in lab["nodes"]}
    channels = {n: grpc.insecure_channel(f"unix:{s}") for n, s in sockets.items()}
    stubs = {n: pb_grpc.AgentStub(c) for n, c in channels.items()}
    opened = set()
    try:
        for src in pods:
            for dst in pods:
                if dst is src or pair_address(src, dst) is None:
                    continue
                src_addr = pair_address(dst, src)
                for protocol, port in ports[dst["ref"]]:
                    key = f"{src['namespace']}/{src['name']}"
                    dkey = f"{dst['namespace']}/{dst['name']}"
                    first = stubs[src["node"]].Trace(pb.TraceRequest(
                        src=key, dst=pair_address(src, dst), protocol=protocol, dst_port=port), timeout=10)
                    allowed = first.allowed
                    if allowed and dst["node"] != src["node"]:
                        allowed = stubs[dst["node"]].Trace(pb.TraceRequest(
                            src=src_addr, dst=dkey, protocol=protocol, dst_port=port), timeout=10).allowed
                    if allowed:
                        opened.add((src["ref"], dst["ref"], protocol, port))
    finally:
        for c in channels.values():
            c.close()
    return opened


def _ranges(ports) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for p in sorted(set(ports)):
        if out and out[-1][1] == p - 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return [(a, b) for a, b in out]


def _sctp_sockets() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        return True
    except OSError:
        return False
