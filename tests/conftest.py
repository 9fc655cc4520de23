"""Shared test policy.

Tests marked `kernel` need root and bpffs. Without them they skip with the
reason; with CI=true a missing prerequisite fails the test instead, so CI can
never pass by skipping the kernel half of the suite.
"""
from __future__ import annotations

import os
import sys

import pytest

BPFFS = "/sys/fs/bpf"

# The console scripts (tailor, lint-imports, pyinstaller) sit beside the
# interpreter running the suite — a virtual environment's bin — whether or
# not that environment is activated.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


def _kernel_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (bpf() and netlink)"
    if not os.path.ismount(BPFFS):
        return f"needs bpffs mounted at {BPFFS} (mount -t bpf bpf {BPFFS})"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _kernel_unavailable()
    if reason is None:
        return
    in_ci = os.environ.get("CI") == "true"
    for item in items:
        if "kernel" not in item.keywords:
            continue
        if in_ci:
            item.add_marker(pytest.mark.usefixtures("_kernel_required_in_ci"))
        else:
            item.add_marker(pytest.mark.skip(reason=f"kernel test {reason}"))


@pytest.fixture
def _kernel_required_in_ci():
    pytest.fail(f"CI=true but kernel tests cannot run: {_kernel_unavailable()}")


def pytest_terminal_summary(terminalreporter):
    """Print what the differential tests compared, for the closing note."""
    import sys
    module = sys.modules.get("differential")
    TOTALS = getattr(module, "TOTALS", None)
    if TOTALS and TOTALS["programs"]:
        terminalreporter.write_line(
            f"differential VM vs kernel: {TOTALS['programs']} programs, {TOTALS['runs']} runs, "
            f"{TOTALS['mismatches']} mismatches")
