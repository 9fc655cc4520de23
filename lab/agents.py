"""What the lab's agents hold, asked over their unix sockets (List).

Called by lab.status (each pod's program state) and by the operator lab's
sync and its tests (`held`: the hash each agent has in force; `wanted` and
`unsettled`: what the agents should hold for the lab as it stands, computed
from the lab's own model, so a sync does not rest on the operator's word
that it has seen every change).
"""
from __future__ import annotations

import grpc

from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.api import agent_pb2_grpc as pb_grpc

TIMEOUT = 5.0


def listed(node: dict) -> list[dict]:
    """The pods node's agent holds: {"key" ("ns/name"), "uid", "state"
    (PENDING/LOADED/FAILED), "hash", "features", "message", "interface"}.
    Raises grpc.RpcError when the agent does not answer."""
    with grpc.insecure_channel(f"unix:{node['agent_socket']}") as channel:
        reply = pb_grpc.AgentStub(channel).List(pb.ListRequest(), timeout=TIMEOUT)
    return [{"key": f"{s.pod.namespace}/{s.pod.name}", "uid": s.pod.uid, "state": pb.State.Name(s.state),
             "hash": s.hash, "features": list(s.features), "message": s.message,
             "interface": s.interface} for s in reply.pods]


def held(data: dict) -> dict[str, str]:
    """{"ns/name": hash} of every program the lab's agents hold Loaded."""
    return {s["key"]: s["hash"] for node in data["nodes"] for s in listed(node)
            if s["state"] == "LOADED"}


def tables_unsettled(data: dict) -> list[str]:
    """The nodes whose agent does not hold the lab's node table yet (the
    routes to other nodes' pods follow it). Empty when every agent does."""
    from tailor.datapath.agent.node import routes

    table = [routes.ClusterNode(n["name"], tuple(a.split("/")[0] for a in n["underlay"]),
                                tuple(n["pod_cidrs"])) for n in data["nodes"]]
    want = routes.digest(table, data.get("cluster_cidrs", []))
    why = []
    for node in data["nodes"]:
        with grpc.insecure_channel(f"unix:{node['agent_socket']}") as channel:
            got = pb_grpc.AgentStub(channel).List(pb.ListRequest(), timeout=TIMEOUT).nodes_digest
        if got != want:
            why.append(f"node {node['name']}: its agent does not hold the node table yet")
    return why


def wanted(data: dict) -> tuple[dict[str, str], dict[str, str]]:
    """What the agents hold once the control plane has caught up with the
    lab: {"ns/name": program hash} and {node: group members digest}, planned
    from the lab's model (its manifests, the wired pods at their addresses)
    by the compiler the control planes use."""
    from tailor.lab.probing import probe
    from tailor.operator import desired as desired_

    plan = desired_.Desired()
    hashes = {}
    for push in plan.plan(probe.model(data)):
        if push.programs is not None:
            hashes[push.pod.removesuffix("[Pod]")] = push.programs.hash
    return hashes, {n["name"]: plan.groups_digest(n["name"]) for n in data["nodes"]}


def unsettled(data: dict, want: tuple[dict[str, str], dict[str, str]]) -> list[str]:
    """How the agents differ from `want` (`wanted(data)`): pods not Loaded
    at the wanted hash, nodes whose group members differ. Empty when none."""
    hashes, digests = want
    why = []
    for node in data["nodes"]:
        with grpc.insecure_channel(f"unix:{node['agent_socket']}") as channel:
            reply = pb_grpc.AgentStub(channel).List(pb.ListRequest(), timeout=TIMEOUT)
        held_ = {f"{s.pod.namespace}/{s.pod.name}": s.hash for s in reply.pods if s.state == pb.LOADED}
        for pod in data["pods"]:
            key = f"{pod['namespace']}/{pod['name']}"
            if pod["node"] == node["name"] and key in hashes and held_.get(key) != hashes[key]:
                why.append(f"{key}: its agent holds {held_.get(key) or 'nothing'}, the lab's model "
                           f"compiles to {hashes[key]}")
        if reply.groups_digest != digests[node["name"]]:
            why.append(f"node {node['name']}: its agent's group members differ from the lab's model")
    return why
