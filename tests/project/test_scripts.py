"""The project's shell scripts pass shellcheck (Debian's; scripts/install-deps.sh
--test installs it): a quoting slip in an install script fails on someone
else's machine, not on ours."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), *ROOT.glob("kind/*.sh"), ROOT / ".ci/run"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck_clean(script):
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but shellcheck is missing (scripts/install-deps.sh --test installs it)")
        pytest.skip("needs shellcheck (apt-get install shellcheck)")
    got = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert got.returncode == 0, got.stdout
