"""Call the CNI chain the chart writes — the real `tailor` plugin, then
Debian's `portmap` — as a container runtime (libcni) would.

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

hostPort: the list ends with `{"type": "portmap", "capabilities":
{"portMappings": true}}`, as the chart's does. For a pod whose containers
declare a hostPort, ADD runs tailor, then portmap (in the node's namespace
too; it writes iptables rules there: the CNI-HOSTPORT-* chains) with
`prevResult` = tailor's result and `runtimeConfig.portMappings` = the
containers' `ports[]` with a hostPort, as containerd hands them over
(`{"hostPort", "containerPort", "protocol": "tcp"|"udp"|"sctp", "hostIP"}`);
the answer is portmap's (tailor's result, passed on). A failed portmap ADD
is undone (portmap DEL, tailor DEL) before CniError is raised. DEL runs in
reverse, each plugin with `prevResult` = the chain's cached ADD result
(`<run dir>/cni-cache/<container id>.json`, as libcni keeps
/var/lib/cni/results) and portmap with the same portMappings, recomputed
from the manifests: portmap's DEL removes nothing without them. A runtime
runs portmap for every pod; the lab only for those with a hostPort (for
the others it would only pass tailor's result on), so up's ADD times stay
tailor's own.

The model (tailor.operator.cluster) keeps no hostPort: `port_mappings`
reads it from the manifests' pod templates here.

The portmap executable is Debian's (containernetworking-plugins,
/usr/lib/cni/portmap), copied into the lab's CNI bin dir on first use —
out of the image with `lab["image"]`, where the chart's init container
finds it. The list's cniVersion is the highest version both plugins
answer VERSION with: Debian bookworm's portmap (1.1.1) speaks up to 1.0.0
and refuses a 1.1.0 config ("incompatible CNI versions", code 1), so a lab
with a hostPort pod runs the whole chain, for every pod, at 1.0.0; a lab
without one runs tailor alone at its 1.1.0.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading

from tailor.datapath.cni import install as install_
from tailor.lab import netns as netns_
from tailor.lab import plan as plan_

CNI_VERSION = "1.1.0"   # tailor's own; the list's when portmap is not in play
TIMEOUT_SECONDS = 20
BIN_DIR = "cni-bin"     # under the run dir: the lab's /opt/cni/bin
CACHE_DIR = "cni-cache"  # under the run dir: the lab's /var/lib/cni/results
PORTMAP = "portmap"
PORTMAP_PATH = "/usr/lib/cni/portmap"   # Debian's containernetworking-plugins, on the host and in the image
_installing = threading.Lock()   # lab.up runs ADDs from several threads
_reading = threading.Lock()
_specs: dict[tuple, dict[str, tuple]] = {}     # (run dir, created) -> {pod ref: (pod spec, path)}
_versions: dict[tuple, str] = {}               # (run dir, created) -> the list's cniVersion


class CniError(Exception):
    """A plugin of the chain answered with a CNI error (or nothing usable);
    the message names the pod and the plugin."""

    def __init__(self, pod: str, command: str, code: int | None, msg: str, details: str = "",
                 plugin: str = install_.NAME):
        self.pod, self.command, self.code, self.msg, self.details = pod, command, code, msg, details
        self.plugin = plugin
        text = f"CNI {command} for {pod} failed in plugin {plugin}"
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


def installed_portmap(lab: dict) -> str:
    """portmap in the lab's CNI bin dir, copied there on first use: from the
    image with `lab["image"]`, else from the host's Debian package."""
    exe = os.path.join(lab["run_dir"], BIN_DIR, PORTMAP)
    with _installing:
        if not os.access(exe, os.X_OK):
            os.makedirs(os.path.dirname(exe), exist_ok=True)
            if lab.get("image"):
                _copy_from_image(lab["image"], PORTMAP_PATH, exe)
            elif os.access(PORTMAP_PATH, os.X_OK):
                shutil.copyfile(PORTMAP_PATH, exe + ".new")
                os.chmod(exe + ".new", 0o755)
                os.replace(exe + ".new", exe)
            else:
                raise FileNotFoundError(f"{PORTMAP_PATH} is not there: hostPort needs Debian's portmap "
                                        "(apt-get install containernetworking-plugins)")
    return exe


