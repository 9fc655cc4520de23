"""The lab's state file: everything `down` must undo, written before each
thing is made, so a partial `up` can always be taken down.

Called by lab (up/status/probe/down), processes (PIDs), the controller (reads
nodes and pods) and tests. The file is JSON at `<root>/<name>/state.json`,
where root is /run/tailor-lab for root and
$XDG_RUNTIME_DIR/tailor-lab (or /tmp/tailor-lab-<uid>) otherwise;
TAILOR_LAB_ROOT overrides it. Layout:

    {"name": "lab", "backend": "kernel" | "emulated", "step": "<last step begun>",
     "ready": bool, "run_dir": "...", "manifests": ["/abs/path", ...],
     "underlay": "switched" | "routed", "routing": "native" | "vxlan" | "auto" | "off",
     "switch": {"netns": "lab.switch", "bridge": "br0"} | null,      # switched
     "router": {"netns": "lab.router"} | null,                       # routed
     "outside": {"netns": "lab.outside", "addresses": [...], "gateways": [...]} | null,
     "services": [{"namespace", "name", "ref", "cluster_ips": [...], "node_ports": [port or
                   null, one per Service port]}], "kube_proxy": bool,
     "image": "localhost/tailor:0.1.0" | null,   # agents (and operator) from the image
     "bpffs_root": "/sys/fs/bpf/tailor-lab-lab" | null,
     "nodes": [{"name", "index", "netns", "switch_port", "underlay": [...], "gateways": [...],
                "pod_cidrs": [...], "agent_socket", "cni_socket" (emulated: the
                node's Wire socket), "state_dir", "bpffs_root", "made": bool}],
     "pods": [{"namespace", "name", "kind", "ref", "node", "netns", "uid",
               "container_id", "families": [4], "addresses": [...],   # from the CNI result
               "interface": "tl..." , "netns_made": bool, "wired": bool}],
     "processes": {"controller": {"pid", "argv", "log", "netns"},
                   "agent/<node>": {...}}}

Only the process running `tailor lab up` or `down` writes it (atomically,
by rename); agents and the controller read it.
"""
from __future__ import annotations

import json
import os

FILE = "state.json"


def root() -> str:
    override = os.environ.get("TAILOR_LAB_ROOT")
    if override:
        return override
    if os.geteuid() == 0:
        return "/run/tailor-lab"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "tailor-lab") if runtime else f"/tmp/tailor-lab-{os.geteuid()}"


def run_dir(name: str) -> str:
    return os.path.join(root(), name)


def path(name: str) -> str:
    return os.path.join(run_dir(name), FILE)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def load(name_or_path: str) -> dict:
    """By lab name or by file path. Raises FileNotFoundError when there is no such lab."""
    file = name_or_path if name_or_path.endswith(".json") else path(name_or_path)
    with open(file) as f:
        return json.load(f)


def save(data: dict) -> None:
    directory = data["run_dir"]
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, FILE)
    tmp = target + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, target)


def labs() -> list[str]:
    """Names of the labs with a state file under the root."""
    try:
        entries = sorted(os.listdir(root()))
    except FileNotFoundError:
        return []
    return [e for e in entries if os.path.exists(os.path.join(root(), e, FILE))]


def pod(data: dict, ref_or_key: str) -> dict:
    """A pod entry by `ns/name`, `ns/name[Kind]` or uid."""
    for p in data["pods"]:
        if ref_or_key in (p["ref"], p["uid"], f"{p['namespace']}/{p['name']}"):
            return p
    raise KeyError(f"no pod {ref_or_key} in lab {data['name']}")


def node(data: dict, name: str) -> dict:
    for n in data["nodes"]:
        if n["name"] == name:
            return n
    raise KeyError(f"no node {name} in lab {data['name']}")
