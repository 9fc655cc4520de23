#!/usr/bin/env bash
# Builds tailor's image, localhost/tailor:<version>, on a machine with no
# Docker engine and no registry: the base is a Debian root filesystem
# (scripts/debian-rootfs.sh, mmdebstrap + podman import), the image is built
# with podman from the Containerfile. Python packages come from PyPI.
#   scripts/build-image.sh [--tag TAG] [--save FILE]
# --save writes the image as a docker archive too (`kind load image-archive`).
# The last line on stdout is the image's reference.
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
tag="$version" save=""
while (($#)); do
    case "$1" in
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --save) save="${2:?--save needs a file}"; shift 2 ;;
        *) echo "build-image: unknown argument $1 (usage: build-image.sh [--tag TAG] [--save FILE])" >&2; exit 2 ;;
    esac
done
image="localhost/tailor:$tag"
base=localhost/tailor-base:bookworm

# The runtime's Debian packages: python3 (the venv's interpreter), libbpf1
# (loaded through ctypes), iproute2 and nftables (the agent's node
# networking), util-linux (nsenter, mountpoint). portmap is added from the
# build stage (Containerfile).
scripts/debian-rootfs.sh "$base" python3 python3-venv libbpf1 iproute2 nftables util-linux \
    ca-certificates

# The build downloads through the host's network and trusts what the host
# trusts (a proxy's CA, say), mounted for the build only: nothing of the
# host's lands in the image.
trust=()
bundle=/etc/ssl/certs/ca-certificates.crt
[[ -s "$bundle" ]] && trust=(--volume "$bundle:$bundle:ro" --build-arg PIP_CERT="$bundle")
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
    [[ -n "${!var:-}" ]] && trust+=(--build-arg "$var=${!var}")
done

echo "build-image: podman build -> $image" >&2
# runc and explicit ulimits, which this kind of machine needs (crun refuses
# its cgroups, the default limits are refused).
podman build --quiet --network host --runtime runc "${trust[@]}" \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --build-arg BASE="$base" --label org.opencontainers.image.version="$version" \
    -f Containerfile -t "$image" . >/dev/null
echo "build-image: $image ($(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec))" >&2
if [[ -n "$save" ]]; then
    rm -f "$save"
    podman save --quiet --format docker-archive -o "$save" "$image"
    echo "build-image: saved to $save" >&2
fi
echo "$image"