def _copy_from_image(image: str, source: str, target: str) -> None:
    """`podman cp` one file out of `image` (a created, never started container)."""
    created = subprocess.run(["podman", "create", "--runtime", "runc", image], capture_output=True, text=True)
    if created.returncode != 0:
        raise OSError(f"podman create {image}: {created.stderr.strip()}")
    cid = created.stdout.strip()
    try:
        copied = subprocess.run(["podman", "cp", f"{cid}:{source}", target + ".new"],
                                capture_output=True, text=True)
        if copied.returncode != 0:
            raise OSError(f"podman cp {source} out of {image}: {copied.stderr.strip()}")
        os.chmod(target + ".new", 0o755)
        os.replace(target + ".new", target)
    finally:
        subprocess.run(["podman", "rm", "--force", cid], capture_output=True)


def netconf(lab: dict, node: dict, pod: dict, version: str | None = None) -> dict:
    """tailor's entry of the list, with the list's name and cniVersion."""
    return {"cniVersion": version or list_version(lab), "name": network_name(lab), "type": install_.NAME,
            "agentSocket": node["cni_socket"], "timeoutSeconds": TIMEOUT_SECONDS,
            "ipam": {"ranges": plan_.pod_ranges(_node_plan(node), tuple(pod["families"]))}}


def portmap_conf(lab: dict, mappings: list[dict], prev: dict | None, version: str | None = None) -> dict:
    """portmap's entry of the list as libcni hands it over: its capabilities
    turned into runtimeConfig, the previous result as prevResult."""
    conf = {"cniVersion": version or list_version(lab), "name": network_name(lab), "type": PORTMAP,
            "capabilities": {"portMappings": True}, "runtimeConfig": {"portMappings": mappings}}
    if prev:
        conf["prevResult"] = prev
    return conf


def network_name(lab: dict) -> str:
    return f"tailor-lab-{lab['name']}"


def add(lab: dict, node: dict, pod: dict) -> dict:
    """CNI ADD of the chain; the parsed result (tailor's, passed on by portmap)."""
    mappings = port_mappings(lab, pod)   # a bad hostPort fails before anything is made
    result = _call("ADD", lab, node, pod, installed(lab), netconf(lab, node, pod)) or {}
    if not mappings:
        return result
    try:
        final = _call("ADD", lab, node, pod, _portmap(lab, pod, "ADD"), portmap_conf(lab, mappings, result),
                      PORTMAP) or {}
    except BaseException as e:
        undone = _undo_add(lab, node, pod, mappings, result)
        if isinstance(e, CniError) and undone:
            details = "; ".join(filter(None, [e.details, "undoing the ADD failed too: " + "; ".join(undone)]))
            raise CniError(e.pod, e.command, e.code, e.msg, details, e.plugin) from None
        raise
    _cache_write(lab, pod, final)
    return final


def _undo_add(lab: dict, node: dict, pod: dict, mappings: list[dict], result: dict) -> list[str]:
    """After a failed portmap ADD, nothing half-done: portmap's DEL (for
    rules it may have written), then tailor's. The failures, as text."""
    failures = []
    steps = [(lambda: _portmap(lab, pod, "DEL"), portmap_conf(lab, mappings, result), PORTMAP),
             (lambda: installed(lab), {**netconf(lab, node, pod), "prevResult": result}, install_.NAME)]
    for exe, conf, plugin in steps:
        try:
            _call("DEL", lab, node, pod, exe(), conf, plugin)
        except CniError as e:
            failures.append(str(e))
    return failures


