"""`python -m benchmarks` runs and writes the JSON its readers rely on.

Shape only, never time: the smoke run (a hidden `--smoke`: every section at
toy sizes, seconds in all) must write benchmarks.json with every section's
key and row fields, and report.md. As root every section must give real
rows, not a skip; with CI=true a missing tool (clang, iperf3, nft:
scripts/install-bench-deps.sh) fails too, as the kernel tests' policy has it.
"""
from __future__ import annotations

import json
import numbers
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CI = os.environ.get("CI") == "true"
ROWS = {
    "per_packet": ["scenario", "specialised_ns", "generic_ns", "floor_ns", "specialised_insns",
                   "generic_insns", "specialised/generic", "specialised/floor"],
    "compile": ["step", "samples", "p50_ms", "p99_ms"],
    "control_plane": ["pods", "policies", "full_plan_s", "label_change_p99_ms", "policy_edit_p99_ms",
                      "new_pod_p99_ms", "map_entries", "peak_rss_mib", "label_change_p50_ms",
                      "policy_edit_p50_ms", "new_pod_p50_ms"],
    "operator": ["pods", "initial_sync_s", "policy_edit_to_all_agents_s"],
    "pod_start": ["control", "concurrency", "cni_add_p50_ms", "cni_add_p99_ms"],
    "data_plane": ["setup", "path", "throughput_gbps", "rr_per_s"],
}
TOOLS = ("clang", "iperf3", "nft", "kmock")
LEFTOVER_PREFIXES = ("tb-podstart.", "tb-dataplane.", "tbb.", "tbn.")


def _bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # From the checkout's root, as a user runs it (never with the root on
    # PYTHONPATH: its operator/ folder would shadow the standard library's).
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_help_names_the_options_but_not_the_smoke():
    done = _bench("--help", timeout=60)
    assert done.returncode == 0, done.stderr
    for option in ("--quick", "--out", "--only"):
        assert option in done.stdout
    assert "--smoke" not in done.stdout


def test_unknown_section_is_refused():
    done = _bench("--only", "per_packet,nonsense", timeout=60)
    assert done.returncode == 2
    assert "nonsense" in done.stderr


def _is_number(v) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, bool)


def test_smoke_run_writes_every_section_with_its_row_fields(tmp_path):
    done = _bench("--smoke", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((tmp_path / "benchmarks.json").read_text())
    assert (tmp_path / "report.md").read_text().startswith("# tailor benchmarks")
    assert results["meta"]["mode"] == "smoke"
    for goal in results["goals"]:
        assert set(goal) == {"section", "goal", "measured", "status"}
        assert goal["status"] in ("met", "missed", "not measured")

    for section, fields in ROWS.items():
        value = results[section]
        assert "error" not in value, f"{section}: {value.get('error')}"
        if "skipped" in value:
            reason = value["skipped"]
            assert isinstance(reason, str) and reason
            assert os.geteuid() != 0 or (not CI and any(t in reason for t in TOOLS)), \
                f"{section} skipped as root: {reason}"
            continue
        assert value["rows"], f"{section}: no rows"
        for row in value["rows"]:
            missing = [f for f in fields if f not in row]
            assert not missing, f"{section} row lacks {missing}: {row}"

    _check_numbers(results)


def _check_numbers(results: dict) -> None:
    """The figures are numbers (a ratio may be None only when its divisor is missing)."""
    if "rows" in results["per_packet"]:
        for row in results["per_packet"]["rows"]:
            for f in ("specialised_ns", "generic_ns", "floor_ns", "specialised_insns", "generic_insns"):
                assert _is_number(row[f]), (f, row)
    if "rows" in results["compile"]:
        compile_ = results["compile"]
        assert [r["step"] for r in compile_["rows"]] == ["tailor generate", "tailor load", "clang compile"]
        assert set(compile_["clang/generate"]) == {"p50", "p99"}
    if "rows" in results["control_plane"]:
        curve = results["control_plane"]["curve"]
        assert curve and all(_is_number(c["pods"]) and _is_number(c["full_plan_s"]) for c in curve)
        for row in results["control_plane"]["rows"]:
            assert row["policies"] == 1000 and _is_number(row["map_entries"])
    if "rows" in results["data_plane"]:
        for r in results["data_plane"]["ratios"]:
            assert {"path", "metric", "tailor/bridge", "tailor/nftables"} <= set(r)
        assert {r["setup"] for r in results["data_plane"]["rows"]} == {"tailor", "bridge", "nftables"}


def test_smoke_run_leaves_no_namespaces_behind():
    # Runs after the smoke run (file order): its labs and bridges are gone.
    try:
        names = os.listdir("/var/run/netns")
    except FileNotFoundError:
        names = []
    assert not [n for n in names if n.startswith(LEFTOVER_PREFIXES)]
