"""The import contracts in pyproject.toml hold (import-linter)."""
import os
import pathlib
import shutil
import subprocess
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# tailor.<name> -> top-level folder, as pyproject.toml maps them (one list).
PACKAGE_DIR = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
FOLDERS = {name.split(".", 1)[1]: folder for name, folder in PACKAGE_DIR.items()}


def test_import_contracts_hold(tmp_path):
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: install the test extras (pip install -e '.[test]')")
    # import-linter cannot follow setuptools' editable finder; give it the
    # `tailor` package as a plain tree of links to the top-level folders.
    (tmp_path / "tailor").mkdir()
    for name, folder in FOLDERS.items():
        (tmp_path / "tailor" / name).symlink_to(ROOT / folder)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr


def test_operator_folder_is_not_importable_as_operator():
    # tailor.operator lives in operator/; a bare `operator` must stay the stdlib's.
    out = subprocess.run(["python3", "-c", "import operator; print(operator.__file__)"],
                         cwd="/", capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in out
