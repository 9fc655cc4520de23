"""The report's PNG plots, written beside report.md.

Called by report.py. Each function takes a section's results and the
output folder and returns the file name it wrote, or None when there is
nothing to plot. matplotlib is optional (pip install -e '.[bench]'):
`available()` says whether it is there; without it the report has tables only.
"""
from __future__ import annotations

import os


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")           # files only: no display on a server
    import matplotlib.pyplot as plt
    return plt


def _bars(out: str, name: str, title: str, labels: list[str], series: dict[str, list], goals: dict[str, float],
          ylabel: str, log: bool = False) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=label)
    for (label, y), style in zip(goals.items(), ("--", ":", "-.")):
        ax.axhline(y, linestyle=style, linewidth=1, color="dimgrey", label=label)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)
    return name


def per_packet(value: dict, out: str) -> str | None:
    rows = value.get("rows") or []
    if not rows:
        return None
    return _bars(out, "per_packet.png", "Per packet: specialised program against generic and floor",
                 [r["scenario"] for r in rows],
                 {"specialised/generic": [r["specialised/generic"] for r in rows],
                  "specialised/floor": [r["specialised/floor"] for r in rows]},
                 {"goal with policy ≤ 0.7 (spec/generic)": 0.7, "goal without policy ≤ 1.3 (spec/floor)": 1.3},
                 "ratio")


def compile_(value: dict, out: str) -> str | None:
    rows = value.get("rows") or []
    if not rows:
        return None
    return _bars(out, "compile.png", "Per pod: tailor generate and load, clang compile (log scale)",
                 [r["step"] for r in rows], {"p50 ms": [r["p50_ms"] for r in rows],
                                             "p99 ms": [r["p99_ms"] for r in rows]}, {}, "ms", log=True)


def control_plane(value: dict, out: str) -> str | None:
    curve = sorted(value.get("curve") or [], key=lambda c: c["pods"])
    if not curve:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c["pods"] for c in curve], [c["full_plan_s"] for c in curve], marker="o", label="full plan (s)")
    ax.plot([10_000], [3.0], marker="*", markersize=12, linestyle="none", color="green",
            label="goal: ≤ 3 s at 10,000 pods")
    ax.set_xlabel(f"pods ({value.get('policies', '?')} policies, {value.get('nodes', '?')} nodes)")
    ax.set_ylabel("full plan (s)")
    ax.set_title("Control plane: full plan time as the cluster grows")
    rss = ax.twinx()
    rss.plot([c["pods"] for c in curve], [c["peak_rss_mib"] for c in curve], marker="s", color="tab:orange",
             linestyle=":", label="peak RSS (MiB)")
    rss.set_ylabel("peak RSS (MiB)")
    lines = ax.get_legend_handles_labels(), rss.get_legend_handles_labels()
    ax.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "control_plane.png"), dpi=110)
    plt.close(fig)
    return "control_plane.png"


def pod_start(value: dict, out: str) -> str | None:
    rows = value.get("rows") or []
    if not rows:
        return None
    return _bars(out, "pod_start.png", "CNI ADD -> programs attached",
                 [f"{r['control']}, {r['concurrency']} at a time" for r in rows],
                 {"p50 ms": [r["cni_add_p50_ms"] for r in rows], "p99 ms": [r["cni_add_p99_ms"] for r in rows]},
                 {"goal p99 ≤ 150 ms": 150}, "ms")


def data_plane(value: dict, out: str) -> str | None:
    ratios = value.get("ratios") or []
    if not ratios:
        return None
    return _bars(out, "data_plane.png", "Data plane: tailor against a Linux bridge and nftables",
                 [f"{r['path']} {'throughput' if r['metric'] == 'throughput_gbps' else 'req/resp'}" for r in ratios],
                 {"tailor/bridge": [r["tailor/bridge"] for r in ratios],
                  "tailor/nftables": [r["tailor/nftables"] for r in ratios]},
                 {"goal ≥ 1.0 × bridge": 1.0, "goal ≥ 1.2 × nftables": 1.2}, "ratio")


BY_SECTION = {"per_packet": per_packet, "compile": compile_, "control_plane": control_plane,
              "pod_start": pod_start, "data_plane": data_plane}
