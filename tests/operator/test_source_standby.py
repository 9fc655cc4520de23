"""Both operator replicas report ready (grpc.health.v1 "" SERVING on the
ProgramSource port), but only the active one answers ProgramFor: the
standby says UNAVAILABLE (the agent retries) and its ProgramSource health
is NOT_SERVING until it holds the Lease. The active one tells the agents
where it is (SetNodes' program_source), IPv6 in brackets."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tailor.datapath.agent import grpchealth
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.api import agent_pb2_grpc as rpc
from tailor.operator.controller import config, engine, source


@pytest.fixture
def standby():
    server, port = source.serve(None, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, channel
    channel.close()
    server.stop(None)


def _status(channel, service: str):
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_the_standby_is_healthy_but_not_a_program_source(standby):
    _, channel = standby
    assert _status(channel, "") == grpchealth.SERVING
    assert _status(channel, grpchealth.PROGRAM_SOURCE) == grpchealth.NOT_SERVING
    with pytest.raises(grpc.RpcError) as e:
        rpc.ProgramSourceStub(channel).ProgramFor(
            pb.ProgramForRequest(pod=pb.PodRef(namespace="a", name="b"), node="n"), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "standing by" in e.value.details()


def test_once_active_it_answers_and_reports_serving(standby):
    server, channel = standby
    server.source.activate(engine.Engine(), lambda node: None)
    assert _status(channel, grpchealth.PROGRAM_SOURCE) == grpchealth.SERVING
    with pytest.raises(grpc.RpcError) as e:   # the engine's own answer now: not loaded yet
        rpc.ProgramSourceStub(channel).ProgramFor(
            pb.ProgramForRequest(pod=pb.PodRef(namespace="a", name="b"), node="n"), timeout=5)
    assert "standing by" not in e.value.details()
    server.source.deactivate()
    assert _status(channel, grpchealth.PROGRAM_SOURCE) == grpchealth.NOT_SERVING


@pytest.mark.parametrize("advertise, listen, told", [
    (None, "0.0.0.0:9502", ""),
    ("10.0.0.7", "0.0.0.0:9502", "10.0.0.7:9502"),
    ("fd00::7", "[::]:9600", "[fd00::7]:9600"),
])
def test_the_address_told_to_agents(advertise, listen, told):
    assert config.Config(source_listen=listen, source_advertise=advertise).advertised_source == told
