"""Install the `tailor` CNI plugin into a CNI bin dir as a script that starts fast.

Called by the lab (lab/cni.py installs into its run dir, as a node's
installer would into /opt/cni/bin) and by a node's installer with Python:

    python3 -m tailor.datapath.cni.install /opt/cni/bin [--python /usr/bin/python3]

Why not the `tailor-cni` console script: the runtime starts the plugin once
per pod event, and a plain `python3` spends most of its start-up in `site`
(every .pth file of site-packages, an editable install's import hook): 30 ms
of CPU here against 7 ms for `python3 -I -S`, and 120 ms against 18 ms when
eight pods start at once on two cores. The plugin needs only the standard
library, so the installed script runs its interpreter with `-IS` (isolated:
no PYTHON* variables, no user or site packages) and puts its own copy of the
plugin's three modules on sys.path:

    <dir>/tailor                            #!<python> -IS, runs main.main()
    <dir>/.tailor-cni-<hash>/tailor/...     datapath/cni/{__init__,main,protocol}.py
                                            (compiled), empty package __init__s

The copy is named by the hash of its contents and made beside the script
under a temporary name, then renamed; the script is replaced by rename
last. A runtime running the plugin during an upgrade so meets the old
plugin or the new one, whole. Copies no script names any more are removed.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import py_compile
import re
import shutil
import sys

NAME = "tailor"                  # the netconf's "type"
MODULES = ("__init__.py", "main.py", "protocol.py")
COPY_PREFIX = ".tailor-cni-"
_COPY_NAME = re.compile(re.escape(COPY_PREFIX) + "[0-9a-f]{16}")
# Linux reads at most this much of a script's `#!` line (BINPRM_BUF_SIZE).
SHEBANG_MAX = 255

SCRIPT = """#!{python} -IS
# The tailor CNI plugin, installed by tailor.datapath.cni.install from
# {source}. -IS: the plugin needs only the standard library, and site's
# start-up costs more than the whole plugin.
import sys
sys.path.insert(0, {copy!r})
from tailor.datapath.cni.main import main
sys.exit(main())
"""


class InstallError(Exception):
    """The plugin cannot be installed as asked (the message says why)."""


def install(bin_dir: str, *, python: str | None = None, name: str = NAME) -> str:
    """Install (or refresh) the plugin as `<bin_dir>/<name>`; returns its path.
    Idempotent: installing the same sources again changes nothing."""
    python = python or sys.executable
    line = f"#!{python} -IS"
    if not os.path.isabs(python) or any(c.isspace() for c in python):
        raise InstallError(f"interpreter {python!r}: a #! line needs an absolute path without spaces")
    if len(line.encode()) > SHEBANG_MAX:
        raise InstallError(f"interpreter path is too long for a #! line ({len(line)} > {SHEBANG_MAX})")
    os.makedirs(bin_dir, mode=0o755, exist_ok=True)
    source = os.path.dirname(os.path.abspath(__file__))
    contents = {m: _read(os.path.join(source, m)) for m in MODULES}
    digest = hashlib.sha256(b"\0".join(contents[m] for m in MODULES) + python.encode()).hexdigest()
    copy = os.path.join(os.path.abspath(bin_dir), COPY_PREFIX + digest[:16])
    if not os.path.isdir(copy):
        _make_copy(copy, contents)
    script = os.path.join(bin_dir, name)
    _write_atomic(script, SCRIPT.format(python=python, source=source, copy=copy).encode(), 0o755)
    _remove_stale_copies(bin_dir, keep=copy)
    return script


def _make_copy(copy: str, contents: dict[str, bytes]) -> None:
    tmp = f"{copy}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    package = os.path.join(tmp, "tailor", "datapath", "cni")
    os.makedirs(package)
    # Empty parents: the real tailor/datapath/__init__.py is not the plugin's business.
    for parent in (os.path.join(tmp, "tailor"), os.path.join(tmp, "tailor", "datapath")):
        _write(os.path.join(parent, "__init__.py"), b"")
    for module, data in contents.items():
        _write(os.path.join(package, module), data)
    # Compiled now: the runtime may run the plugin where __pycache__ cannot be written.
    for root, _, files in os.walk(tmp):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                py_compile.compile(path, cfile=importlib.util.cache_from_source(path), doraise=True)
    try:
        os.rename(tmp, copy)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(copy):   # not another installer that got there first
            raise


def _remove_stale_copies(bin_dir: str, keep: str) -> None:
    """Copies no script in bin_dir names (older versions). A plugin started
    before its script was replaced has imported its modules within
    milliseconds of starting, so removing its copy does not hurt it. Another
    installer's temporary copy (`.tmp<pid>`) is left alone."""
    heads = [_read(e.path, 4096) for e in os.scandir(bin_dir)
             if e.is_file() and not e.name.startswith(".")]
    for entry in os.scandir(bin_dir):
        if (entry.is_dir() and _COPY_NAME.fullmatch(entry.name) and entry.path != keep
                and not any(entry.name.encode() in head for head in heads)):
            shutil.rmtree(entry.path, ignore_errors=True)


def _read(path: str, limit: int = -1) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    _write(tmp, data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tailor.datapath.cni.install",
                                description="install the tailor CNI plugin into a CNI bin dir")
    p.add_argument("bin_dir", help="the runtime's CNI bin dir, e.g. /opt/cni/bin")
    p.add_argument("--python", help="interpreter for the plugin (default: this one)")
    p.add_argument("--name", default=NAME, help="file name, the netconf's type (default %(default)s)")
    args = p.parse_args(argv)
    try:
        print(install(args.bin_dir, python=args.python, name=args.name))
    except (InstallError, OSError) as e:
        print(f"tailor cni install: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
