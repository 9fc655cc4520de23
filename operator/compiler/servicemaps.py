"""The Service table every node's datapath holds: each ClusterIP, port and
protocol with its backends (address, port), from the cluster's Services
and their endpoints. Pure. Sent to the agents whole (SetServices); the
agent numbers the entries and writes the maps (datapath/services.py).

Endpoints are the ready pods the selector chooses (cluster/services.py),
as the endpoints controller lists them. Left out, with a warning naming
the Service: SCTP backends whose port is
not the Service's (an SCTP packet's CRC32c covers its ports and cannot be
patched in the datapath; kube-proxy, if it runs, still serves them through
the node: the packet goes on untranslated).
"""
from __future__ import annotations

import ipaddress

from tailor.datapath.services import ServiceEntry
from tailor.operator.cluster.ports import PROTOCOL_NUMBERS
from tailor.operator.cluster.services import address_of
from tailor.operator.cluster.state import ClusterState

def entries(state: ClusterState) -> tuple[list[ServiceEntry], list[str]]:
    """The table, and warnings for what it leaves out."""
    out, warnings = [], []
    for svc in state.sorted_services():
        affinity = svc.affinity_seconds if svc.session_affinity == "ClientIP" else 0
        for address in svc.cluster_ips:
            family = ipaddress.ip_address(address).version
            for port in svc.ports:
                backends = []
                for backend, target in state.endpoints(svc, port):
                    ip = address_of(backend, family)
                    if ip is None:
                        continue
                    if port.protocol == "SCTP" and target != port.port:
                        warnings.append(f"Service {svc.namespace}/{svc.name} port {port.port}/SCTP: backend "
                                        f"{backend} listens on {target}; an SCTP port cannot be "
                                        f"translated, so tailor leaves this backend out")
                        continue
                    backends.append((ip, target))
                out.append(ServiceEntry(address, port.port, PROTOCOL_NUMBERS[port.protocol],
                                        tuple(sorted(set(backends))), affinity,
                                        f"{svc.namespace}/{svc.name}"))
    return out, warnings
