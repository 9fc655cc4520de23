"""The standard gRPC health service (grpc.health.v1) beside tailor's own, so
Kubernetes' grpc probes, grpc_health_probe and load balancers can ask.

Used by the agent's server (server.serve) and the operator's ProgramSource
(operator/controller/source.py). The overall status ("") says the process
serves; each named service says whether that service can answer now (the
operator's standby replica: "" SERVING, ProgramSource NOT_SERVING).
"""
from __future__ import annotations

from grpc_health.v1 import health, health_pb2, health_pb2_grpc

AGENT = "tailor.agent.v1.Agent"
PROGRAM_SOURCE = "tailor.agent.v1.ProgramSource"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def add(server, **services: bool) -> health.HealthServicer:
    """Serve health on `server`: "" SERVING, and each named service (by its
    full name, as keyword: {AGENT: True}) SERVING or NOT_SERVING."""
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set("", SERVING)
    for name, serving in services.items():
        set_serving(servicer, name, serving)
    return servicer


def set_serving(servicer: health.HealthServicer, service: str, serving: bool) -> None:
    servicer.set(service, SERVING if serving else NOT_SERVING)
