"""The committed agent API stubs are what scripts/gen-proto.sh makes from
agent.proto: an edit of the proto without regenerating fails here."""
from __future__ import annotations

import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
API = ROOT / "datapath/agent/api"
GENERATED = ("agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py")


def test_committed_stubs_match_the_proto(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts/gen-proto.sh"), str(tmp_path)], check=True,
                   cwd=ROOT, capture_output=True)
    for name in GENERATED:
        fresh = (tmp_path / name).read_text()
        committed = (API / name).read_text()
        assert fresh == committed, f"{name} is stale: run scripts/gen-proto.sh"
