"""A Kubernetes API server for the operator lab and the operator's tests:
kmock's emulator (in-process, real HTTP) plus what kopf and kubectl read.

`tailor lab up --control operator` runs it as a process
(`python3 -m tailor.lab.apiserver --port N --kubeconfig FILE`); the
tests serve it in-process (tests/operator/kubectl_harness.py). It holds
objects in memory only: an API server for a lab, not for a cluster.

kmock 0.8 speaks enough Kubernetes for kopf, not for kubectl. Emulator adds
(each an override below, with why):

- discovery: /api/v1 said `groupVersion: "/v1"`; subresources carried their
  parent's shortNames and categories (kubectl then warns that `pp` "could also
  match" podprograms/status) — served as the API server does;
- lists carry `kind: <Kind>List` and `apiVersion` (kubectl's decoder refuses a
  list without a kind);
- the Table format (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`),
  which `kubectl get` asks for and prints: columns from the CRD's
  additionalPrinterColumns (NODE, FEATURES, ... for PodPrograms), NAME and AGE
  for other resources (tables.py renders them);
- Namespaces over HTTP: kmock parsed /api/v1/namespaces[/NAME] as "namespace
  NAME, no resource", so Namespaces could not be created, listed, watched or
  fetched (an operator watches them for namespaceSelectors);
- a missing object is the API server's 404 (reason NotFound, message
  `podprograms.tailor.dev "x" not found`), which kubectl prints as such;
- labelSelector and fieldSelector on lists (`kubectl describe` lists an
  object's events by fieldSelector; kmock ignored both);
- a CustomResourceDefinition created through the API is served at once and
  marked Established (Helm's crds/ step relies on it);
- a bounded request log (`history`): kmock matched each request against
  every request served so far, so a long-running server slowed down (the
  objects' version histories still grow: a lab's server, not a cluster's);
- on create, the metadata the API server sets: namespace from the URL, uid,
  creationTimestamp, generation and — if absent — resourceVersion "1" (what
  kopf needs for its finalizer patches).

kubectl needs `--validate=false` for create/apply/replace (it would otherwise
download /openapi/v3 schemas, which kmock does not serve).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import signal
import sys
import uuid
from typing import Any

import attrs
import kmock
import yaml
from tailor.lab.apiserver import tables
from tailor.lab.apiserver import resources

# The columns the API server's default table has for resources without printers.
DEFAULT_COLUMNS = (
    resources.PrinterColumn("Age", "date", ".metadata.creationTimestamp"),
)


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
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus what kubectl needs (see the module docstring).

    `columns` maps a resource key ("tailor.dev/v1alpha1/podprograms") to its
    printer columns; resources not in it get the default NAME, AGE table."""

    columns: dict[kmock.resource, tuple[resources.PrinterColumn, ...]] = attrs.field(factory=dict)
    # kmock keeps every request it served and matches each new one against
    # that whole log (its reactions are filters over it): a request then costs
    # O(requests so far), ~0.14 ms more per request served. This keeps the
    # newest `history` requests, plus those still being answered (a reaction
    # is matched by finding its request in the log, maybe after an await).
    history: int | None = 16
    _inflight: dict[int, kmock.Request] = attrs.field(factory=dict, init=False)

    def declare(self, resource: resources.CustomResource) -> None:
        """Declare a custom resource and remember its printer columns."""
        resources.declare(self, resource)
        self.columns[kmock.resource(resource.key)] = resource.printer_columns

    async def __call__(self, raw_request):
        if self.history is not None:
            self._trim(self.history)
        # kmock's path parser takes /api/v1/namespaces[/NAME] for "namespace
        # NAME, no resource" (and fails on the bare list): Namespaces could not
        # be listed, watched, created or fetched over HTTP. Parse them as the
        # `namespaces` resource in a placeholder namespace; _handle drops it.
        path = raw_request.rel_url.path
        if NAMESPACES_PATH.match(path):
            rewritten = path.replace("/api/v1/namespaces", f"/api/v1/namespaces/{PLACEHOLDER}/namespaces", 1)
            # with_path() drops the query; keep it (`?watch=true` makes it a watch).
            url = raw_request.rel_url
            raw_request = raw_request.clone(rel_url=url.with_path(rewritten).with_query(url.query))
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request):
        if request.namespace == PLACEHOLDER:
            request = self._replace(request, attrs.evolve(
                request, namespace=None,
                url=request.url.with_path(request.url.path.replace(f"/{PLACEHOLDER}/namespaces", "", 1))
                                .with_query(request.url.query)))
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            self._stamp(request)
            if request.resource == CRDS:
                self._establish(request.data)
        self._inflight[id(request)] = request
        try:
            return await super()._handle(request)
        except kmock.KubernetesObjectNotFoundError:
            raise not_found(request) from None
        finally:
            self._inflight.pop(id(request), None)

    def _trim(self, keep: int) -> None:
        """Forget all but the newest `keep` requests and those in flight — in
        the log, in each reaction's own log, and the answered errors kmock
        would re-raise at exit (404s and 409s are answers, not failures here).
        Objects keep their history of versions (kmock's ObjectHistory)."""
        if len(self._requests) > keep:
            old = self._requests[:-keep]
            self._requests[:] = [r for r in old if id(r) in self._inflight] + self._requests[-keep:]
        for payload in self._payloads:
            served = getattr(payload, "_requests", None)
            if isinstance(served, list) and len(served) > keep:
                del served[:-keep]
        if self._errors and len(self._errors[-1]) > keep:
            del self._errors[-1][:-keep]

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
        for resource in resources.custom_resources(crd):
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
                             if tables.matches(labels, o.get("metadata", {}).get("labels") or {})]
        if field_selector:
            body["items"] = [o for o in body["items"]
                             if tables.matches(field_selector, tables.fields(o))]
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
        return tables.table(objects, columns, include, datetime.datetime.now(datetime.timezone.utc))


# --- kubeconfig and the runner ------------------------------------------------


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


# --- serving ------------------------------------------------------------------

def declare_all(emulator: Emulator, *, bundled: bool = True, tailor: bool = True,
                admin_policies: bool = True) -> None:
    """The built-in resources (`bundled`), tailor's PodProgram CRD and the
    admin network policy resources, as a cluster with the chart installed has."""
    if bundled:
        emulator.resources.load_bundled()
    if tailor:
        emulator.declare(resources.podprograms())
    if admin_policies:
        resources.declare_admin_policies(emulator)
        for resource in resources.ADMIN_POLICIES:
            emulator.declare(resource)


async def serve(host: str, port: int, kubeconfig_path: str | None, ready=None) -> None:
    """Serve until SIGTERM/SIGINT; write a kubeconfig for it first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Emulator() as emulator, kmock.Server(emulator, host=host, port=port or None) as server:
        declare_all(emulator)
        url = str(server.url).rstrip("/")
        if kubeconfig_path:
            # Written whole, then renamed: a reader never sees half of it.
            with open(kubeconfig_path + ".tmp", "w", encoding="utf-8") as f:
                yaml.safe_dump(kubeconfig(url), f)
            os.replace(kubeconfig_path + ".tmp", kubeconfig_path)
        print(f"serving the Kubernetes API (kmock) on {url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tailor.lab.apiserver",
                                     description="an in-memory Kubernetes API server (kmock) for a lab")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="default: any free port (the kubeconfig says which)")
    parser.add_argument("--kubeconfig", metavar="FILE", help="write a kubeconfig for it here")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.kubeconfig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
