"""The goals the benchmarks are held to (from the issue), judged on a run's
results: each {"section", "goal", "measured", "status"} with status "met",
"missed" or "not measured".

Called by report.py (the report's tables) and __main__ (into the JSON).
Pure: reads the results dict. A goal stated at 10,000 pods is judged on
the 10,000-pod row; a run without one (--quick) judges the largest row it
has and says so in `measured`.
"""
from __future__ import annotations

AT_SCALE = 10_000
POLICY_RATIO, FLOOR_RATIO = 0.7, 1.3
CLANG_RATIO = 100
ADD_P99_MS = 150
EDIT_S, EDIT_AT = 1.0, 1000
PLAN_S, INCREMENTAL_MS, RSS_MIB = 3.0, 50.0, 1024
BRIDGE_RATIO, NFT_RATIO = 1.0, 1.2


def _status(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "missed")


def _goal(section: str, goal: str, measured: str, ok: bool | None) -> dict:
    return {"section": section, "goal": goal, "measured": measured, "status": _status(ok)}


def judge(results: dict) -> list[dict]:
    out = []
    for section, judge_section in (("per_packet", _per_packet), ("compile", _compile),
                                   ("control_plane", _control_plane), ("operator", _operator),
                                   ("pod_start", _pod_start), ("data_plane", _data_plane)):
        value = results.get(section)
        if not isinstance(value, dict) or "rows" not in value:
            continue
        out += judge_section(value)
    return out


def row_goal(section: str, row: dict) -> dict | None:
    """The goal a single row of a table is held to (per_packet, pod_start), or None."""
    if section == "per_packet":
        if row["scenario"].startswith("no-policy"):
            r = row["specialised/floor"]
            return _goal(section, f"specialised ≤ {FLOOR_RATIO} × floor", f"{r} × floor",
                         None if r is None else r <= FLOOR_RATIO)
        r = row["specialised/generic"]
        return _goal(section, f"specialised/generic ≤ {POLICY_RATIO}", f"{r}", None if r is None else r <= POLICY_RATIO)
    if section == "pod_start":
        p99 = row["cni_add_p99_ms"]
        return _goal(section, f"CNI ADD p99 ≤ {ADD_P99_MS} ms", f"{p99} ms", p99 <= ADD_P99_MS)
    return None


def _each_row(section: str, value: dict, name) -> list[dict]:
    """The goal of every row, named by `name(row)`."""
    out = []
    for row in value["rows"]:
        g = row_goal(section, row)
        g["goal"] = f"{name(row)}: {g['goal']}"
        out.append(g)
    return out


def _per_packet(value: dict) -> list[dict]:
    return _each_row("per_packet", value, lambda row: row["scenario"])


def _compile(value: dict) -> list[dict]:
    r = (value.get("clang/generate") or {}).get("p50")
    return [_goal("compile", f"generate ≥ {CLANG_RATIO}× faster than clang (p50)", f"{r}×",
                  None if r is None else r >= CLANG_RATIO)]


def _control_plane(value: dict) -> list[dict]:
    rows = value["rows"]
    if not rows:
        return []
    row = next((r for r in rows if r["pods"] >= AT_SCALE), max(rows, key=lambda r: r["pods"]))
    where = f" at {row['pods']:,} pods" + ("" if row["pods"] >= AT_SCALE else f" (goal is for {AT_SCALE:,})")
    worst = max(row.get(f"{c}_p99_ms", 0) for c in ("label_change", "policy_edit", "new_pod"))
    out = [_goal("control_plane", f"full plan at {AT_SCALE:,} pods ≤ {PLAN_S} s", f"{row['full_plan_s']} s{where}",
                 row["full_plan_s"] <= PLAN_S),
           _goal("control_plane", f"incremental p99 ≤ {INCREMENTAL_MS:g} ms at {AT_SCALE:,} pods",
                 f"{worst} ms (worst of the three){where}", worst <= INCREMENTAL_MS),
           _goal("control_plane", "map entries per node ≤ 2 × pods",
                 f"{row['map_entries_per_node_max']:,} on the fullest node, {row['pods']:,} pods",
                 row["map_entries_per_node_max"] <= 2 * row["pods"]),
           _goal("control_plane", f"peak RSS ≤ 1 GiB at {AT_SCALE:,} pods", f"{row['peak_rss_mib']} MiB{where}",
                 row["peak_rss_mib"] <= RSS_MIB)]
    return out


def _operator(value: dict) -> list[dict]:
    row = next((r for r in value["rows"] if r["pods"] == EDIT_AT), None)
    if row is None:
        return [_goal("operator", f"policy edit → all agents ≤ {EDIT_S:g} s at {EDIT_AT:,} pods",
                      f"no {EDIT_AT:,}-pod run", None)]
    s = row.get("policy_edit_to_all_agents_s")
    if s is None:
        return [_goal("operator", f"policy edit → all agents ≤ {EDIT_S:g} s at {EDIT_AT:,} pods",
                      row.get("timed_out", "not measured"), False if row.get("timed_out") else None)]
    return [_goal("operator", f"policy edit → all agents ≤ {EDIT_S:g} s at {EDIT_AT:,} pods", f"{s} s", s <= EDIT_S)]


def _pod_start(value: dict) -> list[dict]:
    return _each_row("pod_start", value,
                     lambda row: f"control {row['control']}, {row['concurrency']} at a time")


def _data_plane(value: dict) -> list[dict]:
    out = []
    for r in value["ratios"]:
        what = f"{r['path']} {'throughput' if r['metric'] == 'throughput_gbps' else 'request/response'}"
        for key, want in (("tailor/bridge", BRIDGE_RATIO), ("tailor/nftables", NFT_RATIO)):
            v = r[key]
            out.append(_goal("data_plane", f"{what}: {key} ≥ {want}", f"{v}", None if v is None else v >= want))
    return out
