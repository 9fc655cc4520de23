"""kubectl against a kmock emulator: the real kubectl binary, run as a
subprocess, talking HTTP to an in-process fake API server.

Used by test_kubectl.py and by the operator's tests, which check what a user
would see (`kubectl get pp -A`) after the operator wrote its PodPrograms:

    async with kubectl_harness.kube() as kube:
        await kube.emulator.post(...)                 # or run the operator
        result = await kube.kubectl("get", "pp", "-A")
        assert "Loaded" in result.stdout

or as a fixture:

    @pytest_asyncio.fixture
    async def kube_env():
        async with kubectl_harness.kube() as kube:
            yield kube

`kube()` yields a Kube tuple: (emulator, url, kubeconfig
path, kubectl runner); the runner is async because kubectl's requests are
served by the same event loop the test runs on.

kmock 0.8 speaks enough Kubernetes for kopf, not for kubectl. KubectlEmulator
adds what kubectl reads (each an override below, with why):

- discovery: /api/v1 said `groupVersion: "/v1"`; subresources carried their
  parent's shortNames and categories (kubectl then warns that `pp` "could also
  match" podprograms/status) — now served as the API server does;
- lists carry `kind: <Kind>List` and `apiVersion` (kubectl's decoder refuses a
  list without a kind);
- the Table format (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`),
  which `kubectl get` asks for and prints: columns from the CRD's
  additionalPrinterColumns (NODE, FEATURES, ... for PodPrograms), NAME and AGE
  for other resources; `date` cells are ages like "5m", as the server renders;
- Namespaces over HTTP: kmock parsed /api/v1/namespaces[/NAME] as "namespace
  NAME, no resource", so Namespaces could not be created, listed, watched or
  fetched (kubectl fetches one after a NotFound; an operator watches them for
  namespaceSelectors);
- a missing object is the API server's 404 (reason NotFound, message
  `podprograms.tailor.dev "x" not found`), which kubectl prints as such;
- labelSelector and fieldSelector on lists (equality, inequality, existence,
  `in`/`notin`) — `kubectl describe` lists an object's events by fieldSelector,
  kmock ignored both (lists only: watches still stream every object);
- a CustomResourceDefinition created through the API is served at once and
  marked Established (Helm's crds/ step, tests/charts, relies on it);
- on create, the metadata the API server sets: namespace from the URL, uid,
  creationTimestamp, generation and — if absent — resourceVersion "1" (what
  kopf needs for its finalizer patches, see STYLE.md).

kubectl itself needs `--validate=false` for create/apply/replace (it would
otherwise download /openapi/v3 schemas, which kmock does not serve); the
runner adds it to those verbs.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import pathlib
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, NamedTuple

import attrs
import kmock
import yaml

import kube_resources

KUBECTL = shutil.which("kubectl")
# Verbs that validate their input against OpenAPI schemas unless told not to.
VALIDATING_VERBS = frozenset({"create", "apply", "replace"})

# The columns the API server's default table has for resources without printers.
DEFAULT_COLUMNS = (
    kube_resources.PrinterColumn("Age", "date", ".metadata.creationTimestamp"),
)


# --- rendering helpers (pure) -------------------------------------------------

def age(timestamp: str | None, now: datetime.datetime) -> str | None:
    """A timestamp as an age the way the API server prints it: "42s",
    "3m10s", "5h", "12d", "2y30d" — coarser as it gets older."""
    if not timestamp:
        return None
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    seconds = int((now - then).total_seconds())
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 2 * 365:
        return f"{days}d"
    years = days // 365
    return f"{years}y{days % 365}d" if years < 8 and days % 365 else f"{years}y"


_PATH_STEP = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


def lookup(obj: Any, json_path: str) -> Any:
    """The value at a printer column's jsonPath (`.status.node`,
    `.spec.ports[0].port`), or None when any step is missing."""
    position = 0
    path = json_path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    while position < len(path):
        step = _PATH_STEP.match(path, position)
        if step is None:
            raise ValueError(f"unsupported jsonPath {json_path!r}")
        position = step.end()
        key, index = step.groups()
        if key is not None:
            obj = obj.get(key) if isinstance(obj, Mapping) else None
        else:
            obj = obj[int(index)] if isinstance(obj, list) and int(index) < len(obj) else None
        if obj is None:
            return None
    return obj


def cell(value: Any, column: kube_resources.PrinterColumn, now: datetime.datetime) -> Any:
    """One table cell: typed as the column says, None when absent."""
    if value is None:
        return None
    if column.type == "date":
        return age(str(value), now)
    if column.type == "integer":
        return int(value) if isinstance(value, (int, float, str)) and str(value).lstrip("-").isdigit() else None
    if column.type == "number":
        return value if isinstance(value, (int, float)) else None
    if column.type == "boolean":
        return value if isinstance(value, bool) else None
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return str(dict(value))
    return str(value)


def table(objects: Iterable[Mapping[str, Any]], columns: Iterable[kube_resources.PrinterColumn],
          include: str, now: datetime.datetime) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table: NAME then the columns; each row carries the
    object as `include` asks (None, Metadata — the default — or Object)."""
    columns = tuple(columns)
    definitions = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                    "description": "Name must be unique within a namespace."}]
    definitions += [{"name": c.name, "type": c.type, "format": c.format, "priority": c.priority,
                     "description": c.description} for c in columns]
    rows = []
    for obj in objects:
        row: dict[str, Any] = {
            "cells": [obj.get("metadata", {}).get("name")]
                     + [cell(lookup(obj, c.json_path), c, now) for c in columns]}
        if include == "Object":
            row["object"] = dict(obj)
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj.get("metadata", {})}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "1"},
            "columnDefinitions": definitions, "rows": rows}


