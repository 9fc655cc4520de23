"""The Agent gRPC service end to end over a unix socket, on the emulated
backend: pods are wired by the core's CNI callable (attach_pod) with
made-up endpoints, programs arrive by Apply or from a ProgramSource."""
from __future__ import annotations

import threading
import time
from concurrent import futures

import struct

import grpc
import pytest

import agent_world as world
from tailor.datapath.agent import core, server, source, wire
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.api import agent_pb2_grpc as rpc
from tailor.datapath.agent.backends import base, emulated
from tailor.datapath import layout


def endpoint(name: str, index: int) -> base.Endpoint:
    return base.Endpoint(container_id=f"c-{name}", ifname="eth0", netns=f"/var/run/netns/{name}",
                         host_ifname=f"tl{name[:11]}", host_ifindex=100 + index,
                         host_mac=bytes([2, 0xFE, 0, 0, 0, index]), pod_mac=bytes([2, 0, 0, 0, 0, index]),
                         addresses=(world.ADDRESSES[name],))


def ref(name: str, uid: str | None = None) -> pb.PodRef:
    return pb.PodRef(namespace="app", name=name, uid=f"uid-{name}" if uid is None else uid)


def pod_dict(name: str) -> dict:
    return {"namespace": "app", "name": name, "uid": f"uid-{name}", "containerID": f"c-{name}"}


@pytest.fixture(scope="module")
def programs():
    return world.programs()


@pytest.fixture
def agent(tmp_path):
    """(core, stub) on a unix socket."""
    c = core.Core("node-a", emulated.EmulatedBackend("node-a"), attach_timeout=2.0)
    c.start()
    sock = f"unix:{tmp_path}/agent.sock"
    srv = server.serve(c, sock)
    channel = grpc.insecure_channel(sock)
    yield c, rpc.AgentStub(channel)
    channel.close()
    srv.stop(None)
    c.stop()


def test_health(agent):
    c, stub = agent
    h = stub.Health(pb.HealthRequest())
    assert (h.node, h.backend, h.ready, h.pods) == ("node-a", "emulated", True, 0)


def test_apply_before_wiring_is_pending_then_loaded_when_the_pod_is_wired(agent, programs):
    c, stub = agent
    r = stub.Apply(pb.ApplyRequest(program=programs["server"]))
    assert r.changed and r.status.state == pb.PENDING
    assert "waiting for the pod's interface" in r.status.message
    c.attach_pod(pod_dict("server"), endpoint("server", 1))    # returns: the program is known
    got = stub.Get(pb.GetRequest(pod=ref("server")))
    assert got.state == pb.LOADED and got.hash == programs["server"].hash
    assert got.interface == "tlserver" and got.ingress.instructions > 0
    assert "ifindex 101" in got.egress.attach


def test_apply_is_idempotent_by_hash(agent, programs):
    c, stub = agent
    stub.Apply(pb.ApplyRequest(program=programs["client"]))
    c.attach_pod(pod_dict("client"), endpoint("client", 0))
    again = stub.Apply(pb.ApplyRequest(program=programs["client"]))
    assert not again.changed and again.status.state == pb.LOADED
    other = world.programs(with_policy=False)["client"]
    assert other.hash == programs["client"].hash    # the client's own logic did not change
    assert not stub.Apply(pb.ApplyRequest(program=other)).changed


def test_apply_batch_gives_each_program_its_own_outcome(agent, programs):
    """ApplyBatch: each program applied as its own Apply; a malformed one
    fails alone, with the code and details its Apply would have had."""
    c, stub = agent
    broken = pb.PodProgram()
    broken.CopyFrom(programs["other"])
    broken.ingress.insns = b"\x00" * 7                   # not a whole instruction
    answer = stub.ApplyBatch(pb.ApplyBatchRequest(programs=[programs["server"], broken, programs["client"]]))
    first, bad, last = answer.results
    assert first.response.changed and first.response.status.state == pb.PENDING and not first.code
    assert bad.code == "INVALID_ARGUMENT" and "app/other" in bad.details and "multiple of 8" in bad.details
    assert last.response.status.hash == programs["client"].hash
    with pytest.raises(grpc.RpcError) as alone:
        stub.Apply(pb.ApplyRequest(program=broken))
    assert alone.value.code().name == bad.code and alone.value.details() == bad.details
    assert {s.pod.name for s in stub.List(pb.ListRequest()).pods} == {"server", "client"}


