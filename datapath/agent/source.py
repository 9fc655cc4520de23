"""The agent's client of a ProgramSource (api/agent.proto): asks for a pod's
program when a CNI ADD arrives before any Apply did.

Called by core.Core through its `program_for` callable; built by the
daemon from `--program-source ADDR` (host:port or unix:/path), or with no
address, learning it from the operator's SetNodes (point_at): in a cluster
the agent needs neither cluster DNS nor a Service to find the active
operator replica, which tells every agent its own address.
"""
from __future__ import annotations

import threading

import grpc

from tailor.datapath.agent import wire
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.api import agent_pb2_grpc as rpc

# Codes that mean "not now": the core retries them until its deadline.
_RETRY_LATER = {grpc.StatusCode.NOT_FOUND: LookupError, grpc.StatusCode.UNAVAILABLE: ConnectionError,
                grpc.StatusCode.DEADLINE_EXCEEDED: TimeoutError,
                grpc.StatusCode.RESOURCE_EXHAUSTED: ConnectionError}


class GrpcProgramSource:
    """program_for(namespace, name, uid, node, addresses, timeout) -> wire.Received."""

    def __init__(self, address: str | None):
        self.address = address
        self.learned = ""          # what SetNodes said, "" before (part of the nodes digest)
        self._channel = None
        self._lock = threading.Lock()

    def point_at(self, address: str) -> None:
        """Ask `address` from now on (a new active operator replica)."""
        with self._lock:
            if address == self.address:
                self.learned = address
                return
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            self.address = self.learned = address

    def _stub(self) -> rpc.ProgramSourceStub:
        with self._lock:
            if self.address is None:
                raise ConnectionError("no program source yet: no --program-source, and no "
                                      "operator has sent this agent its address (SetNodes)")
            if self._channel is None:
                self._channel = grpc.insecure_channel(self.address)
            return rpc.ProgramSourceStub(self._channel)

    def __call__(self, namespace: str, name: str, uid: str, node: str, addresses, timeout: float):
        request = pb.ProgramForRequest(pod=pb.PodRef(namespace=namespace, name=name, uid=uid),
                                       node=node, addresses=list(addresses))
        stub = self._stub()
        try:
            message = stub.ProgramFor(request, timeout=timeout)
        except grpc.RpcError as e:
            kind = _RETRY_LATER.get(e.code(), ConnectionError)
            raise kind(f"ProgramFor({namespace}/{name}) at {self.address}: "
                       f"{e.code().name}: {e.details()}") from None
        return wire.from_proto(message)

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