_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[^\s!=,()]+)\s*"
    r"(?:(?P<op>==|!=|=)\s*(?P<value>[^\s,()]*)"
    r"|(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$")


def _split_requirements(selector: str) -> list[str]:
    """Split on the commas that are not inside `in (...)` value lists."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def matches(selector: str, values: Mapping[str, str]) -> bool:
    """Whether `values` (labels, or flattened fields) satisfy a label- or
    fieldSelector. A selector this cannot parse matches nothing (fail closed)."""
    for requirement in _split_requirements(selector):
        m = _REQUIREMENT.match(requirement)
        if m is None:
            return False
        key, present = m["key"], m["key"] in values
        if m["neg"]:
            if present or m["op"] or m["setop"]:
                return False
        elif m["op"] in ("=", "=="):
            if values.get(key) != m["value"]:
                return False
        elif m["op"] == "!=":
            if values.get(key) == m["value"]:
                return False
        elif m["setop"]:
            choices = {v.strip() for v in m["values"].split(",")}
            if (m["setop"] == "in") != (values.get(key) in choices):
                return False
        elif not present:
            return False
    return True


def fields(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """An object flattened to `a.b.c: value` pairs, as fieldSelectors name them."""
    flat: dict[str, str] = {}
    for key, value in obj.items():
        if isinstance(value, Mapping):
            flat.update(fields(value, f"{prefix}{key}."))
        elif isinstance(value, (str, int, float, bool)):
            flat[f"{prefix}{key}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return flat


def wants_table(request: kmock.Request) -> bool:
    accept = next((v for k, v in request.headers.items() if k.lower() == "accept"), "")
    return any("as=Table" in part for part in accept.split(","))


# --- the emulator -------------------------------------------------------------

NAMESPACES_PATH = re.compile(r"^/api/v1/namespaces(?:/[^/]+(?:/(?:status|finalize))?)?/?$")
PLACEHOLDER = "_"   # not a valid namespace name, so never a real one
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")


def not_found(request: kmock.Request) -> kmock.KubernetesError:
    """The API server's 404 for a missing object: kubectl prints its message
    (`podprograms.tailor.dev "x" not found`)."""
    resource = request.resource
    qualified = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
    return kmock.KubernetesError(
        status=404, reason="NotFound", message=f'{qualified} "{request.name}" not found',
        details={"name": request.name, "group": resource.group, "kind": resource.plural})


@attrs.define(kw_only=True)
class KubectlEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus what kubectl needs (see the module docstring).

    `columns` maps a resource key ("tailor.dev/v1alpha1/podprograms") to its
    printer columns; resources not in it get the default NAME, AGE table."""

    columns: dict[kmock.resource, tuple[kube_resources.PrinterColumn, ...]] = attrs.field(factory=dict)

    def declare(self, resource: kube_resources.CustomResource) -> None:
        """Declare a custom resource and remember its printer columns."""
        kube_resources.declare(self, resource)
        self.columns[kmock.resource(resource.key)] = resource.printer_columns

    async def __call__(self, raw_request):
        # kmock's path parser takes /api/v1/namespaces[/NAME] for "namespace
        # NAME, no resource" (and fails on the bare list): Namespaces could not
        # be listed, watched, created or fetched over HTTP. Parse them as the
        # `namespaces` resource in a placeholder namespace; _handle drops it.
        path = raw_request.rel_url.path
        if NAMESPACES_PATH.match(path):
            rewritten = path.replace("/api/v1/namespaces", f"/api/v1/namespaces/{PLACEHOLDER}/namespaces", 1)
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.with_path(rewritten))
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request):
        if request.namespace == PLACEHOLDER:
            request = self._replace(request, attrs.evolve(
                request, namespace=None,
                url=request.url.with_path(request.url.path.replace(f"/{PLACEHOLDER}/namespaces", "", 1))))
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            self._stamp(request)
            if request.resource == CRDS:
                self._establish(request.data)
        try:
            return await super()._handle(request)
        except kmock.KubernetesObjectNotFoundError:
            raise not_found(request) from None

    def _replace(self, old: kmock.Request, new: kmock.Request) -> kmock.Request:
        """Put `new` where `old` was in the request log (kmock matches reactions
        by the identity of logged requests)."""
        for index, logged in enumerate(self._requests):
            if logged is old:
                self._requests[index] = new
        return new

    def _establish(self, crd: dict[str, Any]) -> None:
        """Serve a CRD created through the API, as the API server does (Helm
        installs crds/ this way, then creates the custom objects), and mark it
        Established and NamesAccepted."""
        for resource in kube_resources.custom_resources(crd):
            self.declare(resource)
        crd["status"] = {
            "acceptedNames": crd["spec"]["names"],
            "storedVersions": [v["name"] for v in crd["spec"]["versions"] if v.get("storage")],
            "conditions": [{"type": kind, "status": "True", "reason": reason, "message": "",
                            "lastTransitionTime": crd["metadata"]["creationTimestamp"]}
                           for kind, reason in (("NamesAccepted", "NoConflicts"),
                                                ("Established", "InitialNamesAccepted"))]}

    @staticmethod
    def _stamp(request: kmock.Request) -> None:
        """Set the metadata the API server sets on create (in place: kmock
        stores the request's body as the object)."""
        meta = request.data.setdefault("metadata", {})
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp",
                        datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        meta.setdefault("generation", 1)
        meta.setdefault("resourceVersion", "1")

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo | None:
        return self.resources[resource] if resource in self.resources else None

    async def _serve_version(self, request: kmock.Request) -> dict[str, Any]:
        body = await super()._serve_version(request)
        # The core group is "v1", not "/v1".
        body["groupVersion"] = body["groupVersion"].lstrip("/")
        # Subresources have no names of their own: no singular, short names or
        # categories (those would make `pp` ambiguous), and only get/patch/update.
        for entry in body["resources"]:
            if "/" in entry["name"]:
                entry.update(singularName="", shortNames=[], categories=[],
                             verbs=["get", "patch", "update"])
        return body

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        body = await super()._serve_list(request)
        labels, field_selector = request.params.get("labelSelector"), request.params.get("fieldSelector")
        if labels:
            body["items"] = [o for o in body["items"]
                             if matches(labels, o.get("metadata", {}).get("labels") or {})]
        if field_selector:
            body["items"] = [o for o in body["items"] if matches(field_selector, fields(o))]
        if wants_table(request):
            return self._table(request, body["items"])
        resource = request.resource
        info = self._info(resource)
        kind = info.kind if info is not None and info.kind else resource.plural.capitalize()
        group_version = f"{resource.group}/{resource.version}".lstrip("/")
        return {"apiVersion": group_version, "kind": f"{kind}List", **body}

    async def _serve_fetch(self, request: kmock.Request) -> dict[str, Any]:
        obj = await super()._serve_fetch(request)
        if wants_table(request):
            return self._table(request, [obj])
        return obj

    def _table(self, request: kmock.Request, objects: list[dict[str, Any]]) -> dict[str, Any]:
        columns = self.columns.get(request.resource, DEFAULT_COLUMNS)
        include = request.params.get("includeObject", "Metadata")
        return table(objects, columns, include, datetime.datetime.now(datetime.timezone.utc))