def _later_apply(stub, program, delay=0.2):
    """Apply `program` from another thread after `delay` (a CNI ADD that
    arrives first must wait for it)."""
    def run():
        time.sleep(delay)
        stub.Apply(pb.ApplyRequest(program=program))
    threading.Thread(target=run).start()


def test_cni_attach_waits_for_apply(agent, programs):
    c, stub = agent
    _later_apply(stub, programs["other"])
    started = time.monotonic()
    c.attach_pod(pod_dict("other"), endpoint("other", 2))
    assert 0.15 < time.monotonic() - started < 2
    assert stub.Get(pb.GetRequest(pod=ref("other"))).state == pb.LOADED


def test_a_push_that_lands_while_the_program_source_answers_wins(programs):
    """The operator hands a program out at CNI ADD, then pushes a newer one
    (a peer came) before the ADD has stored the answer: the newer one is
    what the pod gets, not the answer the ADD fetched."""
    older, newer = world.programs(with_policy=False)["server"], programs["server"]
    assert older.hash != newer.hash
    c = core.Core("node-a", emulated.EmulatedBackend("node-a"), attach_timeout=2.0)

    def program_for(namespace, name, uid, node, addresses, timeout):
        c.apply(wire.from_proto(newer))        # sent after the answer, arrives first
        return wire.from_proto(older)

    c.program_for = program_for
    c.start()
    try:
        c.attach_pod(pod_dict("server"), endpoint("server", 1))
        assert c.get("app", "server").hash == newer.hash
        assert c.backend.state("app/server").hash == newer.hash
    finally:
        c.stop()


def test_cni_attach_times_out_with_a_clear_message(agent):
    c, _ = agent
    c.attach_timeout = 0.3
    with pytest.raises(core.ProgramUnavailable, match="no program for pod app/ghost"):
        c.attach_pod({"namespace": "app", "name": "ghost", "uid": "u"}, endpoint("other", 9))
    c.detach_pod("c-other", "eth0")        # what the CNI side does to undo the ADD


