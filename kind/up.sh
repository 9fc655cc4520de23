#!/usr/bin/env bash
# A kind cluster running tailor, checked end to end:
#   kind/up.sh
# 1. creates the cluster from kind/kind-config.yaml (no default CNI, three
#    nodes) unless one of that name exists;
# 2. builds the image (scripts/build-image.sh, podman) and loads it into the
#    nodes (kind load image-archive): no registry involved;
# 3. installs or upgrades the chart (charts/tailor, release tailor in
#    kube-system) with that image, and waits for the agents and the nodes;
# 4. smoke test in namespace tailor-smoke: a client reaches a server pod,
#    a NetworkPolicy denying the server's ingress blocks it, deleting the
#    policy lets it through again; then `kubectl get pp -A`.
# Needs kind, docker (or podman with KIND_EXPERIMENTAL_PROVIDER=podman),
# podman (the image build), kubectl, helm and timeout (coreutils).
# Environment:
#   TAILOR_KIND_CLUSTER   the cluster's name (default tailor; kubectl context kind-NAME)
#   KIND_EXPERIMENTAL_PROVIDER   docker (default) or podman, as kind reads it
#   TAILOR_SMOKE_IMAGE    the smoke test's image: agnhost, or a copy of it
#                         (default registry.k8s.io/e2e-test-images/agnhost:2.53)
#   TAILOR_SMOKE_TIMEOUT  seconds each expected verdict may take to hold (default 60)
# kind/down.sh deletes the cluster.
set -euo pipefail

# The repository's root, with builtins only: the tool check below runs first
# and must work with any PATH.
case "${BASH_SOURCE[0]}" in
    */*) here="${BASH_SOURCE[0]%/*}" ;;
    *) here=. ;;
esac
root="$(cd "$here/.." && pwd)"

cluster="${TAILOR_KIND_CLUSTER:-tailor}"
context="kind-$cluster"
release=tailor
namespace=kube-system
repository=localhost/tailor
smoke_ns=tailor-smoke
smoke_image="${TAILOR_SMOKE_IMAGE:-registry.k8s.io/e2e-test-images/agnhost:2.53}"
smoke_timeout="${TAILOR_SMOKE_TIMEOUT:-60}"
connect_timeout=3
step="starting"
tmp=""

info() { echo "kind/up.sh: $*" >&2; }
progress() { step="$*"; echo "==> $*" >&2; }
die() { echo "kind/up.sh: error: $*" >&2; exit 1; }

# What each tool is for, in the message when it is missing.
why() {
    case "$1" in
        kind) echo "creates the cluster (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)" ;;
        docker) echo "runs kind's nodes (or set KIND_EXPERIMENTAL_PROVIDER=podman)" ;;
        podman) echo "builds the image (scripts/build-image.sh) and with KIND_EXPERIMENTAL_PROVIDER=podman runs kind's nodes (apt-get install podman runc mmdebstrap)" ;;
        kubectl) echo "talks to the cluster (https://kubernetes.io/docs/tasks/tools/)" ;;
        helm) echo "installs the chart (https://helm.sh/docs/intro/install/)" ;;
        timeout) echo "bounds each smoke-test attempt (coreutils)" ;;
    esac
}

# Every tool up front, each missing one named.
check_tools() {
    local provider="${KIND_EXPERIMENTAL_PROVIDER:-docker}" tool missing=0
    case "$provider" in
        docker | podman) ;;
        *) die "KIND_EXPERIMENTAL_PROVIDER=$provider: this script supports docker or podman" ;;
    esac
    local -a tools=(kind "$provider" kubectl helm timeout)
    # The image is built with podman whichever runs the nodes.
    [[ "$provider" == podman ]] || tools+=(podman)
    for tool in "${tools[@]}"; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            echo "kind/up.sh: error: $tool is not on PATH: it $(why "$tool")" >&2
            missing=1
        fi
    done
    ((missing == 0)) || exit 1
}

# The chart's appVersion, the image tag (plain sed: no yq needed).
chart_version() {
    local version
    version="$(sed -n 's/^appVersion:[[:space:]]*//p' "$root/charts/tailor/Chart.yaml" | tr -d "\"'[:space:]")"
    [[ -n "$version" ]] || die "no appVersion in charts/tailor/Chart.yaml"
    echo "$version"
}

kc() { kubectl --context "$context" "$@"; }

cluster_exists() { kind get clusters 2>/dev/null | grep -qxF "$cluster"; }

create_cluster() {
    if cluster_exists; then
        progress "kind cluster $cluster exists: reusing it"
        return
    fi
    progress "creating kind cluster $cluster (kind/kind-config.yaml)"
    # No --wait: without a CNI the nodes are NotReady until tailor runs.
    kind create cluster --name "$cluster" --config "$root/kind/kind-config.yaml"
}

build_and_load() {
    local version=$1 archive=$2 ref
    progress "building $repository:$version (scripts/build-image.sh)"
    ref="$("$root/scripts/build-image.sh" --tag "$version" --save "$archive" | tail -n 1)"
    [[ "$ref" == "$repository:$version" ]] ||
        die "scripts/build-image.sh built '$ref', expected $repository:$version"
    [[ -s "$archive" ]] || die "scripts/build-image.sh wrote no archive at $archive"
    progress "loading $ref into the nodes of $cluster"
    kind load image-archive "$archive" --name "$cluster"
}

