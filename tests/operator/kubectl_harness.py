"""kubectl against the API emulator: the real kubectl binary, run as a
subprocess, talking HTTP to an in-process fake API server
(tailor.lab.apiserver: kmock plus what kubectl reads).

Used by test_kubectl.py and tests/charts, which check what a user would see
(`kubectl get pp -A`) after the operator wrote its PodPrograms:

    async with kubectl_harness.kube() as kube:
        await kube.emulator.post(...)                 # or run the operator
        result = await kube.kubectl("get", "pp", "-A")
        assert "Loaded" in result.stdout

`kube()` yields a Kube tuple: (emulator, url, kubeconfig path, kubectl
runner); the runner is async because kubectl's requests are served by the
same event loop the test runs on. It adds `--validate=false` to
create/apply/replace (kmock serves no /openapi schemas).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import kmock
import yaml
from tailor.lab.apiserver import Emulator, declare_all, kubeconfig

KUBECTL = shutil.which("kubectl")
# Verbs that validate their input against OpenAPI schemas unless told not to.
VALIDATING_VERBS = frozenset({"create", "apply", "replace"})


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


class KubectlError(AssertionError):
    """kubectl exited non-zero where the test expected success."""


def runner(config: pathlib.Path, cache: pathlib.Path, timeout: float = 30.0):
    """An async `kubectl(*args, check=True, stdin=None) -> Result`."""
    async def kubectl(*args: str, check: bool = True, stdin: str | None = None) -> Result:
        if KUBECTL is None:
            raise FileNotFoundError("kubectl is not installed")
        extra = ["--validate=false"] if args and args[0] in VALIDATING_VERBS else []
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env["HOME"] = str(cache.parent)   # nothing read from or written to the user's ~/.kube
        process = await asyncio.create_subprocess_exec(
            KUBECTL, f"--kubeconfig={config}", f"--cache-dir={cache}", "--request-timeout=10s",
            *args, *extra,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        try:
            out, err = await asyncio.wait_for(
                process.communicate(stdin.encode() if stdin is not None else None), timeout)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            raise KubectlError(f"kubectl {' '.join(args)}: no answer in {timeout}s")
        result = Result(process.returncode, out.decode(), err.decode())
        if check and result.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result
    return kubectl


class Kube(NamedTuple):
    emulator: Emulator
    url: str
    kubeconfig: pathlib.Path
    kubectl: Any   # async (*args, check=True, stdin=None) -> Result


@contextlib.asynccontextmanager
async def kube(*, bundled: bool = True, tailor: bool = True,
               admin_policies: bool = True) -> AsyncIterator[Kube]:
    """A running Emulator with the built-in resources (`bundled`), the
    PodProgram CRD and the admin policy resources, a kubeconfig for it in a
    temporary folder, and a kubectl runner pointed at it."""
    with tempfile.TemporaryDirectory(prefix="tailor-kube-") as tmp:
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            declare_all(emulator, bundled=bundled, tailor=tailor, admin_policies=admin_policies)
            url = str(server.url).rstrip("/")
            config = pathlib.Path(tmp) / "kubeconfig"
            config.write_text(yaml.safe_dump(kubeconfig(url)))
            yield Kube(emulator, url, config, runner(config, pathlib.Path(tmp) / "cache"))
