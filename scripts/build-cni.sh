#!/usr/bin/env bash
# Builds the `tailor` CNI plugin as a self-contained folder, for nodes
# without Python: build/cni/tailor.d (the executable and the interpreter it
# carries) and build/cni/tailor, a symlink to the executable in it. A folder,
# not PyInstaller's one-file mode: that unpacks itself on every run, which
# took a CNI call from about 60 to 110 ms here. Install the folder beside the
# other plugins and link /opt/cni/bin/tailor to its executable (the chart's
# install-cni does, by rename, versioned by tailor.d/ID).
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
rm -rf "$src" "$out/work" "$out/tailor" "$out/tailor.d"
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
(cd "$src" && python3 -m PyInstaller --onedir --noconfirm --clean --log-level WARN \
    --name tailor --paths . "${excludes[@]}" \
    --distpath "$root/$out" --workpath "$root/$out/work" --specpath "$root/$out/work" \
    tailor_cni.py)
mv "$out/tailor" "$out/tailor.d"
# What the installer names the folder after: the same build, the same ID.
(cd "$out/tailor.d" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12) \
    > "$out/tailor.d/ID"
ln -s tailor.d/tailor "$out/tailor"
echo "build-cni: $out/tailor.d ($(du -sh "$out/tailor.d" | cut -f1)), $out/tailor -> tailor.d/tailor" >&2