install_chart() {
    local version=$1 existed=false
    helm status "$release" -n "$namespace" --kube-context "$context" >/dev/null 2>&1 && existed=true
    progress "helm upgrade --install $release charts/tailor (image $repository:$version)"
    helm upgrade --install "$release" "$root/charts/tailor" -n "$namespace" \
        --kube-context "$context" \
        --set image.repository="$repository" --set image.tag="$version" \
        --set image.pullPolicy=Never --wait --timeout 10m
    if $existed; then
        # Same tag, new image: the pods' spec did not change, so restart them
        # onto what was just loaded.
        progress "restarting tailor onto the image just loaded"
        kc -n "$namespace" rollout restart "ds/$release-agent" "deploy/$release-operator"
    fi
    progress "waiting for the agents and the operator to roll out"
    kc -n "$namespace" rollout status "ds/$release-agent" --timeout=5m
    kc -n "$namespace" rollout status "deploy/$release-operator" --timeout=5m
    progress "waiting for the nodes to be Ready (the agents write the CNI config)"
    kc wait --for=condition=Ready nodes --all --timeout=5m
}

smoke_pods() {
    kc apply -f - <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $smoke_ns
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: $smoke_ns
  labels: {app: tailor-smoke-server, tailor-smoke: "true"}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: server
      image: $smoke_image
      args: [netexec, --http-port=8080]
      ports: [{containerPort: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: $smoke_ns
  labels: {app: tailor-smoke-client, tailor-smoke: "true"}
spec:
  terminationGracePeriodSeconds: 1
  # On another node than the server where possible: traffic between nodes.
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector: {matchLabels: {app: tailor-smoke-server}}
  containers:
    - name: client
      image: $smoke_image
      args: [pause]
EOF
}

deny_policy() {
    kc apply -f - <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-server-ingress
  namespace: $smoke_ns
spec:
  podSelector: {matchLabels: {app: tailor-smoke-server}}
  policyTypes: [Ingress]
EOF
}

# One connection attempt from the client to the server, bounded in time;
# prints reached, blocked (agnhost connect: TIMEOUT or REFUSED) or
# error: <what went wrong>. Always returns 0.
probe() {
    local target=$1 out
    if out="$(timeout $((connect_timeout + 20)) kubectl --context "$context" -n "$smoke_ns" \
        exec client -- /agnhost connect --timeout="${connect_timeout}s" "$target" 2>&1)"; then
        echo reached
        return 0
    fi
    case "$out" in
        *TIMEOUT* | *REFUSED*) echo blocked ;;
        *) echo "error: ${out//$'\n'/ }" ;;
    esac
}

# Retries until the client's verdict is the one wanted, up to
# $smoke_timeout seconds (plus the one attempt under way).
expect_connection() {
    local want=$1 target=$2 got deadline=$((SECONDS + smoke_timeout))
    while true; do
        got="$(probe "$target")"
        if [[ "$got" == "$want" ]]; then
            info "client -> server $target: $want"
            return 0
        fi
        ((SECONDS < deadline)) ||
            die "client -> server $target: expected $want within ${smoke_timeout}s, last attempt: $got"
        sleep 2
    done
}

smoke_test() {
    local ip
    progress "smoke test in namespace $smoke_ns ($smoke_image)"
    kc delete namespace "$smoke_ns" --ignore-not-found --wait --timeout=120s
    smoke_pods
    kc -n "$smoke_ns" wait --for=condition=Ready pod/server pod/client --timeout=180s
    ip="$(kc -n "$smoke_ns" get pod server -o jsonpath='{.status.podIP}')"
    [[ -n "$ip" ]] || die "the server pod has no IP"
    kc -n "$smoke_ns" get pods -o wide >&2

    progress "smoke test: the client reaches the server (no policy)"
    expect_connection reached "$ip:8080"
    progress "smoke test: a NetworkPolicy denies the server's ingress"
    deny_policy
    expect_connection blocked "$ip:8080"
    progress "smoke test: the policy deleted, the client reaches the server again"
    kc -n "$smoke_ns" delete networkpolicy deny-server-ingress --wait --timeout=60s
    expect_connection reached "$ip:8080"
}

# Removes the image archive; on a failure, says which step it was in.
on_exit() {
    local rc=$?
    [[ -z "$tmp" ]] || rm -rf "$tmp"
    ((rc == 0)) || echo "kind/up.sh: FAILED (exit $rc) during: $step" >&2
}

main() {
    local version
    check_tools
    [[ "$smoke_timeout" =~ ^[0-9]+$ ]] || die "TAILOR_SMOKE_TIMEOUT=$smoke_timeout: a number of seconds"
    version="$(chart_version)"
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/tailor-kind.XXXXXX")"
    trap on_exit EXIT

    create_cluster
    build_and_load "$version" "$tmp/tailor.tar"
    install_chart "$version"
    smoke_test

    progress "tailor's PodPrograms"
    kc get pp -A
    info "done: kind cluster $cluster (kubectl --context $context), tailor $version; kind/down.sh deletes it"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
