#!/usr/bin/env bash
# Installs what `python -m benchmarks` compares against and plots with (clang,
# iperf3, nftables, matplotlib), on top of tailor itself: install-deps.sh --bench.
set -euo pipefail
exec "$(dirname "$0")/install-deps.sh" --bench
