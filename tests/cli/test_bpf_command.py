"""`tailor bpf asm | disasm | run`, through the installed console script."""
import json
import shutil
import subprocess

import pytest

from tailor.datapath import packets as pk

PROGRAM = """\
# count packets in an array map, return 2 (TC_ACT_SHOT) for TCP to port 80
    r6 = r1
    r2 = *(u32 *)(r6 + 76)
    r3 = *(u32 *)(r6 + 80)
    r4 = r2
    r4 += 38
    if r4 > r3 goto pass
    r5 = *(u16 *)(r2 + 36)
    r5 = be16 r5
    if r5 != 80 goto pass
    r0 = 2
    exit
pass:
    r0 = 0
    exit
"""
PACKET = pk.frame(pk.Flow("10.0.0.1", "10.0.0.2", "TCP", 1234, 80))


def tailor(*args, check=True):
    exe = shutil.which("tailor")
    assert exe, "the tailor console script is not installed (pip install -e .)"
    run = subprocess.run([exe, *args], capture_output=True, text=True)
    if check:
        assert run.returncode == 0, run.stderr
    return run


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "prog.s"
    path.write_text(PROGRAM)
    return path


def test_asm_then_disasm_round_trips(source, tmp_path):
    out = tmp_path / "prog.bin"
    tailor("bpf", "asm", str(source), "-o", str(out))
    assert len(out.read_bytes()) == 13 * 8
    text = tailor("bpf", "disasm", str(out), "--labels").stdout
    again = tmp_path / "again.s"
    again.write_text(text)
    out2 = tmp_path / "again.bin"
    tailor("bpf", "asm", str(again), "-o", str(out2))
    assert out2.read_bytes() == out.read_bytes()


def test_run_in_vm_gives_json_with_retval_and_packet(source):
    result = json.loads(tailor("bpf", "run", str(source), "--packet-hex", PACKET.hex(),
                               "--format", "json").stdout)
    assert result["retval"] == 2
    assert result["packet_hex"] == PACKET.hex()
    assert result["duration_ns"] > 0
    other = pk.frame(pk.Flow("10.0.0.1", "10.0.0.2", "TCP", 1234, 81))
    assert json.loads(tailor("bpf", "run", str(source), "--packet-hex", other.hex(),
                             "--format", "json").stdout)["retval"] == 0


@pytest.mark.kernel
def test_run_in_kernel_agrees_with_vm(source):
    for packet in (PACKET, pk.frame(pk.Flow("10.0.0.1", "10.0.0.2", "UDP", 1, 80))):
        runs = [json.loads(tailor("bpf", "run", str(source), "--packet-hex", packet.hex(),
                                  "--engine", engine, "--repeat", "100", "--format", "json").stdout)
                for engine in ("vm", "kernel")]
        assert runs[0]["retval"] == runs[1]["retval"]
        assert runs[0]["packet_hex"] == runs[1]["packet_hex"]


def test_bad_input_names_the_problem(source, tmp_path):
    bad = tmp_path / "bad.s"
    bad.write_text("r0 = 1\nif r0 > 2 goto nowhere\nexit\n")
    run = tailor("bpf", "run", str(bad), "--packet-hex", PACKET.hex(), check=False)
    assert run.returncode == 2 and "nowhere" in run.stderr
    run = tailor("bpf", "run", str(source), "--packet-hex", "abc", check=False)
    assert run.returncode == 2 and "--packet-hex" in run.stderr
    uses_map = tmp_path / "map.s"
    uses_map.write_text("r1 = counters ll\nr0 = 0\nexit\n")
    run = tailor("bpf", "run", str(uses_map), "--packet-hex", PACKET.hex(), check=False)
    assert run.returncode == 2 and "--map" in run.stderr and "counters" in run.stderr
    run = tailor("bpf", "run", str(uses_map), "--packet-hex", PACKET.hex(),
                 "--map", "counters=tree,4,8,1", check=False)
    assert run.returncode == 2 and "'tree'" in run.stderr


@pytest.mark.kernel
def test_verifier_rejection_is_reported_with_its_reason(tmp_path):
    bad = tmp_path / "uninit.s"
    bad.write_text("r0 = r2\nexit\n")
    run = tailor("bpf", "run", str(bad), "--packet-hex", PACKET.hex(), "--engine", "kernel",
                 check=False)
    assert run.returncode == 1
    assert "R2 !read_ok" in run.stderr
