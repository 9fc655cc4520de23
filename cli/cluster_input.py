"""Shared by the subcommands that read manifests (`connectivity`,
`programs`): the -f option, loading with errors that name the file and
object, and progress lines for long runs."""
from __future__ import annotations

import sys
import time

from tailor.cli import usage


def add_files_option(parser) -> None:
    parser.add_argument("-f", "--filename", action="append", required=True, metavar="PATH",
                        help="manifest file or folder (repeatable): Namespaces, Pods, workloads, "
                             "NetworkPolicies, AdminNetworkPolicies, BaselineAdminNetworkPolicy, "
                             "ClusterNetworkPolicies (kubectl get -o json|yaml output too)")


def load_state(paths: list[str]):
    # The manifest reader (yaml, the cluster model) only when a command runs.
    from tailor.operator.cluster import manifests
    from tailor.operator.errors import ManifestError

    try:
        state = manifests.load(paths)
    except ManifestError as e:
        raise usage.UsageError(str(e)) from None
    for note in state.warnings:
        print(f"tailor: note: {note}", file=sys.stderr)
    _allocate_cluster_ips(state)
    return state


def _allocate_cluster_ips(state) -> None:
    """Services written without a ClusterIP get one as the lab allocates
    them (a cluster would have): Service connections need an address."""
    import dataclasses

    from tailor.lab import plan

    for entry in plan.services(state):
        svc = state.services[(entry["namespace"], entry["name"])]
        if not svc.cluster_ips:
            state.add_service(dataclasses.replace(svc, cluster_ips=tuple(entry["cluster_ips"])))


class Progress:
    """Prints `what: done/total` to stderr at most once a second, and the
    final count, but only for runs long enough to need it."""

    def __init__(self, what: str, quiet_below: int = 50):
        self.what = what
        self.quiet_below = quiet_below
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if total < self.quiet_below:
            return
        now = time.monotonic()
        if done == total or now - self.last >= 1.0:
            self.last = now
            end = "\n" if done == total else "\r"
            print(f"{self.what}: {done}/{total}", end=end, file=sys.stderr, flush=True)
