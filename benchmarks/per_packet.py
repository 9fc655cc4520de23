"""per_packet: what one packet costs in the kernel, specialised against
generic against the floor, measured side by side in one run.

For each scenario (clusters.scenarios()): the subject pod's compiled
program, the generic program (every feature, the same policy in its maps)
and the floor (`r0 = TC_ACT_OK; exit`) each run the scenario's packet —
one the policy allows, so every rule the program holds is walked — with
BPF_PROG_TEST_RUN, `repeat` times per run; the three take turns, run after
run, so a slow moment of the machine hits all three; the figure is the
median of the runs. Each program's maps (and the node's identity maps) are
filled by tailor's tracer (adapters.KernelNode), as a node's agent fills them.
"""
from __future__ import annotations

from benchmarks import adapters, clusters
from benchmarks.common import Skip, median, pick, ratio

REPEAT = {"full": 1_000_000, "quick": 100_000, "smoke": 1_000}
RUNS = {"full": 7, "quick": 5, "smoke": 5}
SMOKE_SCENARIOS = ("no-policy-v4", "ingress-1-rule")
WITHOUT_POLICY = ("no-policy-v4", "no-policy-dual")


def run(mode: str, say) -> dict:
    reason = adapters.kernel_unavailable()
    if reason:
        raise Skip(f"BPF_PROG_TEST_RUN {reason}")
    repeat, runs = pick(mode, REPEAT), pick(mode, RUNS)
    chosen = [s for s in clusters.scenarios() if mode != "smoke" or s.name in SMOKE_SCENARIOS]
    rows = []
    for i, scenario in enumerate(chosen, 1):
        say(f"{scenario.name} ({repeat:,} repeats x {runs} runs)", i, len(chosen))
        rows.append(measure(scenario, repeat, runs))
    return {"repeat": repeat, "runs": runs, "statistic": "median of runs", "rows": rows,
            "without_policy": list(WITHOUT_POLICY)}


def measure(scenario: clusters.Scenario, repeat: int, runs: int) -> dict:
    state = adapters.state_of(scenario.objects)
    spec, programs = adapters.generate(state, scenario.subject)
    packet = adapters.frame(*scenario.flow)
    with adapters.kernel_node(state) as own, adapters.kernel_node(state) as gen, \
            adapters.floor_program() as floor:
        own.add(spec, programs)
        gen.add_generic(spec)
        for node in (own, gen):
            node.set_services(state)
        gen_programs = gen.programs(scenario.subject)
        contenders = {"specialised": own.loaded(scenario.subject, scenario.direction),
                      "generic": gen.loaded(scenario.subject, scenario.direction),
                      "floor": floor}
        for name in ("specialised", "generic"):
            _, retval = adapters.test_run(contenders[name], packet, 1)
            if retval not in adapters.PASSING:
                # A dropped packet skips the rules: the figure would not be the rule path.
                raise RuntimeError(f"{scenario.name}: the {name} program drops the scenario's packet "
                                   f"(retval {retval}); the scenario must be one the policy allows")
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(runs):
            for name, loaded in contenders.items():
                times[name].append(adapters.test_run(loaded, packet, repeat)[0])
        verified = {name: adapters.verified_insns(contenders[name]) for name in ("specialised", "generic")}
    ns = {name: median(values) for name, values in times.items()}
    return {"scenario": scenario.name, "about": scenario.about, "direction": scenario.direction,
            "features": adapters.features(programs),
            "specialised_ns": ns["specialised"], "generic_ns": ns["generic"], "floor_ns": ns["floor"],
            "specialised_insns": adapters.instructions(programs, scenario.direction),
            "generic_insns": adapters.instructions(gen_programs, scenario.direction),
            "specialised_verified_insns": verified["specialised"],
            "generic_verified_insns": verified["generic"],
            "specialised/generic": ratio(ns["specialised"], ns["generic"]),
            "specialised/floor": ratio(ns["specialised"], ns["floor"]),
            "runs_ns": times}