def delete(lab: dict, node: dict, pod: dict) -> None:
    """CNI DEL of the chain, in reverse (idempotent; works after the pod's
    namespace is gone). Every plugin's DEL runs; the first failure is raised."""
    prev = _cache_read(lab, pod)
    failures: list[CniError] = []
    try:
        mappings = port_mappings(lab, pod, "DEL")
        version = list_version(lab, "DEL")
    except CniError as e:
        # The manifests no longer say: tailor's DEL still runs, and portmap's
        # rules go with the node's namespace at `down`.
        mappings, version = [], (prev or {}).get("cniVersion") or CNI_VERSION
        failures.append(e)
    if mappings:
        try:
            _call("DEL", lab, node, pod, _portmap(lab, pod, "DEL"),
                  portmap_conf(lab, mappings, prev, version), PORTMAP)
        except CniError as e:
            failures.append(e)
    conf = netconf(lab, node, pod, version)
    if prev:
        conf["prevResult"] = prev
    try:
        _call("DEL", lab, node, pod, installed(lab), conf)
    except CniError as e:
        failures.append(e)
    if failures:
        raise failures[0]
    _cache_remove(lab, pod)


def addresses(result: dict) -> list[str]:
    """The pod's addresses (no prefix length) from an ADD result, in order."""
    return [ip["address"].split("/")[0] for ip in result.get("ips", [])]


def host_interface(result: dict) -> str:
    for iface in result.get("interfaces", []):
        if not iface.get("sandbox"):
            return iface.get("name", "")
    return ""


# -- hostPort -----------------------------------------------------------------------

def port_mappings(lab: dict, pod: dict, command: str = "ADD") -> list[dict]:
    """The pod's runtimeConfig.portMappings, as containerd builds them from
    the pod's containers' `ports[]`: one per port with a hostPort, the
    protocol lower-case, hostIP "" unless given. Raises CniError (plugin
    portmap) naming the field of a hostPort that is not one."""
    from tailor.operator.cluster import ports as ports_
    from tailor.operator.errors import InvalidSpec

    found = _pod_specs(lab, pod, command).get(pod["ref"])
    if found is None:
        return []
    spec, path = found
    out = []
    for i, container in enumerate(spec.get("containers") or []):
        for j, port in enumerate((container or {}).get("ports") or []):
            if not isinstance(port, dict) or not port.get("hostPort"):
                continue   # 0 or none: no mapping (containerd skips hostPort <= 0)
            where = f"{path}spec.containers[{i}].ports[{j}]"
            try:
                host_port = ports_.parse_port_number(port["hostPort"], f"{where}.hostPort")
                container_port = ports_.parse_port_number(port.get("containerPort"), f"{where}.containerPort")
                protocol = ports_.parse_protocol(port.get("protocol"), f"{where}.protocol")
                host_ip = port.get("hostIP") or ""
                if not isinstance(host_ip, str):
                    raise InvalidSpec(f"{where}.hostIP", "must be an IP address")
            except InvalidSpec as e:
                raise CniError(pod["ref"], command, None, f"invalid hostPort mapping: {e.path}: {e.message}",
                               plugin=PORTMAP) from None
            out.append({"hostPort": host_port, "containerPort": container_port,
                        "protocol": protocol.lower(), "hostIP": host_ip})
    return out


def _pod_specs(lab: dict, pod: dict, command: str) -> dict[str, tuple]:
    """{pod ref: (pod spec, field path prefix)} of the lab's manifests, read
    once per lab and process."""
    key = (lab["run_dir"], lab.get("created"))
    with _reading:
        if key not in _specs:
            from tailor.operator.cluster import manifests, pods
            from tailor.operator.cluster.objects import WORKLOAD_KINDS
            from tailor.operator.errors import InvalidSpec, ManifestError

            specs = {}
            try:
                for _, obj in manifests.objects(lab["manifests"]):
                    kind = obj.get("kind")
                    if kind != "Pod" and kind not in WORKLOAD_KINDS:
                        continue
                    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
                    ref = f"{meta.get('namespace') or 'default'}/{meta.get('name')}[{kind}]"
                    template, path = pods.template(obj, kind)
                    if isinstance(template.get("spec"), dict):
                        specs[ref] = (template["spec"], path)
            except (ManifestError, InvalidSpec) as e:
                raise CniError(pod["ref"], command, None, f"cannot read the pod's hostPorts: {e}",
                               plugin=PORTMAP) from None
            _specs[key] = specs
        return _specs[key]


