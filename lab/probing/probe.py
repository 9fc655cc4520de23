"""Which connections the lab's datapath lets through, found by trying them.

Called by lab.probe (`tailor lab probe`) and tests. Every pod's declared
containerPorts are its targets. Kernel lab: a `serve` process in each pod's
namespace listens on them; from every other pod a `dial` process tries each
(pod, port, protocol) at once (TCP connect, UDP echo) with a short timeout,
all source pods in parallel, so a probe takes about one timeout. Emulated
lab: the agents' Trace RPC answers instead (the source's agent runs the
source's programs, the destination's agent the destination's).

Besides pod to pod it probes what a real node has: every node to every pod
on its declared ports (a kubelet probing its own pods; other nodes), and
every pod to a host outside the cluster (`OUTSIDE_PORT`, TCP and UDP), whose
server records the source address each connection arrived from — with the
node's masquerade it is the pod's node's address, never the pod's.

Every pod also dials every Service port it is no backend of (the pods'
own programs translate them; with `--kube-proxy` the nodes carry kube-proxy's
rules too), judged on the backends; with `--kube-proxy` the outside host
dials every node port on every node.

The result has the `tailor connectivity` JSON shape, restricted to what was
probed: `{"connections": [{"src", "dst", "protocol", "ports"}], "nodes":
[... src "<node>[Node]"], "outside": [... dst "<address>[Outside]"],
"services": [... dst "<ns>/<name>[Service]"], "node_ports": [... src
"<address>[Outside]", dst "<ns>/<name>[Service]@<node>"],
"outside_seen": [the source addresses the outside host saw] (kernel),
"datapath", "probed": [...], "notes": [...]}`, ports being the probed ports
that connected. SCTP is not probed (no SCTP sockets in this kernel, or none in
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
from tailor.operator.policy import evaluate, reachability

PROBED = ("TCP", "UDP")
OUTSIDE_PORT = 8080
TIMEOUT = 1.0
SERVE_READY_SECONDS = 10.0


_ranges = reachability.ranges_of


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
    seen = None
    if lab["backend"] == "kernel":
        opened, seen = _kernel(lab, pods, ports, timeout)
        datapath = "kernel"
    else:
        opened = _emulated(lab, pods, ports)
        datapath = "emulated"
        notes.append("emulated lab: answered by the agents' Trace RPC (the programs in the "
                     "userspace VM), not by packets on wires")
    order = sorted(pods, key=lambda p: (p["namespace"], p["name"], p["kind"]))
    sources = [node_ref(n["name"]) for n in lab["nodes"]] + [p["ref"] for p in order]
    destinations = [p["ref"] for p in order] + [outside_ref(a) for a in outside_addresses(lab)] \
        + sorted({t["ref"] for t in service_targets(lab)}) + sorted({t["ref"] for t in node_port_targets(lab)})
    sources += [outside_ref(a) for a in outside_addresses(lab)]
    found: dict[tuple[str, str, str], list[int]] = {}
    for s_, d, proto, port in opened:
        found.setdefault((s_, d, proto), []).append(port)
    groups = {"connections": [], "nodes": [], "outside": [], "services": [], "node_ports": []}
    for src in sources:
        for dst in destinations:
            for protocol in PROBED:
                got = found.get((src, dst, protocol))
                if src == dst or not got:
                    continue
                kind = "nodes" if src.endswith("[Node]") else "node_ports" if src.endswith("[Outside]") \
                    else "outside" if dst.endswith("[Outside]") \
                    else "services" if dst.endswith("[Service]") else "connections"
                groups[kind].append({"src": src, "dst": dst, "protocol": protocol,
                                     "ports": reachability.format_ranges(_ranges(got))})
    if not lab.get("kube_proxy") and any(s.get("node_ports") and any(s["node_ports"]) for s in lab.get("services", [])):
        notes.append("node ports not probed: kube-proxy serves NodePort and LoadBalancer traffic, tailor "
                     "translates only what pods send (`tailor lab up --kube-proxy` gives the nodes its rules)")
    all_ports = sorted({pp for v in ports.values() for pp in v}, key=lambda pp: (PROTOCOLS.index(pp[0]), pp[1]))
    probed = [f"{proto} {reachability.format_ranges(_ranges([p for q, p in all_ports if q == proto]))}"
              for proto in PROBED if any(q == proto for q, _ in all_ports)]
    probed.append(f"outside TCP/UDP {OUTSIDE_PORT}")
    out = {**groups, "datapath": datapath, "probed": probed, "notes": notes,
           "seconds": round(time.monotonic() - started, 2)}
    if seen is not None:
        out["outside_seen"] = seen
    return out


def service_targets(lab: dict) -> list[dict]:
    """Each Service port the probe tries (tailor's programs translate them,
    and kube-proxy's rules too with --kube-proxy): {"ref", "service", "port"
    (ServicePort), "address", "family", "backends": pod refs}. Only ports
    every endpoint of which serves a probed declared port (else nothing
    would answer there, whatever the policies)."""
    from tailor.operator.cluster import services as services_

    state = model(lab)
    ports = targets(lab)[0]
    out = []
    for svc in state.sorted_services():
        for port in svc.ports:
            if port.protocol not in PROBED:
                continue
            ends = services_.endpoints(svc, port, state.pods.values())
            if any((port.protocol, t) not in ports.get(p.ref, []) for p, t in ends):
                continue
            for family in (4, 6):
                address = svc.cluster_ip(family)
                if address is not None:
                    out.append({"ref": svc.ref, "service": svc, "port": port, "address": address,
                                "family": family, "backends": {p.ref for p, _ in ends}})
                    break
    return out


def node_port_targets(lab: dict) -> list[dict]:
    """Each node port the probe tries from the outside host (kernel lab with
    --kube-proxy: kube-proxy serves node ports, tailor does not): {"ref"
    ("<Service ref>@<node>"), "service", "port", "node", "address" (the
    node's), "family", "backends": [(pod, target port)] a connection may
    reach, "source": the address those backends see it from}."""
    if lab.get("backend") != "kernel" or not lab.get("kube_proxy") or not outside_addresses(lab):
        return []
    from tailor.operator.cluster import services as services_

    state = model(lab)
    ports = targets(lab)[0]
    outside = outside_addresses(lab)
    out = []
    for svc in state.sorted_services():
        if not svc.node_ports:
            continue
        for port in svc.ports:
            ends = services_.endpoints(svc, port, state.pods.values())
            if port.protocol not in PROBED or any((port.protocol, t) not in ports.get(p.ref, []) for p, t in ends):
                continue
            for node in lab["nodes"]:
                pair = _family_pick(outside, node_addresses(node))
                if pair is None or svc.cluster_ip(ipaddress.ip_address(pair[1]).version) is None:
                    continue
                family = ipaddress.ip_address(pair[1]).version
                local = svc.external_traffic_policy == "Local"
                # Cluster: masqueraded to the node the connection arrived at; Local: as sent.
                out.append({"ref": f"{svc.ref}@{node['name']}", "service": svc, "port": port,
                            "node": node["name"], "address": pair[1], "family": family,
                            "backends": [(p, t) for p, t in ends if p.ip(family)
                                         and (not local or p.node == node["name"])],
                            "source": pair[0] if local else pair[1], "client": pair[0]})
    return out


def node_ref(name: str) -> str:
    return f"{name}[Node]"


def outside_ref(address: str) -> str:
    return f"{address}[Outside]"


def outside_addresses(lab: dict) -> list[str]:
    return [a.split("/")[0] for a in (lab.get("outside") or {}).get("addresses", [])]


def _family_pick(candidates: list[str], dst: list[str]) -> tuple[str, str] | None:
    """(source address, destination address) of the first family both have, IPv4 first."""
    for family in (4, 6):
        a = [x for x in candidates if ipaddress.ip_address(x).version == family]
        b = [x for x in dst if ipaddress.ip_address(x).version == family]
        if a and b:
            return a[0], b[0]
    return None


def node_addresses(node: dict) -> list[str]:
    return [a.split("/")[0] for a in node["underlay"]]


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


def expected_nodes(lab: dict) -> list[dict]:
    """What the model says of every node to every pod on its probed ports."""
    state, ports = model(lab), targets(lab)[0]
    out = []
    for node in lab["nodes"]:
        for pod in sorted(_wired(lab), key=lambda p: p["ref"]):
            pair = _family_pick(node_addresses(node), pod["addresses"])
            if pair is None:
                continue
            target = state.find_pod(pod["ref"])
            for protocol in PROBED:
                allowed = [port for proto, port in ports[pod["ref"]] if proto == protocol
                           and evaluate.connection_allowed(state, pair[0], target, protocol, port)]
                if allowed:
                    out.append({"src": node_ref(node["name"]), "dst": pod["ref"], "protocol": protocol,
                                "ports": reachability.format_ranges(_ranges(allowed))})
    return out


def expected_outside(lab: dict) -> list[dict]:
    """What the model says of every pod to the outside host."""
    state = model(lab)
    out = []
    for pod in sorted(_wired(lab), key=lambda p: p["ref"]):
        pair = _family_pick(pod["addresses"], outside_addresses(lab))
        if pair is None:
            continue
        for protocol in PROBED:
            if evaluate.connection_allowed(state, state.find_pod(pod["ref"]), pair[1], protocol,
                                           OUTSIDE_PORT):
                out.append({"src": pod["ref"], "dst": outside_ref(pair[1]), "protocol": protocol,
                            "ports": str(OUTSIDE_PORT)})
    return out


def expected_services(lab: dict) -> tuple[list[dict], set[tuple[str, str, str]]]:
    """(what the model says of every pod to every probed Service port, the
    (src, service, protocol) whose backends disagree: a connection reaches
    one at random, so those are not compared)."""
    from tailor.operator.policy import services as model_services

    state = model(lab)
    out, mixed = [], set()
    for t in service_targets(lab):
        for pod in sorted(_wired(lab), key=lambda p: p["ref"]):
            src = state.find_pod(pod["ref"])
            if pod["ref"] in t["backends"] or src.ip(t["family"]) is None:
                continue
            v = model_services.verdict(state, src, t["service"], t["port"], t["family"])
            key = (pod["ref"], t["ref"], t["port"].protocol)
            if v == model_services.SOME:
                mixed.add(key)
            elif v == model_services.ALL:
                out.append({"src": pod["ref"], "dst": t["ref"], "protocol": t["port"].protocol,
                            "ports": str(t["port"].port)})
    return _merge(out), mixed


def expected_node_ports(lab: dict) -> tuple[list[dict], set[tuple[str, str, str]]]:
    """(what the model says of the outside host to every probed node port,
    the ones whose backends disagree). A backend judges the connection from
    the address kube-proxy leaves it: its own node's (always let in), another
    node's (judged like any address), or, with externalTrafficPolicy Local,
    the client's."""
    state = model(lab)
    out, mixed = [], set()
    for t in node_port_targets(lab):
        verdicts = {evaluate.connection_allowed(state, t["source"], pod, t["port"].protocol, target, t["family"])
                    for pod, target in t["backends"]}
        key = (outside_ref(t["client"]), t["ref"], t["port"].protocol)
        if verdicts == {True}:
            out.append({"src": key[0], "dst": key[1], "protocol": key[2], "ports": str(t["port"].node_port)})
        elif len(verdicts) > 1:
            mixed.add(key)
    return _merge(out), mixed


def _merge(entries: list[dict]) -> list[dict]:
    """One entry per (src, dst, protocol), its ports merged, as the probe reports them."""
    by: dict[tuple, list[int]] = {}
    for e in entries:
        by.setdefault((e["src"], e["dst"], e["protocol"]), []).append(int(e["ports"]))
    return [{"src": s_, "dst": d, "protocol": p, "ports": reachability.format_ranges(_ranges(v))}
            for (s_, d, p), v in by.items()]


def check(lab: dict, result: dict) -> list[str]:
    """Every difference between a probe's result and the model, and every
    connection the outside saw from an address other than its pod's node's."""
    out = differences(result["connections"], expected(lab))
    want, mixed = expected_services(lab)
    got = [c for c in result.get("services", []) if (c["src"], c["dst"], c["protocol"]) not in mixed]
    out += differences(got, want)
    want, mixed = expected_node_ports(lab)
    got = [c for c in result.get("node_ports", []) if (c["src"], c["dst"], c["protocol"]) not in mixed]
    out += differences(got, want)
    out += differences(result.get("nodes", []), expected_nodes(lab))
    out += differences(result.get("outside", []), expected_outside(lab))
    seen = result.get("outside_seen")
    if seen is None:
        return out
    where = {p["ref"]: p["node"] for p in lab["pods"]}
    reaching = {where[c["src"]] for c in result.get("outside", [])}
    nodes = {n["name"]: set(node_addresses(n)) for n in lab["nodes"]}
    pods = {a: p["ref"] for p in lab["pods"] for a in p.get("addresses", [])}
    for address in seen:
        if address in pods:
            out.append(f"outside saw {pods[address]}'s own address {address}: not masqueraded")
        elif not any(address in nodes[n] for n in reaching):
            out.append(f"outside saw {address}, the address of no node whose pods reached it")
    for n in sorted(reaching):
        if not nodes[n] & set(seen):
            out.append(f"outside saw no connection from node {n}'s address, though its pods reached it")
    return out


def _wired(lab: dict) -> list[dict]:
    return [p for p in lab["pods"] if p.get("addresses")]


def model(lab: dict):
    """The ClusterState of the lab's manifests with each wired pod at the
    addresses the lab gave it, on the node the lab put it (pods not wired are
    left out), and the lab's nodes at their underlay addresses."""
    import dataclasses

    from tailor.operator.cluster.objects import Node
    from tailor.operator.cluster.state import ClusterState

    declared = manifests.load(lab["manifests"])
    at = {p["ref"]: (tuple(p["addresses"]), p["node"]) for p in lab["pods"] if p.get("addresses")}
    cluster = ClusterState()
    cluster.namespaces = dict(declared.namespaces)
    cluster.nodes = dict(declared.nodes)
    for n in lab["nodes"]:
        labels = declared.nodes[n["name"]].labels if n["name"] in declared.nodes \
            else {"kubernetes.io/hostname": n["name"]}
        cluster.add_node(Node(n["name"], labels, tuple(node_addresses(n)), tuple(n["pod_cidrs"])))
    for policy in declared.network_policies.values():
        cluster.add_network_policy(policy)
    for policy in declared.cluster_wide_policies():
        cluster.add_admin_policy(policy)
    for pod in declared.sorted_pods():
        if pod.ref in at:
            cluster.add_pod(dataclasses.replace(pod, ips=at[pod.ref][0], node=at[pod.ref][1]))
    given = {s["ref"]: s for s in lab.get("services", [])}
    for svc in declared.sorted_services():
        entry = given.get(svc.ref, {})
        ports = tuple(dataclasses.replace(p, node_port=n) if n else p
                      for p, n in zip(svc.ports, entry.get("node_ports") or [None] * len(svc.ports)))
        cluster.add_service(dataclasses.replace(svc, cluster_ips=tuple(entry.get("cluster_ips", svc.cluster_ips)),
                                                ports=ports))
    return cluster


def differences(got: list[dict], want: list[dict]) -> list[str]:
    """Lines naming each (src, dst, protocol) whose ports differ."""
    key = lambda c: (c["src"], c["dst"], c["protocol"])
    a, b = {key(c): c["ports"] for c in got}, {key(c): c["ports"] for c in want}
    return [f"{s} -> {d} {proto}: probe {a.get((s, d, proto)) or 'none'}, model {b.get((s, d, proto)) or 'none'}"
            for s, d, proto in sorted(set(a) | set(b)) if a.get((s, d, proto)) != b.get((s, d, proto))]


# -- kernel: real sockets ---------------------------------------------------------

def _kernel(lab: dict, pods: list[dict], ports: dict, timeout: float):
    """(opened (src, dst, protocol, port) set, the source addresses the outside saw)."""
    servers = []
    try:
        for pod in pods:
            tcp = ",".join(str(p) for proto, p in ports[pod["ref"]] if proto == "TCP")
            udp = ",".join(str(p) for proto, p in ports[pod["ref"]] if proto == "UDP")
            if tcp or udp:
                servers.append((pod["ref"], _serve(pod["netns"], ["--tcp", tcp, "--udp", udp])))
        outside = lab.get("outside") or {}
        if outside.get("netns"):
            servers.append(("outside", _serve(outside["netns"], [
                "--tcp", str(OUTSIDE_PORT), "--udp", str(OUTSIDE_PORT), "--peers"])))
        for ref, proc in servers:
            line = proc.stdout.readline().strip()
            if line != "ready":
                proc.kill()
                raise ProbeError(f"the servers in {ref} did not start: "
                                 f"{(line + proc.stderr.read()).strip()[-300:]}")
        services = service_targets(lab)
        jobs = [(p["netns"], p["ref"], _pod_targets(p, pods, ports, lab, services)) for p in pods]
        jobs += [(n["netns"], node_ref(n["name"]), _node_targets(n, pods, ports)) for n in lab["nodes"]]
        by_client: dict[str, list[tuple]] = {}
        for t in node_port_targets(lab):
            by_client.setdefault(t["client"], []).append((t["ref"], t["address"], t["port"].protocol,
                                                          t["port"].node_port))
        jobs += [(outside["netns"], outside_ref(client), found) for client, found in by_client.items()]
        with futures.ThreadPoolExecutor(max_workers=min(32, len(jobs) or 1)) as pool:
            results = list(pool.map(lambda job: _dial(job[0], job[1], job[2], timeout), jobs))
        opened = set().union(*results) if results else set()
        seen: list[str] = []
        if outside.get("netns"):
            _, proc = servers.pop()
            proc.kill()
            out, _ = proc.communicate()
            seen = sorted({line.split()[1] for line in out.splitlines() if line.startswith("peer ")})
        return opened, seen
    finally:
        for _, proc in servers:
            proc.kill()
            proc.wait()


def _serve(netns: str, args: list[str]) -> subprocess.Popen:
    argv = netns_.exec_argv(netns, [sys.executable, "-m", "tailor.lab.probing.serve", *args])
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pod_targets(src: dict, pods: list[dict], ports: dict, lab: dict, services=()) -> list[tuple]:
    """(dst ref, address, protocol, port) from `src`: every other pod, the
    outside, and the Service ports it is no backend of."""
    out = []
    for dst in pods:
        address = pair_address(src, dst) if dst is not src else None
        if address is not None:
            out += [(dst["ref"], address, protocol, port) for protocol, port in ports[dst["ref"]]]
    pair = _family_pick(src["addresses"], outside_addresses(lab))
    if pair is not None:
        out += [(outside_ref(pair[1]), pair[1], protocol, OUTSIDE_PORT) for protocol in PROBED]
    for t in services:
        mine = [a for a in src["addresses"] if ipaddress.ip_address(a).version == t["family"]]
        if mine and src["ref"] not in t["backends"]:
            out.append((t["ref"], t["address"], t["port"].protocol, t["port"].port))
    return out


def _node_targets(node: dict, pods: list[dict], ports: dict) -> list[tuple]:
    out = []
    for dst in pods:
        pair = _family_pick(node_addresses(node), dst["addresses"])
        if pair is not None:
            out += [(dst["ref"], pair[1], protocol, port) for protocol, port in ports[dst["ref"]]]
    return out


def _dial(netns: str, src: str, targets: list[tuple], timeout: float) -> set[tuple]:
    if not targets:
        return set()
    request = [{"id": i, "address": address, "protocol": protocol, "port": port}
               for i, (_, address, protocol, port) in enumerate(targets)]
    argv = netns_.exec_argv(netns, [sys.executable, "-m", "tailor.lab.probing.dial",
                                    "--timeout", str(timeout)])
    proc = subprocess.run(argv, input=json.dumps(request), capture_output=True, text=True,
                          timeout=timeout * 4 + 20)
    if proc.returncode != 0:
        raise ProbeError(f"dialing from {src} failed: {proc.stderr.strip()[-300:]}")
    answers = json.loads(proc.stdout)
    return {(src, targets[int(i)][0], targets[int(i)][2], targets[int(i)][3])
            for i, outcome in answers.items() if outcome == "open"}


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
        for node in lab["nodes"]:
            for dst in pods:
                pair = _family_pick(node_addresses(node), dst["addresses"])
                if pair is None:
                    continue
                for protocol, port in ports[dst["ref"]]:
                    if stubs[dst["node"]].Trace(pb.TraceRequest(
                            src=pair[0], dst=f"{dst['namespace']}/{dst['name']}", protocol=protocol,
                            dst_port=port), timeout=10).allowed:
                        opened.add((node_ref(node["name"]), dst["ref"], protocol, port))
        by_address = {a: p for p in pods for a in p["addresses"]}
        for src in pods:
            key = f"{src['namespace']}/{src['name']}"
            for ref, address, protocol, port in _pod_targets(src, [], ports, lab, service_targets(lab)):
                if not ref.endswith("[Service]"):
                    continue
                # The source's agent runs its programs (and a backend's of its
                # node); a backend elsewhere is judged by its own agent.
                first = stubs[src["node"]].Trace(pb.TraceRequest(src=key, dst=address, protocol=protocol,
                                                                 dst_port=port), timeout=10)
                backend = by_address.get(first.translated_dst)
                allowed = first.allowed and backend is not None
                if allowed and backend["node"] != src["node"]:
                    allowed = stubs[backend["node"]].Trace(pb.TraceRequest(
                        src=pair_address(backend, src), dst=f"{backend['namespace']}/{backend['name']}",
                        protocol=protocol, dst_port=first.translated_port), timeout=10).allowed
                if allowed:
                    opened.add((src["ref"], ref, protocol, port))
        for src in pods:
            pair = _family_pick(src["addresses"], outside_addresses(lab))
            if pair is None:
                continue
            for protocol in PROBED:
                if stubs[src["node"]].Trace(pb.TraceRequest(
                        src=f"{src['namespace']}/{src['name']}", dst=pair[1], protocol=protocol,
                        dst_port=OUTSIDE_PORT), timeout=10).allowed:
                    opened.add((src["ref"], outside_ref(pair[1]), protocol, OUTSIDE_PORT))
    finally:
        for c in channels.values():
            c.close()
    return opened


def _sctp_sockets() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        return True
    except OSError:
        return False
