"""Run the policy case files through the compiled programs: every pod's
programs are compiled, loaded into an engine (the VM, or the kernel with
BPF_PROG_TEST_RUN), and each probe cell becomes a traced connection — first
packet through the source's egress and the destination's ingress program,
the reply back through the other two. No model is consulted."""
from __future__ import annotations

import pathlib

import pytest
import yaml

from case_files import CASE_FILES, CASES_DIR, load_topology, parse_table, run_step
from tailor.datapath import trace
from tailor.operator.cluster.state import ClusterState
from tailor.operator.compiler import build

ENGINES = [pytest.param("emulated", id="emulated"),
           pytest.param("kernel", id="kernel", marks=pytest.mark.kernel)]


def probe(state: ClusterState, engine: str, spec: dict) -> list[str]:
    built = build.build(state)
    node = trace.Node(trace.engine(engine))
    wrong = []
    try:
        for b in built.values():
            node.add(b.spec, b.programs)
        for (src, dst), want in parse_table(spec["expect"]).items():
            if src == dst:
                continue
            s, d = state.find_pod(src).ref, state.find_pod(dst).ref
            flow = trace.flow_between(built[s].spec, built[d].spec, spec["protocol"], int(spec["port"]))
            node.reset_conntrack()
            got = node.trace(s, d, flow)
            if got.allowed != want:
                steps = ", ".join(f"{st.pod} {st.direction}={st.retval}" for st in got.steps)
                wrong.append(f"{src} -> {dst} {spec['protocol']}/{spec['port']}: expected "
                             f"{'allowed' if want else 'denied'}, programs say {steps}")
    finally:
        node.close()
    return wrong


@pytest.mark.skipif(not CASE_FILES, reason=f"no policy case files under {CASES_DIR}")
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CASE_FILES, ids=[str(p.relative_to(CASES_DIR)) for p in CASE_FILES])
def test_case(case: pathlib.Path, engine: str):
    doc = yaml.safe_load(case.read_text())
    state = load_topology(case, doc)
    wrong = []
    for i, step in enumerate(doc["steps"]):
        run_step(state, case, step)
        for spec in step.get("probes") or []:
            wrong += [f"step {i}: {w}" for w in probe(state, engine, spec)]
    assert not wrong, f"{doc.get('name', case.name)}\n" + "\n".join(wrong[:20])
