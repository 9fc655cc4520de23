"""report.md from a run's results: the goals first, then a table per section
with its figures and ratios, each plot beside its table.

Called by __main__ after every section has run (and by hand:
`python -m benchmarks.report DIR` rewrites DIR/report.md from
DIR/benchmarks.json). Writes files only into the output folder.
"""
from __future__ import annotations

import json
import pathlib
import sys

from benchmarks import goals, plots

TITLES = {"per_packet": "Per packet (BPF_PROG_TEST_RUN)", "compile": "Compile: tailor against clang",
          "control_plane": "Control plane at scale", "operator": "Operator: API change -> every agent",
          "pod_start": "Pod start: CNI ADD -> programs attached", "data_plane": "Data plane: real traffic"}


def _table(header: list[str], rows: list[list]) -> list[str]:
    def cell(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows] + [""]


def _status(g: dict | None) -> str:
    return "" if g is None else f"{g['status']} ({g['goal']})"


def per_packet(v: dict) -> list[str]:
    out = [f"{v['repeat']:,} repeats per run, {v['statistic']} ({v['runs']}); ns as the kernel reports them "
           "(whole ns). The packet is one the policy allows.", ""]
    rows = [[r["scenario"], r["specialised_ns"], r["generic_ns"], r["floor_ns"],
             f"{r['specialised_insns']} / {r['generic_insns']}", r["specialised/generic"], r["specialised/floor"],
             _status(goals.row_goal("per_packet", r))] for r in v["rows"]]
    return out + _table(["scenario", "specialised ns", "generic ns", "floor ns", "insns spec / gen",
                         "spec/generic", "spec/floor", "goal"], rows)


def compile_(v: dict) -> list[str]:
    out = [f"{v['pods']:,} pods of {v['shapes']} shapes generated and loaded one at a time; clang "
           f"(`{v['clang']}`, `-O2 -target bpf -c`) on equivalent C for {v['clang_samples']} of them "
           "(benchmarks/cgen.py).", ""]
    out += _table(["step", "samples", "p50 ms", "p99 ms"],
                  [[r["step"], r["samples"], r["p50_ms"], r["p99_ms"]] for r in v["rows"]])
    ratio, first = v["clang/generate"], v.get("generate_new_shape") or {}
    out.append(f"clang / generate: p50 {ratio['p50']}×, p99 {ratio['p99']}×. The first pod of each shape "
               f"compiles its template: {first.get('samples')} pods, p50 {first.get('p50_ms')} ms, p99 "
               f"{first.get('p99_ms')} ms (clang / that: p50 "
               f"{(v.get('clang/generate_new_shape') or {}).get('p50')}×); the rest are patched copies.")
    samples = v.get("samples") or []
    if samples:
        insns = [(s["tailor_insns"], s["clang_insns"]) for s in samples if s.get("clang_insns")]
        if insns:
            out.append(f"Instructions (both programs), tailor / clang over the sample: "
                       f"{sum(a for a, _ in insns):,} / {sum(b for _, b in insns):,}.")
    return out + [""]


def control_plane(v: dict) -> list[str]:
    out = [f"{v['policies']:,} policies (997 NetworkPolicies, 2 ANPs, 1 BANP, namespace peers) over "
           f"{v['namespaces']} namespaces, {v['nodes']} nodes; incremental: up to {v['samples']} samples of "
           "each change (event -> affected pods -> plan; n = samples taken, then the median number of pods "
           "replanned), each size in a fresh process. A p99 of fewer than 100 samples is the slowest one.", ""]
    rows = []
    for r in v["rows"]:
        rows.append([r["pods"], r["full_plan_s"]]
                    + [f"{r[f'{c}_p50_ms']} / {r[f'{c}_p99_ms']} (n={r[f'{c}_samples']}, "
                       f"{r[f'{c}_affected_p50']} pods)" for c in ("label_change", "policy_edit", "new_pod")]
                    + [r["map_entries"], r["map_entries_per_node_max"], r["peak_rss_mib"]])
    out += _table(["pods", "full plan s", "label change p50 / p99 ms", "policy edit p50 / p99 ms",
                   "new pod p50 / p99 ms", "map entries (all nodes)", "fullest node", "peak RSS MiB"], rows)
    out += ["Growth curve:", ""]
    out += _table(["pods", "full plan s", "peak RSS MiB"],
                  [[c["pods"], c["full_plan_s"], c["peak_rss_mib"]] for c in sorted(v["curve"], key=lambda c: c["pods"])])
    return out


