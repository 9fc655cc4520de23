"""Connections to Services, judged on their backends: the model of what a
client reaches through a Service address. Purely data-manipulative.

Called by the lab's probe (its --check) and by whoever asks what a Service
connection gets. NetworkPolicy semantics: policy never sees the Service
address, only the backend the connection is translated to, so a connection
from `src` to a Service port is allowed on a backend iff `src` may connect
to that backend pod on the port the Service port targets there. A Service
with no endpoint for the port rejects every connection at once.

`verdict` answers for the whole Service: "all" (every backend allows it:
any connection succeeds), "none" (no backend does, or there is none), or
"some" (which one a connection reaches decides: a probe sees either).
"""
from __future__ import annotations

from tailor.operator.cluster.objects import Pod
from tailor.operator.cluster.services import Service, ServicePort, address_of
from tailor.operator.cluster.state import ClusterState
from tailor.operator.policy import evaluate

ALL, SOME, NONE = "all", "some", "none"


def verdict(state: ClusterState, src: Pod | str, service: Service, port: ServicePort,
            family: int) -> str:
    """Of a connection from `src` (a pod, or an address such as a node's)
    to the Service's `family` address on `port`."""
    allowed = [evaluate.connection_allowed(state, src, address_of(backend, family), port.protocol, target,
                                           family)
               for backend, target in state.endpoints(service, port)
               if address_of(backend, family) is not None and backend is not src]
    if not allowed or not any(allowed):
        return NONE
    return ALL if all(allowed) else SOME
