#!/usr/bin/env bash
# A container image made from Debian packages alone (no registry is pulled
# from): mmdebstrap writes a bookworm root filesystem with the packages named,
# podman imports it. The apt sources are the host's, so the image fetches from
# wherever this machine does.
#   scripts/debian-rootfs.sh IMAGE [PACKAGE ...]    nothing to do if IMAGE exists
#   TAILOR_REBUILD=1 scripts/debian-rootfs.sh ...    build it again
# Documentation, manual pages and translations are left out (dpkg path
# excludes). The packages (and that recipe) are recorded in the image's label
# tailor.packages, and an image whose label differs is rebuilt, so editing
# the list is enough.
set -euo pipefail
image="${1:?usage: debian-rootfs.sh IMAGE [PACKAGE ...]}"
shift
packages="$(printf '%s\n' "$@" | sort -u | paste -sd, -)"
recipe="$packages;nodoc"

for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null || {
        echo "debian-rootfs: $tool is missing: apt-get install $tool" >&2; exit 1; }
done
if [[ -z "${TAILOR_REBUILD:-}" ]] && podman image exists "$image" &&
   [[ "$(podman image inspect --format '{{index .Labels "tailor.packages"}}' "$image")" == "$recipe" ]]; then
    exit 0
fi

sources=/etc/apt/sources.list
[[ -s /etc/apt/sources.list.d/debian.sources ]] && sources=/etc/apt/sources.list.d/debian.sources
tar="$(mktemp --suffix=.tar)"
trap 'rm -f "$tar"' EXIT
echo "debian-rootfs: mmdebstrap bookworm (${packages:-minbase}) -> $image" >&2
nodoc=()
for path in '/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*' '/usr/share/lintian/*'; do
    nodoc+=(--dpkgopt="path-exclude=$path")
done
# Copyright files stay: the licences of what the image ships.
nodoc+=(--dpkgopt="path-include=/usr/share/doc/*/copyright")
mmdebstrap --quiet --variant=minbase "${nodoc[@]}" ${packages:+--include="$packages"} bookworm "$tar" "$sources"
podman import --quiet --change "LABEL tailor.packages=$recipe" "$tar" "$image" >/dev/null
echo "debian-rootfs: $image ($(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec))" >&2
