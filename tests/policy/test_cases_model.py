"""Run the policy case files under tests/policy/cases/ against the model.

A case file (YAML) names a topology (Namespace and Pod manifests, path relative
to the case file) and steps; each step applies and deletes objects, then
probes: for a protocol and destination port, a table whose rows are source
pods and columns destination pods, '.' allowed and 'X' denied. The diagonal (a
pod to itself) is not checked: loopback never reaches a pod's program, and the
e2e tables always mark it allowed.

Files without a `steps` key (topologies) are not cases. With no case files the
test skips with the reason.
"""
from __future__ import annotations

import pathlib

import pytest
import yaml

from tailor.operator import policy
from tailor.operator.cluster import manifests
from tailor.operator.cluster.state import ClusterState

CASES_DIR = pathlib.Path(__file__).parent / "cases"


def _case_files() -> list[pathlib.Path]:
    found = []
    for path in sorted(CASES_DIR.rglob("*.yaml")) if CASES_DIR.is_dir() else []:
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            found.append(path)   # a broken case file fails its test rather than vanishing
            continue
        if isinstance(doc, dict) and "steps" in doc:
            found.append(path)
    return found


CASE_FILES = _case_files()


def parse_table(text: str) -> dict[tuple[str, str], bool]:
    """{(src, dst): allowed} from a probe table."""
    lines = [line.split() for line in text.strip().splitlines() if line.strip()]
    header, rows = lines[0][1:], lines[1:]
    table = {}
    for row in rows:
        src, marks = row[0], row[1:]
        if len(marks) != len(header):
            raise ValueError(f"row {src} has {len(marks)} marks for {len(header)} columns")
        for dst, mark in zip(header, marks):
            if mark not in (".", "X"):
                raise ValueError(f"row {src}, column {dst}: {mark!r} is neither '.' nor 'X'")
            table[(src, dst)] = mark == "."
    return table


def run_step(state: ClusterState, case: pathlib.Path, step: dict) -> None:
    manifests.apply(state, [(str(case), obj) for obj in step.get("apply") or []])
    for ref in step.get("delete") or []:
        kind, namespace = ref["kind"], ref.get("namespace")
        if kind in manifests.CLUSTER_SCOPED:
            namespace = None
        elif namespace is None:
            namespace = "default"
        assert state.delete(kind, namespace, ref["name"]), f"delete: no {kind} {namespace}/{ref['name']}"


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
    topology = doc.get("topology")
    state = manifests.load([str(case.parent / topology)]) if topology else ClusterState()
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