# --- kubeconfig and the runner ------------------------------------------------

class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


class KubectlError(AssertionError):
    """kubectl exited non-zero where the test expected success."""


def kubeconfig(server: str, namespace: str = "default") -> dict[str, Any]:
    """A kubeconfig for the emulator: plain HTTP, a dummy token."""
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "kmock"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester",
                                                   "namespace": namespace}}],
        "current-context": "kmock",
    }


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
    emulator: KubectlEmulator
    url: str
    kubeconfig: pathlib.Path
    kubectl: Any   # async (*args, check=True, stdin=None) -> Result


@contextlib.asynccontextmanager
async def kube(*, bundled: bool = True, tailor: bool = True,
               admin_policies: bool = True) -> AsyncIterator[Kube]:
    """A running KubectlEmulator with the built-in resources (`bundled`), the
    PodProgram CRD and the admin policy resources, a kubeconfig for it in a
    temporary folder, and a kubectl runner pointed at it."""
    with tempfile.TemporaryDirectory(prefix="tailor-kube-") as tmp:
        async with KubectlEmulator() as emulator, kmock.Server(emulator) as server:
            if bundled:
                emulator.resources.load_bundled()
            if tailor:
                emulator.declare(kube_resources.podprograms())
            if admin_policies:
                kube_resources.declare_admin_policies(emulator)
                for resource in kube_resources.ADMIN_POLICIES:
                    emulator.declare(resource)
            url = str(server.url).rstrip("/")
            config = pathlib.Path(tmp) / "kubeconfig"
            config.write_text(yaml.safe_dump(kubeconfig(url)))
            yield Kube(emulator, url, config, runner(config, pathlib.Path(tmp) / "cache"))