def operator(v: dict) -> list[str]:
    out = [f"kmock API server ({v['api']}), the operator in a thread, {v['nodes']} {v['agents']} agents; "
           f"one NetworkPolicy selecting every pod; each size in a fresh process, a phase given up after "
           f"{v['phase_cap_s']:g} s.", ""]
    rows = [[r["pods"], r.get("initial_sync_s"), r.get("policy_edit_to_all_agents_s"),
             None if r.get("cni_handoff_s") is None else round(1000 * r["cni_handoff_s"], 1),
             r.get("peer_churn_to_all_agents_s"), r.get("churn_group_updates"), r.get("churn_reloads"),
             r.get("timed_out", "")] for r in v["rows"]]
    return out + _table(["pods", "initial sync s", "policy edit -> all agents s", "CNI hand-off ms",
                         "peer churn -> all agents s", "churn: group updates", "churn: reloads", "note"], rows)


def pod_start(v: dict) -> list[str]:
    out = [f"{v['pods']} pods on {v['nodes']} nodes, kernel lab, the real tailor-cni." +
           (f" {v['note']}." if v.get("note") else ""), ""]
    rows = [[r["control"], r["concurrency"], r["pods"], r["cni_add_p50_ms"], r["cni_add_p99_ms"], r["up_s"],
             _status(goals.row_goal("pod_start", r))] for r in v["rows"]]
    return out + _table(["control", "ADDs at a time", "pods", "p50 ms", "p99 ms", "lab up s", "goal"], rows)


def data_plane(v: dict) -> list[str]:
    out = [f"{v['statistic']}; {v['rounds']} round(s) of {v['seconds']} s. The server is isolated by "
           f"{v['policy_rules']} rules (tailor, nftables); a port outside them is dropped: "
           + ", ".join(f"{k} {'yes' if e else 'no'}" for k, e in v["enforced"].items()) + ".", ""]
    out += _table(["set-up", "path", "throughput Gbit/s", "request/response per s"],
                  [[r["setup"], r["path"], r["throughput_gbps"], r["rr_per_s"]] for r in v["rows"]])
    out += _table(["path", "metric", "tailor/bridge (goal ≥ 1.0)", "tailor/nftables (goal ≥ 1.2)"],
                  [[r["path"], r["metric"], r["tailor/bridge"], r["tailor/nftables"]] for r in v["ratios"]])
    return out


BY_SECTION = {"per_packet": per_packet, "compile": compile_, "control_plane": control_plane,
              "operator": operator, "pod_start": pod_start, "data_plane": data_plane}


def write(results: dict, out: pathlib.Path) -> pathlib.Path:
    meta = results.get("meta", {})
    lines = ["# tailor benchmarks", "",
             f"Measured {meta.get('date', '?')} on commit `{meta.get('commit') or '?'}`"
             + (f" (with uncommitted changes in {', '.join(meta['changed_files'][:5])}"
                f"{'...' if len(meta['changed_files']) > 5 else ''})" if meta.get("changed_files") else "")
             + f", mode `{meta.get('mode', '?')}`, {meta.get('host', '')}; wall time "
             f"{meta.get('wall_s', '?')} s; load average (1, 5, 15 min) at start "
             f"{meta.get('load_average_start')}, at end {meta.get('load_average_end')}.", ""]
    judged = results.get("goals") or goals.judge(results)
    if judged:
        lines += ["## Goals", ""] + _table(["section", "goal", "measured", "status"],
                                           [[g["section"], g["goal"], g["measured"], g["status"]] for g in judged])
    can_plot = plots.available()
    if not can_plot:
        lines += ["(No plots: matplotlib is not installed — scripts/install-bench-deps.sh.)", ""]
    for section, render in BY_SECTION.items():
        if section not in results:
            continue
        value = results[section]
        lines += [f"## {TITLES[section]} (`{section}`)", ""]
        if "skipped" in value or "error" in value:
            lines += [f"{'Skipped' if 'skipped' in value else 'Failed'}: {value.get('skipped') or value.get('error')}", ""]
            continue
        lines += render(value)
        if can_plot and section in plots.BY_SECTION:
            name = plots.BY_SECTION[section](value, str(out))
            if name:
                lines += [f"![{section}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


if __name__ == "__main__":
    folder = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
    print(write(json.loads((folder / "benchmarks.json").read_text()), folder))