def list_version(lab: dict, command: str = "ADD") -> str:
    """The list's cniVersion: tailor's own, or, when a pod of the lab has
    a hostPort (portmap then runs), the highest version both plugins speak."""
    key = (lab["run_dir"], lab.get("created"))
    with _reading:
        known = _versions.get(key)
    if known:
        return known
    chained = any(port_mappings(lab, p, command) for p in lab["pods"])
    version = CNI_VERSION
    if chained:
        both = set(_supported(lab, installed(lab), install_.NAME)) & \
            set(_supported(lab, installed_portmap(lab), PORTMAP))
        if not both:
            raise CniError("the lab", "VERSION", None, "tailor and portmap speak no CNI version in common",
                           plugin=PORTMAP)
        version = max(both, key=lambda v: tuple(int(x) for x in v.split(".")))
    with _reading:
        _versions[key] = version
    return version


def _supported(lab: dict, exe: str, plugin: str) -> list[str]:
    proc = subprocess.run([exe], input="{}", env={"CNI_COMMAND": "VERSION", "PATH": _path()},
                          capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    try:
        return list(json.loads(proc.stdout)["supportedVersions"])
    except (ValueError, KeyError, TypeError):
        raise CniError("the lab", "VERSION", None, f"the {plugin} CNI plugin gave no version answer",
                       (proc.stderr or proc.stdout).strip()[-300:], plugin) from None


def _portmap(lab: dict, pod: dict, command: str) -> str:
    try:
        return installed_portmap(lab)
    except OSError as e:
        raise CniError(pod["ref"], command, None, str(e), plugin=PORTMAP) from None


# -- the cached ADD result ------------------------------------------------------------

def _cache_path(lab: dict, pod: dict) -> str:
    return os.path.join(lab["run_dir"], CACHE_DIR, f"{pod['container_id']}.json")


def _cache_write(lab: dict, pod: dict, result: dict) -> None:
    path = _cache_path(lab, pod)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


def _cache_read(lab: dict, pod: dict) -> dict | None:
    try:
        with open(_cache_path(lab, pod)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None   # no chained ADD finished: DEL without prevResult, as a runtime does


def _cache_remove(lab: dict, pod: dict) -> None:
    try:
        os.unlink(_cache_path(lab, pod))
    except FileNotFoundError:
        pass


# -- running a plugin -----------------------------------------------------------------

def _path() -> str:
    return os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")


def _call(command: str, lab: dict, node: dict, pod: dict, exe: str, conf: dict,
          plugin: str = install_.NAME) -> dict | None:
    """Run one plugin of the chain in the node's namespace; its parsed answer."""
    env = {"PATH": _path(),
           "CNI_COMMAND": command, "CNI_CONTAINERID": pod["container_id"],
           "CNI_NETNS": netns_.path(pod["netns"]) if netns_.exists(pod["netns"]) else "",
           "CNI_IFNAME": plan_.POD_IFNAME,
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod['namespace']};"
                       f"K8S_POD_NAME={pod['name']};K8S_POD_UID={pod['uid']}",
           "CNI_PATH": os.path.dirname(exe)}
    try:
        proc = subprocess.run(netns_.exec_argv(node["netns"], [exe]), input=json.dumps(conf), env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_SECONDS + 5)
    except subprocess.TimeoutExpired:
        raise CniError(pod["ref"], command, None, f"the {plugin} CNI plugin gave no answer in "
                                                  f"{TIMEOUT_SECONDS + 5}s", plugin=plugin) from None
    out = proc.stdout.strip()
    try:
        answer = json.loads(out) if out else None
    except ValueError:
        answer = None
    if proc.returncode != 0:
        if isinstance(answer, dict) and "code" in answer:
            raise CniError(pod["ref"], command, answer["code"], answer.get("msg", ""),
                           answer.get("details", ""), plugin)
        raise CniError(pod["ref"], command, None, f"the {plugin} CNI plugin exited {proc.returncode}",
                       (proc.stderr or out).strip()[-500:], plugin)
    return answer


def _node_plan(node: dict) -> plan_.NodePlan:
    return plan_.NodePlan(node["name"], node["index"], node["netns"], node["switch_port"],
                          tuple(node["underlay"]), tuple(node["pod_cidrs"]))
