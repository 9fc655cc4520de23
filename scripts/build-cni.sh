#!/usr/bin/env bash
# Builds the `tailor` CNI plugin as one self-contained executable, for nodes
# without Python:  build/cni/tailor  (install it as /opt/cni/bin/tailor).
#   scripts/build-cni.sh            needs pyinstaller (pip install -e '.[build]')
#
# The plugin is three stdlib-only files (datapath/cni/{__init__,main,protocol}.py).
# They are staged under build/cni/src/tailor/... so PyInstaller sees a plain
# package instead of the editable install's import hook, and nothing else of
# tailor (pyroute2 users, the agent) can slip into the binary.
set -euo pipefail
cd "$(dirname "$0")/.."

out=build/cni
src=$out/src
rm -rf "$src" "$out/work" "$out/tailor"
mkdir -p "$src/tailor/datapath/cni"
: > "$src/tailor/__init__.py"
: > "$src/tailor/datapath/__init__.py"
cp datapath/cni/__init__.py datapath/cni/main.py datapath/cni/protocol.py "$src/tailor/datapath/cni/"
cat > "$src/tailor_cni.py" <<'EOF'
import sys
from tailor.datapath.cni.main import main
sys.exit(main())
EOF

# Run from the staging dir: from the repository root, the top-level operator/
# folder would shadow the standard library's `operator` inside the binary.
root=$PWD
# Modules PyInstaller would pack by default that the plugin never imports
# (half the binary's size: libcrypto, codecs, decimal, compression, pickle).
excludes=()
for m in _hashlib ssl _ssl decimal _decimal bz2 _bz2 lzma _lzma pickle _pickle csv _csv \
         _codecs_cn _codecs_hk _codecs_jp _codecs_kr _codecs_tw _codecs_iso2022 _multibytecodec; do
    excludes+=(--exclude-module "$m")
done
(cd "$src" && python3 -m PyInstaller --onefile --noconfirm --clean --log-level WARN \
    --name tailor --paths . "${excludes[@]}" \
    --distpath "$root/$out" --workpath "$root/$out/work" --specpath "$root/$out/work" \
    tailor_cni.py)
echo "build-cni: $out/tailor ($(du -h "$out/tailor" | cut -f1))" >&2
