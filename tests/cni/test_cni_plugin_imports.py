"""The plugin stays thin: running it imports nothing beyond json, os, sys,
socket (and what they pull in) and its own two modules, never pyroute2, grpc
or agent code. Checked on sys.modules after a real run, not with a timer.
(It does not even need json and socket: test_cni_install.py checks that the
installed plugin runs without them.)"""
from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import io, json, os, sys
import json as _j, os as _o, socket as _s, sys as _y, time as _t   # the allowed base
before = set(sys.modules)
os.environ.update(CNI_COMMAND=sys.argv[1], CNI_CONTAINERID="c1", CNI_NETNS="/proc/self/ns/net",
                  CNI_IFNAME="eth0", CNI_PATH="/opt/cni/bin", CNI_ARGS="K8S_POD_NAME=p")
config = {"cniVersion": "1.1.0", "name": "n", "type": "tailor",
          "agentSocket": "/run/tailor-test-no-agent.sock", "timeoutSeconds": 1}
sys.stdin = io.TextIOWrapper(io.BytesIO(json.dumps(config).encode()))
real_stdout, sys.stdout = sys.stdout, io.StringIO()
from tailor.datapath.cni import main
code = main.main()
sys.stdout = real_stdout
print(json.dumps({"code": code, "new": sorted(set(sys.modules) - before)}))
"""

OWN = {"tailor", "tailor.datapath", "tailor.datapath.cni", "tailor.datapath.cni.main",
       "tailor.datapath.cni.protocol"}


def test_a_plugin_run_imports_only_its_own_modules():
    for command in ("VERSION", "ADD"):
        run = subprocess.run([sys.executable, "-c", PROBE, command], capture_output=True, text=True, check=True)
        report = json.loads(run.stdout.strip().splitlines()[-1])
        assert report["code"] == (0 if command == "VERSION" else 1)
        assert set(report["new"]) <= OWN, set(report["new"]) - OWN


def test_importing_the_plugin_pulls_in_no_heavy_library():
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", "import tailor.datapath.cni.main"],
                         capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if "|" in line}
    heavy = {m for m in imported if m.split(".")[0] in ("pyroute2", "grpc", "yaml")
             or m.startswith(("tailor.datapath.agent", "tailor.datapath.ebpf", "tailor.operator"))}
    assert heavy == set()
