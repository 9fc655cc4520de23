"""The node agents as the operator reaches them: node -> address -> gRPC stub.

Called by the pusher and the reconcile loop, which also build their
messages here (request_for, report_of). Where an agent listens comes
from the model (events.World.agent_address): the node annotation
`tailor.dev/agent-address` (host:port or unix:/path), else the agent
DaemonSet's pod on that node (its IP and the container port named `grpc`).
One channel per address (an agent restarted on the same address reuses it:
gRPC reconnects a channel by itself), and a failed RPC is retried with backoff by the engine
(per pod), so a down agent delays only its own node's pods.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import grpc

from tailor.datapath.agent import wire
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.api import agent_pb2_grpc as pb_grpc
from tailor.operator.controller import engine as engine_


class NoAgent(LookupError):
    """No agent address is known for a node (yet)."""


class Agents:
    def __init__(self, address_of: Callable[[str], str | None]):
        self._address_of = address_of
        self._channels: dict[str, grpc.Channel] = {}      # address -> channel
        self._lock = threading.Lock()

    def stub(self, node: str | None) -> pb_grpc.AgentStub:
        """The Agent stub for `node`; NoAgent when its address is unknown."""
        address = self._address_of(node) if node else None
        if not address:
            raise NoAgent(f"no agent known for node {node} (no agent pod with a `grpc` port there, "
                          f"as --agent-selector picks them, no tailor.dev/agent-address annotation)")
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = grpc.insecure_channel(address, options=[
                    ("grpc.max_receive_message_length", 64 << 20),
                    ("grpc.max_send_message_length", 64 << 20),
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 5000)])
                self._channels[address] = channel
            return pb_grpc.AgentStub(channel)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


# -- messages --------------------------------------------------------------------------

_STATES = {pb.PENDING: engine_.PENDING, pb.LOADED: engine_.LOADED, pb.FAILED: engine_.FAILED}


def request_for(work: engine_.Work):
    """The protobuf request for one Work."""
    ref = pb.PodRef(namespace=work.namespace, name=work.name, uid=work.uid)
    if work.rpc == engine_.APPLY:
        push = work.push
        return pb.ApplyRequest(program=wire.to_proto(work.namespace, work.name, work.uid,
                                                     push.programs, push.entries, work.addresses,
                                                     push.groups))
    if work.rpc == engine_.UPDATE_GROUPS:
        return pb.UpdateGroupsRequest(groups=wire.group_changes_to_proto(work.push.groups),
                                      full=work.push.full)
    if work.rpc == engine_.UPDATE_MAPS:
        return pb.UpdateMapsRequest(pod=ref, maps=wire.map_contents(work.maps))
    return pb.RemoveRequest(pod=ref)


def batch_request_for(works: list[engine_.Work]) -> pb.ApplyBatchRequest:
    """One ApplyBatch for several Apply works of one node."""
    return pb.ApplyBatchRequest(programs=[request_for(w).program for w in works])


def report_of(status: pb.PodStatus) -> engine_.Report:
    return engine_.Report(status.pod.uid, status.hash, _STATES.get(status.state, engine_.PENDING),
                          status.message)
