"""tailor's image, built once per test session with the project's own
script (scripts/build-image.sh: mmdebstrap + podman, no registry), for the
tests that run it. Without podman or mmdebstrap they skip, except with
CI=true, where scripts/install-deps.sh --test installs both."""
from __future__ import annotations

import os
import subprocess

import pytest

from imagetools import ROOT, missing_tools


@pytest.fixture(scope="session")
def image() -> str:
    missing_tools("podman", "mmdebstrap", "runc")
    built = subprocess.run([os.path.join(ROOT, "scripts", "build-image.sh")], cwd=ROOT,
                           capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stderr[-3000:]
    return built.stdout.strip().splitlines()[-1]
