"""Run the policy case files under tests/policy/cases/ (see case_files) against
the model. With no case files the test skips with the reason."""
from __future__ import annotations

import pathlib

import pytest
import yaml

from case_files import CASE_FILES, CASES_DIR, load_topology, parse_table, run_step
from tailor.operator import policy
from tailor.operator.cluster.state import ClusterState

def probe(state: ClusterState, spec: dict) -> list[str]:
    """Mismatches between the model and one probe table."""
    wrong = []
    for (src, dst), want in parse_table(spec["expect"]).items():
        if src == dst:
            continue
        got = policy.connection_allowed(state, state.find_pod(src), state.find_pod(dst),
                                        spec["protocol"], int(spec["port"]))
        if got != want:
            verdict = policy.connection_verdict(state, state.find_pod(src), state.find_pod(dst),
                                                spec["protocol"], int(spec["port"]))
            wrong.append(f"{src} -> {dst} {spec['protocol']}/{spec['port']}: expected "
                         f"{'allowed' if want else 'denied'}, model says {verdict}")
    return wrong


@pytest.mark.skipif(not CASE_FILES, reason=f"no policy case files under {CASES_DIR}")
@pytest.mark.parametrize("case", CASE_FILES, ids=[str(p.relative_to(CASES_DIR)) for p in CASE_FILES])
def test_case(case: pathlib.Path):
    doc = yaml.safe_load(case.read_text())
    state = load_topology(case, doc)
    wrong = []
    for i, step in enumerate(doc["steps"]):
        run_step(state, case, step)
        for spec in step.get("probes") or []:
            wrong += [f"step {i}: {w}" for w in probe(state, spec)]
    assert not wrong, f"{doc.get('name', case.name)}\n" + "\n".join(wrong)


def test_parse_table():
    table = parse_table("""
        -    x/a x/b
        x/a  .   X
        x/b  .   .
    """)
    assert table == {("x/a", "x/a"): True, ("x/a", "x/b"): False, ("x/b", "x/a"): True, ("x/b", "x/b"): True}
    with pytest.raises(ValueError):
        parse_table("- x/a\nx/a ?\n")
