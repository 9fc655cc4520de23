"""The operator's ProgramSource (api/agent.proto): the zero-window hand-off.

Served on `--source-listen` (default 0.0.0.0:9502) by app.Controller; the
agents are started with `--program-source` pointing at it. During a CNI ADD
the pod's agent has no program yet (the operator cannot compile one before
the pod has addresses, and only the CNI's IPAM knows them), so the agent
asks here with the addresses and waits; the CNI ADD returns only once the
answer is attached. So no packet reaches or leaves a pod before its own
program is in force. The operator:

  - answers UNAVAILABLE until its initial listing is complete: a program
    compiled from half a cluster could miss a policy and allow too much;
  - answers NOT_FOUND while it has not seen the pod (of that uid) yet: the
    watch may lag the kubelet; the agent asks again with backoff until its
    attach timeout, then the CNI fails with "try again later" and the
    kubelet retries the sandbox;
  - records the addresses in the model, compiles, marks the program given
    (engine.program_for: no Apply follows for it), and queues the pods the
    new address affects (their peer maps) for the pusher — after answering,
    never before: the asking agent must not wait on other nodes.

With two operator replicas both serve this port from the start, with the
standard health service (grpc.health.v1: "" SERVING, so the chart's probe
finds the standby ready too), but only the Lease holder answers ProgramFor;
the standby answers UNAVAILABLE (the agent retries) and reports
ProgramSource NOT_SERVING. The active replica tells every agent its own
address (SetNodes' program_source), so agents need neither cluster DNS nor
a Service to reach it.

Trust: an answer here records the asking agent's addresses for the pod, and
they join other pods' peer maps. The port speaks plain gRPC with no client
authentication, so it must be reachable from the node agents only (the
chart's NetworkPolicy / host network); the node in the request must be the
pod's scheduled node, which limits, but does not prevent, a lying caller.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures

import grpc

from tailor.datapath.agent import grpchealth, wire
from tailor.datapath.agent.api import agent_pb2_grpc as pb_grpc
from tailor.operator.compiler import program
from tailor.operator.controller import engine as engine_

log = logging.getLogger("tailor.operator.source")


class ProgramSource(pb_grpc.ProgramSourceServicer):
    """engine None: a standby replica, which answers UNAVAILABLE."""

    def __init__(self, engine: engine_.Engine | None,
                 handed: Callable[[str], None] = lambda node: None):
        self.engine = engine
        self.handed = handed
        self.health = None   # set by serve()

    def activate(self, engine: engine_.Engine, handed: Callable[[str], None]) -> None:
        self.engine, self.handed = engine, handed
        grpchealth.set_serving(self.health, grpchealth.PROGRAM_SOURCE, True)

    def deactivate(self) -> None:
        grpchealth.set_serving(self.health, grpchealth.PROGRAM_SOURCE, False)
        self.engine = None

    def ProgramFor(self, request, context):
        ref = request.pod
        what = f"{ref.namespace}/{ref.name}"
        if self.engine is None:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          "this operator replica is standing by (it does not hold the Lease); "
                          "the active replica tells the agents its address")
        try:
            pod, uid, programs, entries, groups = self.engine.program_for(
                ref.namespace, ref.name, ref.uid, request.node, list(request.addresses))
        except engine_.NotReady as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except LookupError as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except program.CompileError as e:
            log.error("ProgramFor %s: %s", what, e)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cannot compile pod {what}: {e}")
        except ValueError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except Exception as e:   # noqa: BLE001 - the agent must hear of it, not hang
            log.exception("ProgramFor %s", what)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        log.info("ProgramFor %s on node %s %s: %s", what, request.node, ",".join(pod.ips), programs.hash)
        self.handed(request.node)
        return wire.to_proto(pod.namespace, pod.name, uid, programs, entries, pod.ips, groups)


def serve(engine: engine_.Engine | None, listen: str,
          handed: Callable[[str], None] = lambda node: None,
          *, workers: int = 16, extra_handlers=()) -> tuple[grpc.Server, int]:
    """Start the ProgramSource on `listen` (host:port or unix:/path), with
    the health service and `extra_handlers` (generic gRPC handlers: the
    lab's Sync) beside it. Returns the server, its `.source` servicer
    attached (activate() it once a standby's engine exists), and the bound
    port (0 for unix sockets)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                    thread_name_prefix="tailor-source"))
    servicer = ProgramSource(engine, handed)
    pb_grpc.add_ProgramSourceServicer_to_server(servicer, server)
    servicer.health = grpchealth.add(server, **{grpchealth.PROGRAM_SOURCE: engine is not None})
    server.source = servicer
    if extra_handlers:
        server.add_generic_rpc_handlers(tuple(extra_handlers))
    port = server.add_insecure_port(listen)
    if port == 0 and not listen.startswith("unix:"):
        raise OSError(f"cannot listen on {listen}")
    server.start()
    server.port = port
    return server, port
