"""Agents find the operator without cluster DNS: the active operator replica
sends its ProgramSource address with the node table (SetNodes), the agent
asks there from then on, and the nodes digest covers it, so an agent that
restarted (and forgot it) or heard another replica's is told again.
Also: the standard gRPC health service beside the Agent service."""
from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import agent_world as world
from tailor.datapath.agent import core, grpchealth, server, source
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.api import agent_pb2_grpc as rpc
from tailor.datapath.agent.backends import emulated
from tailor.datapath.agent.node import routes
from test_agent_grpc import endpoint, ref


class Source(rpc.ProgramSourceServicer):
    """A program source that answers with the test world's programs."""

    def __init__(self, programs):
        self.programs, self.asked = programs, []

    def ProgramFor(self, request, context):
        self.asked.append(request.pod.name)
        return self.programs[request.pod.name]


@pytest.fixture
def source_server(tmp_path):
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = Source(world.programs())
    rpc.add_ProgramSourceServicer_to_server(servicer, srv)
    address = f"unix:{tmp_path}/source.sock"
    srv.add_insecure_port(address)
    srv.start()
    yield address, servicer
    srv.stop(None)


@pytest.fixture
def agent(tmp_path):
    """An agent started as the chart starts it: no --program-source."""
    c = core.Core("node-a", emulated.EmulatedBackend("node-a"), attach_timeout=1.0,
                  program_for=source.GrpcProgramSource(None))
    c.start()
    address = f"unix:{tmp_path}/agent.sock"
    srv = server.serve(c, address)
    channel = grpc.insecure_channel(address)
    yield c, channel
    channel.close()
    srv.stop(None)
    c.stop()


NODES = [pb.ClusterNode(name="node-a", addresses=["192.168.77.1"], pod_cidrs=["10.244.0.0/24"])]


def test_before_any_operator_a_cni_add_fails_saying_why(agent):
    c, _ = agent
    with pytest.raises(core.ProgramUnavailable, match="no operator has sent this agent its address"):
        c.attach_pod({"namespace": "app", "name": "server", "uid": "uid-server", "containerID": "c-server"},
                     endpoint("server", 2))


def test_the_address_set_nodes_names_is_asked_at_cni_add(agent, source_server):
    c, channel = agent
    address, servicer = source_server
    stub = rpc.AgentStub(channel)
    answer = stub.SetNodes(pb.SetNodesRequest(nodes=NODES, program_source=address))
    plain = routes.digest([routes.ClusterNode("node-a", ("192.168.77.1",), ("10.244.0.0/24",))], [])
    assert answer.digest == routes.with_source(plain, address) != plain
    assert stub.List(pb.ListRequest()).nodes_digest == answer.digest
    c.attach_pod({"namespace": "app", "name": "server", "uid": "uid-server", "containerID": "c-server"},
                 endpoint("server", 2))
    assert servicer.asked == ["server"]
    assert stub.Get(pb.GetRequest(pod=ref("server"))).state == pb.LOADED


def test_an_empty_program_source_keeps_the_agents_own(agent, source_server):
    c, channel = agent
    address, _ = source_server
    stub = rpc.AgentStub(channel)
    stub.SetNodes(pb.SetNodesRequest(nodes=NODES, program_source=address))
    again = stub.SetNodes(pb.SetNodesRequest(nodes=NODES))
    assert c.program_for.address == address
    assert again.digest == stub.List(pb.ListRequest()).nodes_digest


def test_a_restarted_agent_no_longer_matches_the_operators_digest(agent, source_server, tmp_path):
    """The operator compares List's nodes_digest with what it sent: a fresh
    agent (the address forgotten) must differ, so the table is sent again."""
    _, channel = agent
    address, _ = source_server
    sent = rpc.AgentStub(channel).SetNodes(pb.SetNodesRequest(nodes=NODES, program_source=address)).digest
    fresh = core.Core("node-a", emulated.EmulatedBackend("node-a"),
                      program_for=source.GrpcProgramSource(None))
    fresh._nodes_digest = routes.digest([routes.ClusterNode("node-a", ("192.168.77.1",),
                                                            ("10.244.0.0/24",))], [])
    assert fresh.nodes_digest() != sent


def test_a_new_active_replica_repoints_the_agent(agent, source_server, tmp_path):
    c, channel = agent
    address, _ = source_server
    stub = rpc.AgentStub(channel)
    first = stub.SetNodes(pb.SetNodesRequest(nodes=NODES, program_source="10.0.0.1:9502")).digest
    second = stub.SetNodes(pb.SetNodesRequest(nodes=NODES, program_source=address)).digest
    assert first != second and c.program_for.address == address


def test_the_agent_serves_grpc_health(agent):
    _, channel = agent
    check = health_pb2_grpc.HealthStub(channel).Check
    assert check(health_pb2.HealthCheckRequest(service="")).status == grpchealth.SERVING
    assert check(health_pb2.HealthCheckRequest(service=grpchealth.AGENT)).status == grpchealth.SERVING
    with pytest.raises(grpc.RpcError) as e:
        check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