def test_list_trace_counters_update_maps_remove(agent, programs):
    c, stub = agent
    for name in world.ADDRESSES:
        stub.Apply(pb.ApplyRequest(program=programs[name]))
    for i, name in enumerate(world.ADDRESSES):
        c.attach_pod(pod_dict(name), endpoint(name, i))
    listed = stub.List(pb.ListRequest())
    assert [(p.pod.name, p.state) for p in listed.pods] == [
        ("client", pb.LOADED), ("other", pb.LOADED), ("server", pb.LOADED)]

    ok = stub.Trace(pb.TraceRequest(src="app/client", dst="app/server", protocol="TCP", dst_port=80))
    assert ok.allowed
    assert [(s.pod, s.direction, s.verdict) for s in ok.steps] == [
        ("app/client", "egress", "redirect"), ("app/server", "ingress", "pass"),
        ("app/server", "egress", "redirect"), ("app/client", "ingress", "pass")]
    port = stub.Trace(pb.TraceRequest(src="app/client", dst="app/server", protocol="TCP", dst_port=81))
    assert not port.allowed and port.steps[-1].verdict == "drop"
    by_address = stub.Trace(pb.TraceRequest(src="10.244.0.13", dst="app/server", protocol="UDP",
                                            dst_port=80))
    assert not by_address.allowed and by_address.steps[0].pod == "app/other"
    outside = stub.Trace(pb.TraceRequest(src="app/client", dst="192.0.2.1", protocol="TCP", dst_port=443))
    assert outside.allowed and [s.direction for s in outside.steps] == ["egress", "ingress"]

    # Traces run on scratch copies: the live counters stay at zero.
    counters = stub.Counters(pb.CountersRequest(pod=ref("client")))
    assert counters.egress.redirected == 0 and counters.egress.allowed == 0
    frame = _frame("10.244.0.11", "10.244.0.12", 80)
    retval, _ = c.backend.run("app/client", "egress", frame)
    assert retval == 7    # TC_ACT_REDIRECT
    assert stub.Counters(pb.CountersRequest(pod=ref("client"))).egress.redirected == 1

    # Peer churn: take the client out of the server's group -> the trace drops.
    gid = world.group_of(c._programs["app/server"])
    before = stub.List(pb.ListRequest()).groups_digest
    upd = stub.UpdateGroups(pb.UpdateGroupsRequest(groups=[
        pb.GroupChange(group=gid, remove=[world.ADDRESSES["client"]])]))
    assert upd.changed_entries == 1 and upd.digest != before
    assert stub.List(pb.ListRequest()).groups_digest == upd.digest
    assert not stub.Trace(pb.TraceRequest(src="app/client", dst="app/server", protocol="TCP",
                                          dst_port=80)).allowed
    back = stub.UpdateGroups(pb.UpdateGroupsRequest(groups=[
        pb.GroupChange(group=gid, add=[world.ADDRESSES["client"]])]))
    assert back.changed_entries == 1 and back.digest == before
    assert stub.Trace(pb.TraceRequest(src="app/client", dst="app/server", protocol="TCP",
                                      dst_port=80)).allowed
    with pytest.raises(grpc.RpcError) as bad:
        stub.UpdateGroups(pb.UpdateGroupsRequest(groups=[pb.GroupChange(group="x", add=["10.0.0.1"])]))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "group id 'x'" in bad.value.details()

    assert stub.Remove(pb.RemoveRequest(pod=ref("server"))).removed
    assert not stub.Remove(pb.RemoveRequest(pod=ref("server"))).removed
    with pytest.raises(grpc.RpcError) as e:
        stub.Get(pb.GetRequest(pod=ref("server")))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "app/server" in e.value.details()
    key = layout.pack_addr("10.244.0.12")
    assert c.backend.node_maps["endpoints4"].lookup(key) is None     # Remove drops the endpoint entry


def _frame(src, dst, port):
    from tailor.datapath import packets as pk
    return pk.frame(pk.Flow(src, dst, "TCP", 40000, port))


