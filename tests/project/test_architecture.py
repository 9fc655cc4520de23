"""The import contracts in pyproject.toml hold (import-linter)."""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: install the test extras (pip install -e '.[test]')")
    run = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_operator_folder_is_not_importable_as_operator():
    # tailor.operator lives in operator/; a bare `operator` must stay the stdlib's.
    out = subprocess.run(["python3", "-c", "import operator; print(operator.__file__)"],
                         cwd="/", capture_output=True, text=True, check=True).stdout
    assert "/work/" not in out and str(ROOT) not in out
