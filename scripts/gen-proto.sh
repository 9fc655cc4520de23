#!/usr/bin/env bash
# Regenerates the agent API's Python stubs from datapath/agent/api/agent.proto
# with grpcio-tools. The proto is compiled from a tree laid out like the
# import package (tailor/datapath/agent/api/) so the generated modules import
# each other as tailor.datapath.agent.api.*.
#   scripts/gen-proto.sh [OUTDIR]    default: datapath/agent/api
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-datapath/agent/api}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/tailor/datapath/agent/api" "$work/out"
cp datapath/agent/api/agent.proto "$work/src/tailor/datapath/agent/api/"
python3 -m grpc_tools.protoc -I "$work/src" --python_out="$work/out" --pyi_out="$work/out" \
    --grpc_python_out="$work/out" "$work/src/tailor/datapath/agent/api/agent.proto"
mkdir -p "$out"
cp "$work/out/tailor/datapath/agent/api/"agent_pb2*.py* "$out/"
