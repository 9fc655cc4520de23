"""`python -m benchmarks`: run the sections in order, write the JSON after
each (an interrupted run keeps what it measured), then the report.

Sections are imported one at a time, when they run, so one that cannot
import (a tool or package missing, tailor mid-change) fails alone.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pathlib
import platform
import sys
import time
import traceback

from benchmarks.common import Progress, Skip

# section (its JSON key) -> module
SECTIONS = {"per_packet": "per_packet", "compile": "compile_time", "control_plane": "control_plane",
            "operator": "operator_sync", "pod_start": "pod_start", "data_plane": "data_plane"}
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="tailor's benchmarks, measured side by side in one run: per packet (specialised vs "
                    "generic vs floor), compile (tailor vs clang), control plane at scale, operator "
                    "latency, pod start, data plane (tailor vs Linux bridge vs nftables). Writes "
                    "DIR/benchmarks.json and DIR/report.md with plots; progress on stderr.",
        epilog="sections: " + ", ".join(SECTIONS) + ". Needs root for the kernel sections; "
               "scripts/install-bench-deps.sh installs clang, iperf3, nftables and matplotlib.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a few minutes (the full run: under an hour)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)   # toy sizes, seconds: the test's
    parser.add_argument("--out", metavar="DIR", default=str(DEFAULT_OUT),
                        help=f"where benchmarks.json, report.md and the plots go (default {DEFAULT_OUT})")
    parser.add_argument("--only", metavar="SECTION[,SECTION]",
                        help="run only these sections (" + ", ".join(SECTIONS) + ")")
    args = parser.parse_args(argv)
    args.sections = list(SECTIONS)
    if args.only:
        args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in args.sections if s not in SECTIONS]
        if unknown:
            parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    return args


def run_section(name: str, mode: str) -> dict:
    say = Progress(name)
    try:
        module = importlib.import_module(f"benchmarks.{SECTIONS[name]}")
        return module.run(mode, say)
    except Skip as e:
        say(f"skipped: {e}")
        return {"skipped": str(e)}
    except KeyboardInterrupt:
        raise
    except Exception as e:   # noqa: BLE001 - recorded, and the run goes on
        say(f"failed: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(e).__name__}: {e}"}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": args.mode, "sections": args.sections, "section_seconds": {},
            "host": f"Linux {platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            # Other work on the machine skews every figure: the load says how much there was.
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    results: dict = {"meta": meta}
    try:
        from benchmarks import adapters
        meta.update(adapters.provenance())
    except Exception as e:   # noqa: BLE001 - tailor does not import: every section will say so
        meta["provenance_error"] = f"{type(e).__name__}: {e}"
    for i, name in enumerate(args.sections, 1):
        print(f"== {name} ({i}/{len(args.sections)}, {args.mode})", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        results[name] = run_section(name, args.mode)
        meta["section_seconds"][name] = round(time.monotonic() - t0, 1)
        meta["wall_s"] = round(time.monotonic() - started, 1)
        _write(results, out)
    from benchmarks import goals, report
    meta["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["goals"] = goals.judge(results)
    _write(results, out)
    path = report.write(results, out)
    print(f"wrote {out / 'benchmarks.json'} and {path} in {meta['wall_s']} s", file=sys.stderr)
    return 1 if any(isinstance(v, dict) and "error" in v for v in results.values()) else 0


def _write(results: dict, out: pathlib.Path) -> None:
    tmp = out / "benchmarks.json.tmp"
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(out / "benchmarks.json")


if __name__ == "__main__":
    sys.exit(main())
