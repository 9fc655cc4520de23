"""Call the real `tailor` CNI plugin as a container runtime would.

Called by lab.up (ADD per pod) and lab.down (DEL per pod), and by tests.
The plugin is installed into the lab's run dir (`<run dir>/cni-bin/tailor`)
on the first call, as a node's installer puts it into /opt/cni/bin: the
script tailor.datapath.cni.install writes, which starts its interpreter
without `site` (the console script `tailor-cni` spends most of each run
there). It runs inside the node's namespace with the CNI environment
(CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS=/var/run/netns/<pod ns>,
CNI_IFNAME=eth0, CNI_ARGS with the pod's namespace, name and uid, CNI_PATH)
and the network config on stdin; it talks to the node's agent over the
agent's unix socket.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading

from tailor.datapath.cni import install as install_
from tailor.lab import netns as netns_
from tailor.lab import plan as plan_

CNI_VERSION = "1.1.0"
TIMEOUT_SECONDS = 20
BIN_DIR = "cni-bin"   # under the run dir: the lab's /opt/cni/bin
_installing = threading.Lock()   # lab.up runs ADDs from several threads


class CniError(Exception):
    """The plugin answered with a CNI error (or nothing usable); the message names the pod."""

    def __init__(self, pod: str, command: str, code: int | None, msg: str, details: str = ""):
        self.pod, self.command, self.code, self.msg, self.details = pod, command, code, msg, details
        text = f"CNI {command} for {pod} failed"
        if code is not None:
            text += f" with code {code}"
        text += f": {msg}" + (f" ({details})" if details else "")
        super().__init__(text)


def installed(lab: dict) -> str:
    """The plugin in the lab's CNI bin dir, installed there on first use."""
    exe = os.path.join(lab["run_dir"], BIN_DIR, install_.NAME)
    with _installing:
        if not os.access(exe, os.X_OK):
            if lab.get("image"):   # the image's standalone executable, as the chart installs it
                from tailor.lab import image

                image.install_cni(lab, os.path.dirname(exe), install_.NAME)
            else:
                install_.install(os.path.dirname(exe))
    return exe


def netconf(lab: dict, node: dict, pod: dict) -> dict:
    return {"cniVersion": CNI_VERSION, "name": f"tailor-lab-{lab['name']}", "type": "tailor",
            "agentSocket": node["cni_socket"], "timeoutSeconds": TIMEOUT_SECONDS,
            "ipam": {"ranges": plan_.pod_ranges(_node_plan(node), tuple(pod["families"]))}}


def add(lab: dict, node: dict, pod: dict) -> dict:
    """CNI ADD; the parsed 1.1.0 result."""
    return _call("ADD", lab, node, pod) or {}


def delete(lab: dict, node: dict, pod: dict) -> None:
    """CNI DEL (idempotent; works after the pod's namespace is gone)."""
    _call("DEL", lab, node, pod)


def addresses(result: dict) -> list[str]:
    """The pod's addresses (no prefix length) from an ADD result, in order."""
    return [ip["address"].split("/")[0] for ip in result.get("ips", [])]


def host_interface(result: dict) -> str:
    for iface in result.get("interfaces", []):
        if not iface.get("sandbox"):
            return iface.get("name", "")
    return ""


def _call(command: str, lab: dict, node: dict, pod: dict) -> dict | None:
    exe = installed(lab)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "CNI_COMMAND": command, "CNI_CONTAINERID": pod["container_id"],
           "CNI_NETNS": netns_.path(pod["netns"]) if netns_.exists(pod["netns"]) else "",
           "CNI_IFNAME": plan_.POD_IFNAME,
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod['namespace']};"
                       f"K8S_POD_NAME={pod['name']};K8S_POD_UID={pod['uid']}",
           "CNI_PATH": os.path.dirname(exe)}
    config = json.dumps(netconf(lab, node, pod))
    try:
        proc = subprocess.run(netns_.exec_argv(node["netns"], [exe]), input=config, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_SECONDS + 5)
    except subprocess.TimeoutExpired:
        raise CniError(pod["ref"], command, None, f"the tailor CNI plugin gave no answer in {TIMEOUT_SECONDS + 5}s")
    out = proc.stdout.strip()
    try:
        answer = json.loads(out) if out else None
    except ValueError:
        answer = None
    if proc.returncode != 0:
        if isinstance(answer, dict) and "code" in answer:
            raise CniError(pod["ref"], command, answer["code"], answer.get("msg", ""), answer.get("details", ""))
        raise CniError(pod["ref"], command, None, f"the tailor CNI plugin exited {proc.returncode}",
                       (proc.stderr or out).strip()[-500:])
    return answer


def _node_plan(node: dict) -> plan_.NodePlan:
    return plan_.NodePlan(node["name"], node["index"], node["netns"], node["switch_port"],
                          tuple(node["underlay"]), tuple(node["pod_cidrs"]))
