"""The agent's client of a ProgramSource (api/agent.proto): asks for a pod's
program when a CNI ADD arrives before any Apply did.

Called by core.Core through its `program_for` callable; built by
cli/agent.py from `--program-source ADDR` (host:port or unix:/path).
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

    def __init__(self, address: str):
        self.address = address
        self._channel = None
        self._lock = threading.Lock()

    def _stub(self) -> rpc.ProgramSourceStub:
        with self._lock:
            if self._channel is None:
                self._channel = grpc.insecure_channel(self.address)
            return rpc.ProgramSourceStub(self._channel)

    def __call__(self, namespace: str, name: str, uid: str, node: str, addresses, timeout: float):
        request = pb.ProgramForRequest(pod=pb.PodRef(namespace=namespace, name=name, uid=uid),
                                       node=node, addresses=list(addresses))
        try:
            message = self._stub().ProgramFor(request, timeout=timeout)
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
