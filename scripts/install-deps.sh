#!/usr/bin/env bash
# Installs what tailor needs on Debian bookworm (apt + pip) and mounts bpffs.
# Idempotent: packages already present are not fetched again. Python packages
# go into a virtual environment, `.venv` in the checkout (TAILOR_VENV elsewhere):
# Debian's python3 refuses pip into the system (PEP 668). `. .venv/bin/activate`
# puts `tailor` on PATH; the Makefile's targets use it directly.
#   scripts/install-deps.sh          runtime only
#   scripts/install-deps.sh --bench  plus what `python -m benchmarks` compares against
#   scripts/install-deps.sh --test   plus what the test suite compares against (the
#                                    benchmarks' too: the suite runs their smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"

# util-linux: nsenter; nftables: the agent's masquerade of traffic leaving the cluster.
apt_pkgs=(libbpf1 iproute2 util-linux nftables)
# llvm-mc/objdump 19: the assembler's reference; bpftool: an independent view of links.
[[ "$mode" == "--test" ]] && apt_pkgs+=(llvm-19 bpftool)
# The image tests build and run tailor's image (scripts/build-image.sh):
# podman with runc, mmdebstrap for the base; Debian's CNI plugins (portmap,
# chained after tailor in the lab) and the iptables portmap drives; and
# the shell linter for kind/*.sh.
[[ "$mode" == "--test" ]] && apt_pkgs+=(podman runc mmdebstrap containernetworking-plugins iptables shellcheck)
# clang: the compile benchmark's baseline (equivalent C, -O2 -target bpf); iperf3:
# the data plane's throughput (nftables, the runtime's, is its baseline policy).
[[ "$mode" == "--test" || "$mode" == "--bench" ]] && apt_pkgs+=(clang iperf3)

missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $EUID -ne 0 ]]; then
        echo "install-deps: missing Debian packages ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "install-deps: apt-get install ${missing[*]}" >&2
    apt-get update -qq
    # iperf3's package asks whether to start a daemon; the benchmarks start their own.
    echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# lab: kmock, the API server of `tailor lab up --control operator` (make run).
# bench: matplotlib, the benchmark report's plots.
extras="[lab]"
[[ "$mode" == "--bench" ]] && extras="[lab,bench]"
[[ "$mode" == "--test" ]] && extras="[lab,test,bench]"
venv="${TAILOR_VENV:-$PWD/.venv}"
if [[ ! -x "$venv/bin/python" ]]; then
    echo "install-deps: python3 -m venv $venv" >&2
    if ! python3 -P -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        # Debian ships venv's ensurepip apart from python3.
        if [[ $EUID -ne 0 ]]; then
            echo "install-deps: python3 cannot make a virtual environment; run as root or: sudo apt-get install python3-venv" >&2
            exit 1
        fi
        echo "install-deps: apt-get install python3-venv" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -P -m venv "$venv"
    fi
fi
# -P: the checkout's top-level folders (operator/) must not shadow the standard library.
pip=("$venv/bin/python" -P -m pip install -q --disable-pip-version-check --root-user-action=ignore)
echo "install-deps: pip install -e .${extras} (into $venv)" >&2
"${pip[@]}" -e ".${extras}"
if [[ "$mode" == "--test" ]]; then
    # Helm as a library, to lint the chart and install it into the kmock API
    # emulator (tests/charts, tests/operator). helm-sdkpy declares Python >= 3.12
    # but works on 3.11, hence --ignore-requires-python.
    echo "install-deps: pip install helm-sdkpy" >&2
    "${pip[@]}" --ignore-requires-python "helm-sdkpy>=0.1.32"
fi

if [[ $EUID -eq 0 ]] && ! mountpoint -q /sys/fs/bpf; then
    echo "install-deps: mounting bpffs at /sys/fs/bpf" >&2
    mount -t bpf bpf /sys/fs/bpf
fi
