"""The API resources tailor needs, declared in a kmock emulator.

Used by the lab's API server (apiserver.declare_all) and the operator's tests:

    async with kmock.KubernetesEmulator() as k, kmock.Server(k) as srv:
        k.resources.load_bundled()      # v1, apps, networking.k8s.io, ...
        resources.declare_tailor(k)
        resources.declare_admin_policies(k)

The PodProgram resource is read from the chart's CRD file, so the lab and
the tests see the names, short names, categories, subresources and printer
columns a cluster would serve after `helm install` — one source, never a
second copy. The chart ships with a checkout, not with an installed wheel:
podprograms() says so when it is missing.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import kmock
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "charts/tailor/crds"
PODPROGRAMS_CRD = CRD_DIR / "podprograms.tailor.dev.yaml"

# What a CRD's resource answers (the API server serves every custom resource
# with the same verbs); its subresources answer get/patch/update.
CUSTOM_RESOURCE_VERBS = frozenset(
    {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"})


@dataclasses.dataclass(frozen=True)
class PrinterColumn:
    """One of a CRD version's additionalPrinterColumns."""
    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0
    format: str = ""


@dataclasses.dataclass(frozen=True)
class CustomResource:
    """What tests need from one served version of a CRD."""
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    list_kind: str
    namespaced: bool
    short_names: tuple[str, ...]
    categories: tuple[str, ...]
    subresources: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...]

    @property
    def key(self) -> str:
        """The emulator's key: `group/version/plural`."""
        return f"{self.group}/{self.version}/{self.plural}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def read_crd(path: pathlib.Path) -> dict[str, Any]:
    """The CRD document in `path` (one document; comments allowed)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if len(docs) != 1 or docs[0].get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path}: expected exactly one CustomResourceDefinition")
    return docs[0]


def custom_resources(crd: dict[str, Any]) -> list[CustomResource]:
    """One CustomResource per served version of `crd`."""
    spec = crd["spec"]
    names = spec["names"]
    result = []
    for version in spec["versions"]:
        if not version.get("served", False):
            continue
        columns = tuple(
            PrinterColumn(name=c["name"], type=c["type"], json_path=c["jsonPath"],
                          description=c.get("description", ""), priority=c.get("priority", 0),
                          format=c.get("format", ""))
            for c in version.get("additionalPrinterColumns", ()))
        result.append(CustomResource(
            group=spec["group"], version=version["name"], plural=names["plural"],
            singular=names.get("singular", names["plural"]), kind=names["kind"],
            list_kind=names.get("listKind", names["kind"] + "List"),
            namespaced=spec["scope"] == "Namespaced",
            short_names=tuple(names.get("shortNames", ())),
            categories=tuple(names.get("categories", ())),
            subresources=tuple(sorted(version.get("subresources", {}))),
            printer_columns=columns))
    return result


def podprograms() -> CustomResource:
    """The PodProgram resource as the chart defines it (its storage version)."""
    if not PODPROGRAMS_CRD.is_file():
        raise FileNotFoundError(f"the PodProgram CRD is not at {PODPROGRAMS_CRD}: the API emulator "
                                f"reads it from the chart, so run tailor from a checkout (pip install -e .)")
    (served,) = custom_resources(read_crd(PODPROGRAMS_CRD))
    return served


def declare(k: kmock.KubernetesScaffold, resource: CustomResource) -> None:
    """Declare `resource` in the emulator the way the API server serves a CRD."""
    k.resources[resource.key] = kmock.ResourceInfo(
        kind=resource.kind, singular=resource.singular, namespaced=resource.namespaced,
        verbs=set(CUSTOM_RESOURCE_VERBS), shortnames=set(resource.short_names),
        categories=set(resource.categories), subresources=set(resource.subresources))


def declare_tailor(k: kmock.KubernetesScaffold) -> CustomResource:
    """Declare tailor.dev/v1alpha1 podprograms (from the chart's CRD); return it."""
    resource = podprograms()
    declare(k, resource)
    return resource


# The Network Policy API's resources (sigs.k8s.io/network-policy-api), as its
# CRDs name them, all cluster-scoped: AdminNetworkPolicy and
# BaselineAdminNetworkPolicy (v1alpha1, up to v0.1.7), ClusterNetworkPolicy
# (v1alpha2, from v0.2.0).
_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")
_PRIORITY = PrinterColumn("Priority", "integer", ".spec.priority")


def _network_policy_api(version: str, kind: str, short: str, *columns: PrinterColumn) -> CustomResource:
    """One of the Network Policy API's kinds: cluster-scoped, with status; each
    ends in Policy, so its plural ends in policies."""
    return CustomResource(group="policy.networking.k8s.io", version=version, plural=kind.lower()[:-1] + "ies",
                          singular=kind.lower(), kind=kind, list_kind=f"{kind}List", namespaced=False,
                          short_names=(short,), categories=(), subresources=("status",),
                          printer_columns=(*columns, _AGE))


ADMIN_POLICIES = (
    _network_policy_api("v1alpha1", "AdminNetworkPolicy", "anp", _PRIORITY),
    _network_policy_api("v1alpha1", "BaselineAdminNetworkPolicy", "banp"),
    _network_policy_api("v1alpha2", "ClusterNetworkPolicy", "cnp",
                        PrinterColumn("Tier", "string", ".spec.tier"), _PRIORITY),
)

NETWORK_POLICIES = "networking.k8s.io/v1/networkpolicies"


def declare_admin_policies(k: kmock.KubernetesScaffold) -> tuple[CustomResource, ...]:
    """Declare AdminNetworkPolicy, BaselineAdminNetworkPolicy and
    ClusterNetworkPolicy, and NetworkPolicy too when the emulator's resources lack it (no load_bundled())."""
    for resource in ADMIN_POLICIES:
        declare(k, resource)
    if NETWORK_POLICIES not in k.resources:
        k.resources[NETWORK_POLICIES] = kmock.ResourceInfo(
            kind="NetworkPolicy", singular="networkpolicy", namespaced=True,
            verbs=set(CUSTOM_RESOURCE_VERBS), shortnames={"netpol"})
    return ADMIN_POLICIES
