"""Programs survive the trip through the agent API's messages unchanged."""
from tailor.datapath.agent import wire
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.ebpf import isa
from tailor.operator.cluster import manifests
from tailor.operator.compiler import build

import pathlib

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples/01-namespaces-and-ports"


def test_round_trip_keeps_instructions_refs_annotations_and_entries():
    built = build.build(manifests.load([str(EXAMPLE)]))
    for ref, b in built.items():
        entries = {}
        msg = wire.to_proto("x", "a", "uid-1", b.programs, entries, ("10.0.0.10",))
        got = wire.from_proto(pb.PodProgram.FromString(msg.SerializeToString()))
        for d in wire.DIRECTIONS:
            sent = b.programs.program(d)
            assert got.insns[d] == list(sent.insns)
            assert [i.comment for i in got.insns[d]] == [i.comment for i in sent.insns]
            assert got.maps[d] == list(sent.maps)
            assert isa.map_refs(got.insns[d]) == isa.map_refs(sent.insns)
        assert got.entries == {d: entries.get(d, {}) for d in wire.DIRECTIONS}
        assert got.hash == b.programs.hash and got.addresses == ("10.0.0.10",)


def test_malformed_relocation_is_named():
    built = next(iter(build.build(manifests.load([str(EXAMPLE)])).values()))
    msg = wire.program_to_proto(built.programs.egress)
    msg.relocations.add(slot=0, map="ct4", pseudo=1)
    try:
        wire.program_from_proto(msg)
    except ValueError as e:
        assert "slot 0 is not a 64-bit load" in str(e)
    else:
        raise AssertionError("a relocation on a plain instruction must be refused")
