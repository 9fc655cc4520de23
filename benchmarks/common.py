"""What every section shares: progress on stderr, percentiles, skips, and
the run's sizes (full, --quick, --smoke).

Called by every section module and by __main__. No tailor imports here:
those live in adapters.py only.
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import time

MODES = ("full", "quick", "smoke")


class Skip(Exception):
    """The section cannot run here (no root, a tool missing); the message
    says why and what to install. Recorded as {"skipped": reason}."""


class Progress:
    """Progress lines on stderr: `[section] scenario n/total (elapsed)`.
    stdout stays free for a worker's JSON answer (control_plane)."""

    def __init__(self, section: str):
        self.section = section
        self.started = time.monotonic()

    def __call__(self, what: str, done: int | None = None, total: int | None = None) -> None:
        count = f" {done}/{total}" if done is not None and total else ""
        print(f"[{self.section} {time.monotonic() - self.started:6.1f}s] {what}{count}",
              file=sys.stderr, flush=True)

    def every(self, what: str, done: int, total: int, parts: int = 10) -> None:
        """Report about `parts` times over a loop of `total`, not every step."""
        if done == total or done == 1 or done % max(1, total // parts) == 0:
            self(what, done, total)


def percentile(values, pct: float) -> float:
    """The nearest-rank percentile: always a value that was measured, never
    an interpolation (so p99 of fewer than 100 samples is the largest)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[min(len(ordered), int(rank)) - 1]


def median(values) -> float:
    return statistics.median(values)


def ratio(a: float, b: float, digits: int = 2) -> float | None:
    """a / b rounded, or None when b is zero or missing (never a fake 0 or inf)."""
    if not a or not b:
        return None
    return round(a / b, digits)


def ms(seconds: float, digits: int = 2) -> float:
    return round(1000 * seconds, digits)


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Skip(f"{what} needs root (network namespaces, eBPF)")


def need_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Skip(f"{name} is not installed: scripts/install-bench-deps.sh (apt-get install {package})")
    return path


def pick(mode: str, sizes: dict):
    """The value for `mode` from {"full": ..., "quick": ..., "smoke": ...}."""
    return sizes[mode]
