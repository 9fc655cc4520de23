"""Run the policy case files through the compiled programs: every pod's
programs are compiled, loaded into an engine (the VM, or the kernel with
BPF_PROG_TEST_RUN), and each probe cell becomes a traced connection — first
packet through the source's egress and the destination's ingress program,
the reply back through the other two. No model is consulted. Both the
specialised programs and the generic baseline (everything in maps) run.

And as the upstream suite probes: through each pod's Service
(cases/services.yaml, s-<namespace>-<pod>), the source's program
translating the ClusterIP to the pod before its egress policy judges it,
the destination's reply given the Service's address back."""
from __future__ import annotations

import pathlib

import pytest
import yaml

from case_files import CASE_FILES, CASES_DIR, load_topology, parse_table, run_step
from tailor.datapath import trace
from tailor.operator import tracing
from tailor.operator.cluster.state import ClusterState
from tailor.operator.compiler import build, generic

ENGINES = [pytest.param(("emulated", False), id="emulated"),
           pytest.param(("kernel", False), id="kernel", marks=pytest.mark.kernel),
           pytest.param(("emulated", True), id="emulated-generic"),
           pytest.param(("kernel", True), id="kernel-generic", marks=pytest.mark.kernel)]


def load(state: ClusterState, engine: str, use_generic: bool) -> tuple[tracing.Node, dict]:
    built = build.build(state)
    node = tracing.Node(trace.engine(engine), state)
    try:
        for b in built.values():
            if use_generic:
                node.add_generic(b.spec)
            else:
                node.add(b.spec, b.programs)
    except BaseException:
        node.close()
        raise
    return node, built


def probe(state: ClusterState, node: tracing.Node, built: dict, spec: dict) -> list[str]:
    wrong = []
    for (src, dst), want in parse_table(spec["expect"]).items():
        if src == dst:
            continue
        s, d = state.find_pod(src).ref, state.find_pod(dst).ref
        flow = tracing.flow_between(built[s].spec, built[d].spec, spec["protocol"], int(spec["port"]))
        node.reset_conntrack()
        got = node.trace(s, d, flow)
        if got.allowed != want:
            steps = ", ".join(f"{st.pod} {st.direction}={st.retval}" for st in got.steps)
            wrong.append(f"{src} -> {dst} {spec['protocol']}/{spec['port']}: expected "
                         f"{'allowed' if want else 'denied'}, programs say {steps}")
    return wrong


# The generic program costs the kernel verifier ~100k instructions per load
# (per pod and direction): in the kernel it runs a quarter of the cases; the
# VM, which agrees with the kernel instruction for instruction (the
# differential tests), runs all of them.
KERNEL_GENERIC = set(CASE_FILES[::4])
RUNS = [pytest.param(case, mode.values[0], id=f"{case.relative_to(CASES_DIR)}-{mode.id}",
                     marks=mode.marks)
        for case in CASE_FILES for mode in ENGINES
        if mode.values[0] != ("kernel", True) or case in KERNEL_GENERIC]


@pytest.mark.skipif(not CASE_FILES, reason=f"no policy case files under {CASES_DIR}")
@pytest.mark.parametrize("case, mode", RUNS)
def test_case(case: pathlib.Path, mode: tuple[str, bool]):
    engine, use_generic = mode
    doc = yaml.safe_load(case.read_text())
    state = load_topology(case, doc)
    wrong = []
    for i, step in enumerate(doc["steps"]):
        run_step(state, case, step)
        node, built = load(state, engine, use_generic)
        try:
            for spec in step.get("probes") or []:
                wrong += [f"step {i}: {w}" for w in probe(state, node, built, spec)]
        finally:
            node.close()
    assert not wrong, f"{doc.get('name', case.name)}\n" + "\n".join(wrong[:20])


SERVICES = CASES_DIR / "services.yaml"
SERVICE_ENGINES = [pytest.param("emulated", id="emulated"),
                   pytest.param("kernel", id="kernel", marks=pytest.mark.kernel)]


def probe_services(state: ClusterState, node: tracing.Node, spec: dict, checked: list) -> list[str]:
    from tailor.datapath import packets as pk

    wrong = []
    port, protocol = int(spec["port"]), spec["protocol"]
    for (src, dst), want in parse_table(spec["expect"]).items():
        s, d = state.find_pod(src), state.find_pod(dst)
        svc = state.services.get((d.namespace, f"s-{d.namespace}-{d.name}"))
        if src == dst or svc is None or not any(p.port == port and p.protocol == protocol for p in svc.ports):
            continue                     # a pod the case made, or a port the Service lacks
        node.reset_conntrack()
        checked.append((src, dst))
        got = node.trace_service(s.ref, pk.Flow(s.ip(4), svc.cluster_ip(4), protocol, tracing.CLIENT_PORT, port))
        if got.allowed != want or not got.checksums:
            steps = ", ".join(f"{st.pod} {st.direction}={st.retval}" for st in got.steps)
            wrong.append(f"{src} -> {svc.name} ({dst}) {protocol}/{port}: expected "
                         f"{'allowed' if want else 'denied'}, programs say {steps}"
                         + ("" if got.checksums else " (bad checksums)"))
    return wrong


@pytest.mark.skipif(not CASE_FILES, reason=f"no policy case files under {CASES_DIR}")
@pytest.mark.parametrize("engine", SERVICE_ENGINES)
@pytest.mark.parametrize("case", CASE_FILES, ids=[str(c.relative_to(CASES_DIR)) for c in CASE_FILES])
def test_case_through_services(case: pathlib.Path, engine: str):
    from tailor.operator.cluster import manifests
    from tailor.operator.compiler import servicemaps

    doc = yaml.safe_load(case.read_text())
    state = load_topology(case, doc)
    manifests.apply(state, [(str(SERVICES), o) for o in yaml.safe_load(SERVICES.read_text())["items"]])
    wrong, checked = [], []
    for i, step in enumerate(doc["steps"]):
        run_step(state, case, step)
        node, _ = load(state, engine, False)
        try:
            node.set_services(servicemaps.entries(state)[0])
            for spec in step.get("probes") or []:
                wrong += [f"step {i}: {w}" for w in probe_services(state, node, spec, checked)]
        finally:
            node.close()
    ports = {int(p["port"]) for st in doc["steps"] for p in st.get("probes") or []}
    assert checked or not ports & {80, 81}, "no probe cell went through a Service"
    assert not wrong, f"{doc.get('name', case.name)} through Services\n" + "\n".join(wrong[:20])
