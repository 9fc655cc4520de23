"""The gRPC `Agent` service (api/agent.proto) over core.Core.

Called by grpcio's thread pool; built by cli/agent.py (`serve`) and by
tests and the lab, which run it in-process. Messages in, core calls, messages
out: every decision lives in the core. Errors become status codes whose
details name the pod:
    INVALID_ARGUMENT     a malformed program, map or trace request
    NOT_FOUND            no program for that pod on this node
    FAILED_PRECONDITION  a backend refused a map update
    INTERNAL             anything unexpected (a bug, an unexpected kernel answer)
A program the verifier refuses is not an RPC error: Apply answers with the
pod's status FAILED and the reason, and the old program stays in force.
"""
from __future__ import annotations

import functools
from concurrent import futures

import grpc

from tailor.datapath.agent import core, grpchealth, wire
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.api import agent_pb2_grpc as rpc
from tailor.datapath import layout
from tailor.datapath.agent.backends import base

_STATES = {base.State.PENDING: pb.PENDING, base.State.LOADED: pb.LOADED,
           base.State.FAILED: pb.FAILED}


def _status_of(e: Exception) -> grpc.StatusCode:
    """The gRPC status code an error of the core's means."""
    if isinstance(e, core.NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(e, (core.InvalidRequest, ValueError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(e, base.BackendError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


def _details(e: Exception) -> str:
    return str(e) if _status_of(e) != grpc.StatusCode.INTERNAL else f"{type(e).__name__}: {e}"


def _errors_as_status(method):
    """Core errors -> gRPC status codes with the message as details."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as e:   # noqa: BLE001 - the client must hear of it, not a hang
            context.abort(_status_of(e), _details(e))
    return wrapper


def status_message(state: base.PodState) -> pb.PodStatus:
    msg = pb.PodStatus(pod=pb.PodRef(namespace=state.namespace, name=state.name, uid=state.uid),
                       state=_STATES[state.state], message=state.message, hash=state.hash,
                       features=list(state.features), addresses=list(state.addresses),
                       interface=state.interface)
    for d in layout.DIRECTIONS:
        load = getattr(state, d)
        if load is not None:
            getattr(msg, d).CopyFrom(pb.LoadInfo(
                program_id=load.program_id, verified_insns=load.verified_insns,
                attach=load.attach, hash=load.hash, instructions=load.instructions))
    return msg


def _pod_ref(ref: pb.PodRef) -> tuple[str, str, str]:
    if not ref.namespace or not ref.name:
        raise core.InvalidRequest("the request names no pod (namespace and name)")
    return ref.namespace, ref.name, ref.uid


class AgentServicer(rpc.AgentServicer):
    def __init__(self, agent: core.Core):
        self.core = agent

    @_errors_as_status
    def Apply(self, request, context):
        return self._apply(request.program)

    def _apply(self, program: pb.PodProgram) -> pb.ApplyResponse:
        try:
            received = wire.from_proto(program)
        except ValueError as e:
            ref = program.pod
            raise core.InvalidRequest(f"pod {ref.namespace}/{ref.name}: {e}") from None
        _pod_ref(program.pod)
        state, changed = self.core.apply(received)
        return pb.ApplyResponse(status=status_message(state), changed=changed)

    @_errors_as_status
    def ApplyBatch(self, request, context):
        results = []
        for program in request.programs:
            try:
                results.append(pb.ApplyResult(response=self._apply(program)))
            except Exception as e:   # noqa: BLE001 - one program's failure is its own
                results.append(pb.ApplyResult(code=_status_of(e).name, details=_details(e)))
        return pb.ApplyBatchResponse(results=results)

    @_errors_as_status
    def UpdateMaps(self, request, context):
        namespace, name, uid = _pod_ref(request.pod)
        changed = self.core.update_maps(namespace, name, uid, wire.map_contents_from(request.maps))
        return pb.UpdateMapsResponse(changed_entries=changed)

    @_errors_as_status
    def UpdateGroups(self, request, context):
        try:
            changes = wire.group_changes_from_proto(request.groups)
        except ValueError as e:
            raise core.InvalidRequest(str(e)) from None
        changed, digest = self.core.update_groups(changes, full=request.full)
        return pb.UpdateGroupsResponse(changed_entries=changed, digest=digest)

    @_errors_as_status
    def SetNodes(self, request, context):
        routes, digest = self.core.set_nodes(request.nodes, request.cluster_cidrs,
                                             request.program_source)
        return pb.SetNodesResponse(routes=routes, digest=digest)

    @_errors_as_status
    def SetServices(self, request, context):
        try:
            entries = wire.services_from_proto(request.services)
        except ValueError as e:
            raise core.InvalidRequest(f"SetServices: {e}") from None
        count, digest = self.core.set_services(entries)
        return pb.SetServicesResponse(services=count, digest=digest)

    @_errors_as_status
    def Remove(self, request, context):
        namespace, name, uid = _pod_ref(request.pod)
        return pb.RemoveResponse(removed=self.core.remove(namespace, name, uid))

    @_errors_as_status
    def List(self, request, context):
        return pb.ListResponse(pods=[status_message(s) for s in self.core.list()],
                               groups_digest=self.core.groups_digest(),
                               nodes_digest=self.core.nodes_digest(),
                               services_digest=self.core.services_digest())

    @_errors_as_status
    def Get(self, request, context):
        namespace, name, _ = _pod_ref(request.pod)
        return status_message(self.core.get(namespace, name))

    @_errors_as_status
    def Counters(self, request, context):
        namespace, name, uid = _pod_ref(request.pod)
        counters = self.core.counters(namespace, name)
        return wire.counters_to_proto(namespace, name, uid,
                                      {"ingress": counters.ingress, "egress": counters.egress})

    @_errors_as_status
    def Trace(self, request, context):
        result = self.core.trace(request.src, request.dst, request.protocol or "TCP",
                                 request.src_port, request.dst_port)
        translated = result.translated or ("", 0)
        return pb.TraceResponse(allowed=result.allowed, steps=[
            pb.TraceStep(pod=s.pod, direction=s.direction, retval=s.retval, verdict=s.verdict)
            for s in result.steps], translated_dst=translated[0], translated_port=translated[1])

    @_errors_as_status
    def Health(self, request, context):
        h = self.core.health()
        return pb.HealthResponse(node=h["node"], backend=h["backend"], pods=h["pods"],
                                 ready=h["ready"], version=h["version"])


def serve(agent: core.Core, listen: str, *, workers: int = 16) -> grpc.Server:
    """Start the Agent service on `listen` (host:port, or unix:/path)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                    thread_name_prefix="tailor-grpc"))
    rpc.add_AgentServicer_to_server(AgentServicer(agent), server)
    # The core is started before it is served: the Agent service is up.
    grpchealth.add(server, **{grpchealth.AGENT: agent.ready()})
    if server.add_insecure_port(listen) == 0 and not listen.startswith("unix:"):
        raise OSError(f"cannot listen on {listen}")
    server.start()
    return server
