"""What the lab's agents hold, asked over their unix sockets (List).

Called by lab.status (each pod's program state) and by the operator lab's
sync and its tests (`held`: the hash each agent has in force).
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
