"""Policy case files under tests/policy/cases/: finding them, reading their
probe tables, applying their steps. Shared by the model runner and the
datapath runners (emulated, kernel).

A case file (YAML) names a topology (Namespace and Pod manifests, path relative
to the case file) and steps; each step applies and deletes objects, then
probes: for a protocol and destination port, a table whose rows are source
pods and columns destination pods, '.' allowed and 'X' denied. The diagonal (a
pod to itself) is not checked: loopback never reaches a pod's program, and the
e2e tables always mark it allowed. Files without a `steps` key (topologies)
are not cases.
"""
from __future__ import annotations

import pathlib

import yaml

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




def load_topology(case: pathlib.Path, doc: dict) -> ClusterState:
    topology = doc.get("topology")
    return manifests.load([str(case.parent / topology)]) if topology else ClusterState()