def test_errors_name_the_pod(agent, programs):
    c, stub = agent
    with pytest.raises(grpc.RpcError) as e:
        stub.Counters(pb.CountersRequest(pod=ref("nobody")))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "app/nobody" in e.value.details()
    stub.Apply(pb.ApplyRequest(program=programs["server"]))
    with pytest.raises(grpc.RpcError) as e:
        stub.UpdateMaps(pb.UpdateMapsRequest(pod=ref("server"), maps=[
            pb.MapContents(direction="ingress", map="nosuch")]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "app/server" in e.value.details()
    bad = pb.PodProgram()
    bad.CopyFrom(programs["server"])
    bad.ingress.relocations.add(slot=0, map="ct4", pseudo=1)
    with pytest.raises(grpc.RpcError) as e:
        stub.Apply(pb.ApplyRequest(program=bad))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "app/server" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.Trace(pb.TraceRequest(src="app/nobody", dst="app/server", protocol="TCP", dst_port=80))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "app/nobody" in e.value.details()


def test_rejected_program_reports_failed_and_keeps_the_old_one(agent, programs):
    c, stub = agent
    stub.Apply(pb.ApplyRequest(program=programs["client"]))
    c.attach_pod(pod_dict("client"), endpoint("client", 0))
    broken = pb.PodProgram()
    broken.CopyFrom(programs["client"])
    broken.hash = "broken"
    broken.ingress.insns = b"\x95" + b"\0" * 7 + b"\xff" * 8     # exit, then an unknown opcode
    broken.ingress.ClearField("relocations")
    broken.ingress.ClearField("annotations")
    r = stub.Apply(pb.ApplyRequest(program=broken))
    assert not r.changed and r.status.state == pb.FAILED
    assert "app/client" in r.status.message and programs["client"].hash in r.status.message
    assert r.status.hash == programs["client"].hash                    # still in force
    assert stub.Apply(pb.ApplyRequest(program=programs["client"])).status.state == pb.LOADED


class _Source(rpc.ProgramSourceServicer):
    def __init__(self, programs, unknown_first: int = 1):
        self.programs, self.calls, self.unknown_first = programs, 0, unknown_first

    def ProgramFor(self, request, context):
        self.calls += 1
        if self.calls <= self.unknown_first:
            context.abort(grpc.StatusCode.NOT_FOUND, "not compiled yet")
        assert request.node == "node-a" and list(request.addresses) == ["10.244.0.12"]
        return self.programs[request.pod.name]


def test_cni_attach_asks_the_program_source_and_retries(tmp_path, programs):
    servicer = _Source(programs)
    src = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    rpc.add_ProgramSourceServicer_to_server(servicer, src)
    address = f"unix:{tmp_path}/source.sock"
    src.add_insecure_port(address)
    src.start()
    client = source.GrpcProgramSource(address)
    c = core.Core("node-a", emulated.EmulatedBackend("node-a"), program_for=client, attach_timeout=5)
    c.start()
    try:
        c.attach_pod(pod_dict("server"), endpoint("server", 1))
        assert servicer.calls == 2
        assert c.get("app", "server").state == base.State.LOADED
        c.detach_pod("c-server", "eth0")
        c.detach_pod("c-server", "eth0")                # idempotent
        assert c.get("app", "server").state == base.State.PENDING
    finally:
        client.close()
        src.stop(None)
        c.stop()


def _svc(address, port, backends, protocol=6):
    return pb.ServiceEntry(address=address, port=port, protocol=protocol, service="app/web",
                           backends=[pb.ServiceBackend(address=a, port=p) for a, p in backends])


def test_set_services_holds_exactly_the_table_and_its_digest(agent):
    from tailor.datapath import layout
    from tailor.datapath import services as node_services

    c, stub = agent
    assert stub.List(pb.ListRequest()).services_digest == ""          # none yet: the source sends one
    first = [_svc("10.96.0.10", 80, [("10.1.0.5", 8080), ("10.1.0.6", 8080)]), _svc("fd00:96::a", 53, [], 17)]
    answer = stub.SetServices(pb.SetServicesRequest(services=first))
    assert answer.services == 2 and answer.digest == stub.List(pb.ListRequest()).services_digest
    maps = c.backend.node_maps
    key = layout.pack_service_key("10.96.0.10", 80, 6)
    sid, count, _, _ = layout.SERVICE.unpack(maps["svc4"].lookup(key))
    assert count == 2 and maps["backends4"].lookup(layout.BACKEND_KEY.pack(sid, 1)) == \
        layout.pack_target("10.1.0.6", 8080)
    # One backend left: the count shrinks and the stale slot goes; the id stays.
    stub.SetServices(pb.SetServicesRequest(services=[_svc("10.96.0.10", 80, [("10.1.0.5", 8080)])]))
    assert layout.SERVICE.unpack(maps["svc4"].lookup(key))[:2] == (sid, 1)
    assert maps["backends4"].lookup(layout.BACKEND_KEY.pack(sid, 1)) is None
    assert maps["svc6"].lookup(layout.pack_service_key("fd00:96::a", 53, 17)) is None
    # An agent restarted over maps an earlier process filled (pins outlive it):
    # its first table clears what that one does not name.
    c.backend.services = None
    maps["svc4"].update(layout.pack_service_key("10.96.9.9", 9, 6), layout.pack_service(99, 1))
    stub.SetServices(pb.SetServicesRequest(services=[_svc("10.96.0.11", 81, [("10.1.0.7", 81)])]))
    assert {k for k, _ in maps["svc4"].items()} == {layout.pack_service_key("10.96.0.11", 81, 6)}
    assert stub.List(pb.ListRequest()).services_digest == node_services.digest(
        [node_services.ServiceEntry("10.96.0.11", 81, 6, (("10.1.0.7", 81),))])


def test_set_services_refuses_a_bad_entry_by_name_and_changes_nothing(agent):
    c, stub = agent
    stub.SetServices(pb.SetServicesRequest(services=[_svc("10.96.0.10", 80, [("10.1.0.5", 8080)])]))
    before = stub.List(pb.ListRequest()).services_digest
    for bad in ([_svc("10.96.0.300", 80, [])], [_svc("10.96.0.10", 80, [("fd00::1", 80)])],
                [_svc("10.96.0.10", 80, [], protocol=1)]):
        with pytest.raises(grpc.RpcError) as e:
            stub.SetServices(pb.SetServicesRequest(services=bad))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "app/web" in e.value.details()
    assert stub.List(pb.ListRequest()).services_digest == before


def test_a_removed_backend_takes_its_translations_and_affinities_with_it(agent):
    """A resolver reusing its source port must not keep reaching a CoreDNS
    pod that is gone: the node's nat and affinity entries leading there go
    with the backend; those to a backend that stays are kept."""
    from tailor.datapath import layout

    c, stub = agent
    both = [("10.1.0.5", 53), ("10.1.0.6", 53)]
    stub.SetServices(pb.SetServicesRequest(services=[_svc("10.96.0.10", 53, both, 17)]))
    maps = c.backend.node_maps
    out = {b: layout.pack_ct_key(4, "10.1.0.9", "10.96.0.10", 40000 + i, 53, 17, "egress")[:13]
           + bytes([layout.SVC_OUT, 0, 0]) for i, b in enumerate(both)}
    back = {b: layout.pack_ct_key(4, b[0], "10.1.0.9", 53, 40000 + i, 17, "egress")[:13]
            + bytes([layout.SVC_BACK, 0, 0]) for i, b in enumerate(both)}
    for b in both:
        maps["nat4"].update(out[b], layout.pack_target(*b))
        maps["nat4"].update(back[b], layout.pack_target("10.96.0.10", 53))
        maps["affinity4"].update(struct.pack("<I", 1) + layout.pack_addr(f"10.1.0.{7 + both.index(b)}"),
                                 struct.pack("<Q", 1) + layout.pack_target(*b))
    stub.SetServices(pb.SetServicesRequest(services=[_svc("10.96.0.10", 53, both[:1], 17)]))
    assert {k for k, _ in maps["nat4"].items()} == {out[both[0]], back[both[0]]}
    assert [v[8:] for _, v in maps["affinity4"].items()] == [layout.pack_target(*both[0])]


def test_a_restarted_agent_keeps_each_services_id_and_its_clients_affinity(agent):
    """Ids come back from the pinned svc maps: a Service keeps its own, the
    affinity entries that name it stay, and a new Service takes a fresh one."""
    from tailor.datapath import layout

    c, stub = agent
    web = _svc("10.96.0.10", 80, [("10.1.0.5", 8080)])
    stub.SetServices(pb.SetServicesRequest(services=[_svc("10.96.0.9", 80, [("10.1.0.4", 80)]), web]))
    maps = c.backend.node_maps
    key = layout.pack_service_key("10.96.0.10", 80, 6)
    sid = layout.SERVICE.unpack(maps["svc4"].lookup(key))[0]
    ids_before = {layout.SERVICE.unpack(v)[0] for _, v in maps["svc4"].items()}
    sticky = struct.pack("<I", sid) + layout.pack_addr("10.1.0.9")
    maps["affinity4"].update(sticky, struct.pack("<Q", 1) + layout.pack_target("10.1.0.5", 8080))
    c.backend.services = None                      # a new process over the same pinned maps
    stub.SetServices(pb.SetServicesRequest(services=[web, _svc("10.96.0.11", 81, [("10.1.0.6", 81)])]))
    assert layout.SERVICE.unpack(maps["svc4"].lookup(key))[0] == sid
    assert maps["affinity4"].lookup(sticky) is not None
    new = layout.SERVICE.unpack(maps["svc4"].lookup(layout.pack_service_key("10.96.0.11", 81, 6)))[0]
    assert new not in ids_before                   # never the gone 10.96.0.9's id
