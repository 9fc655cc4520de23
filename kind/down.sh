#!/usr/bin/env bash
# Deletes the kind cluster kind/up.sh made (its nodes, the image loaded into
# them, the kubectl context kind-NAME):
#   kind/down.sh
# TAILOR_KIND_CLUSTER names it (default tailor); KIND_EXPERIMENTAL_PROVIDER
# (docker or podman) as for kind/up.sh. Nothing to delete is not an error.
set -euo pipefail

cluster="${TAILOR_KIND_CLUSTER:-tailor}"

die() { echo "kind/down.sh: error: $*" >&2; exit 1; }

command -v kind >/dev/null 2>&1 ||
    die "kind is not on PATH (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
provider="${KIND_EXPERIMENTAL_PROVIDER:-docker}"
command -v "$provider" >/dev/null 2>&1 ||
    die "$provider is not on PATH: kind's nodes run in it (KIND_EXPERIMENTAL_PROVIDER=docker or podman)"

clusters="$(kind get clusters 2>/dev/null)" || die "kind get clusters failed (is $provider running?)"
if ! grep -qxF "$cluster" <<<"$clusters"; then
    echo "kind/down.sh: no kind cluster $cluster: nothing to delete" >&2
    exit 0
fi
echo "==> deleting kind cluster $cluster" >&2
kind delete cluster --name "$cluster"
echo "kind/down.sh: kind cluster $cluster deleted" >&2
