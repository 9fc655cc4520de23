"""`tailor lab up | status | probe | down`: the orchestration.

Called by cli/lab.py and by tests. `up` reads the manifests, plans the lab,
writes the state file, then runs its steps in order, recording in the state
file what it is about to make before making it:

    kernel:   underlay -> controller -> agents -> pods (netns + CNI ADD) -> sync
    emulated: controller -> agents -> pods (wired through each node's Wire service) -> sync

The controller (control/controller.py) is the operator's engine, hand-off
and pusher fed from the manifests, without an API server. With
`control="operator"` that step is replaced by an API server holding the
lab's objects and `tailor operator` (control/operated.py): the agents ask
the operator at CNI ADD, each pod's addresses are reported in its status,
and sync waits for every PodProgram to be Loaded.

If a step fails, `up` takes down what it made and raises LabError naming
the step and the fix. `down` undoes whatever the state file records, in
reverse: CNI DEL per pod, processes, pod/node/switch namespaces, the bpffs
root, the run dir; it works after a partial `up` and checks that nothing of
the lab is left.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent import futures

from tailor.lab import agents
from tailor.lab import netns as netns_
from tailor.lab import plan as plan_
from tailor.lab import processes
from tailor.lab import state as state_

BPFFS = "/sys/fs/bpf"
POD_WORKERS = 8
FIXES = {
    "underlay": "check that `ip netns add` works as this user (root) and that no namespace "
                "of an old lab is left: `ip netns list | grep '^{name}\\.'`, then `tailor lab down --name {name}`",
    "controller": "read the controller's log in {run_dir}/controller.log",
    "agents": "read the agents' logs in {run_dir}/agent-<node>.log",
    "pods": "the CNI error above names the pod and the agent's reason; the node agents' logs are "
            "in {run_dir}/agent-<node>.log",
    "sync": "the controller could not bring every pod's program to its agent: read "
            "{run_dir}/controller.log and the agents' logs",
    "api": "read the API server's log in {run_dir}/apiserver.log",
    "kube-proxy": "the nft error above names the rule; `nft` is the Debian package nftables",
    "operator": "read the operator's log in {run_dir}/operator.log",
    "sync/operator": "the PodPrograms' status.message say why (`KUBECONFIG={run_dir}/kubeconfig "
                     "kubectl get pp -A -o yaml`); the operator's log is {run_dir}/operator.log",
}
CONTROLS = ("lab", "operator")
ROUTINGS = ("native", "vxlan", "auto")


class LabError(Exception):
    """A lab command failed; the message says which step and what to do."""


Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# -- up ---------------------------------------------------------------------------

def up(paths: list[str], *, nodes: int | None = None, backend: str | None = None,
       name: str = "lab", control: str = "lab", underlay: str = "switched",
       routing: str | None = None, kube_proxy: bool = False, image: str | None = None,
       echo: Echo = print) -> dict:
    """Build the lab; returns its state. `control`: "lab" (the lab's
    controller compiles and pushes) or "operator" (an API server and
    `tailor operator` do). `underlay`: "switched" (the nodes on one L2
    segment) or "routed" (each node on its own subnet behind a router);
    `routing`: the agents' --routing (default native when switched, vxlan
    when routed). `kube_proxy`: the nodes carry the nftables rules
    kube-proxy would write for the manifests' Services (lab/kubeproxy.py).
    `image`: the agents (and the operator) run as containers of tailor's
    image instead of from the checkout (lab/image.py)."""
    from tailor.operator.cluster import manifests
    from tailor.operator.errors import ManifestError

    root = os.geteuid() == 0
    backend = backend or ("kernel" if root else "emulated")
    if backend == "kernel" and not root:
        raise LabError("the kernel lab makes network namespaces and loads eBPF programs, which needs "
                       "root: run as root, or use --backend emulated")
    if control not in CONTROLS:
        raise LabError(f"control {control!r}: use one of {', '.join(CONTROLS)}")
    routing = routing or ("native" if underlay == "switched" else "vxlan")
    if routing not in ROUTINGS:
        raise LabError(f"routing {routing!r}: use one of {', '.join(ROUTINGS)}")
    if underlay == "routed" and routing == "native":
        raise LabError("a routed underlay has no L2 segment between nodes: native routing cannot "
                       "reach the other nodes' pods; use --routing vxlan or auto")
    if image:
        from tailor.lab import image as image_

        if backend != "kernel":
            raise LabError("--image runs the image's kernel agent in each node's namespace: it "
                           "needs the kernel backend (root)")
        try:
            image_.check(image)
        except image_.ImageError as e:
            raise LabError(str(e)) from None
    if control == "operator":
        try:
            import kmock  # noqa: F401 - the API server's engine
        except ImportError:
            raise LabError("--control operator serves the Kubernetes API with kmock, which is not "
                           "installed: scripts/install-deps.sh (or pip install kmock)") from None
    try:
        plan_.check_name(name)
    except plan_.PlanError as e:
        raise LabError(str(e)) from None
    if state_.exists(name):
        raise LabError(f"lab {name} already exists ({state_.path(name)}): "
                       f"`tailor lab down --name {name}` first, or pick another --name")
    try:
        cluster = manifests.load(paths)
        plan = plan_.make(cluster, name, nodes, underlay)
    except (ManifestError, plan_.PlanError) as e:
        raise LabError(str(e)) from None
    if backend == "kernel":
        stale = [n for n in netns_.names() if n.startswith(f"{name}.")]
        if stale:
            raise LabError(f"network namespaces of an earlier lab {name} are still there "
                           f"({', '.join(stale[:3])}{'...' if len(stale) > 3 else ''}): remove them "
                           f"with `ip netns delete`, or pick another --name")
        pins = os.path.join(BPFFS, f"tailor-lab-{name}")
        if os.path.exists(pins):
            raise LabError(f"pinned programs of an earlier lab {name} are still at {pins}: "
                           f"`rm -r {pins}`, or pick another --name")
    data = _initial(plan, backend, paths)
    data["control"] = control
    data["routing"] = routing if backend == "kernel" else "off"
    data["services"] = plan_.services(cluster)
    data["kube_proxy"] = bool(kube_proxy)
    data["image"] = image
    if kube_proxy and backend != "kernel":
        raise LabError("--kube-proxy writes nftables rules into the nodes' namespaces: it needs the "
                       "kernel backend")
    if control == "operator":
        from tailor.lab.control import operated

        operated.plan(data)
    state_.save(data)
    started = time.monotonic()
    echo(f"lab {name}: {len(plan.nodes)} nodes, {len(plan.pods)} pods, {backend} backend"
         + (", tailor operator" if control == "operator" else "")
         + (f", agents{' and operator' if control == 'operator' else ''} from {image}" if image else ""))
    if backend == "emulated":
        echo("  emulated: no namespaces, veths or CNI; agents run the programs in the userspace VM "
             "and `tailor lab probe` answers with their Trace RPC, not with real connections")
    control_steps = [("api", _api), ("operator", _operator)] if control == "operator" \
        else [("controller", _controller)]
    steps = ([("underlay", _underlay)] if backend == "kernel" else []) + control_steps + [
        ("agents", _agents), ("pods", _pods_kernel if backend == "kernel" else _pods_emulated),
        *([("kube-proxy", _kube_proxy)] if kube_proxy else []),
        ("sync", _sync_operator if control == "operator" else _sync)]
    step = "plan"
    try:
        for step, run in steps:
            data["step"] = step
            state_.save(data)
            t0 = time.monotonic()
            run(data, echo)
            echo(f"  {step}: done in {time.monotonic() - t0:.1f}s")
    except BaseException as e:
        fix = FIXES.get(f"{step}/{control}", FIXES.get(step, "")).format(name=name, run_dir=data["run_dir"])
        echo(f"lab {name}: step {step!r} failed; taking down what was made")
        logs = _keep_logs(data)
        try:
            down(name, echo=_quiet)
        except Exception as cleanup:   # report both; the first failure is the one to fix
            echo(f"  clean-up failed too: {cleanup}")
        if isinstance(e, KeyboardInterrupt):
            raise
        raise LabError(f"step {step!r} failed: {e}" + (f"\nfix: {fix}" if fix else "")
                       + (f"\nlogs kept in {logs}" if logs else "")) from e
    data["ready"] = True
    data["up_seconds"] = round(time.monotonic() - started, 2)
    state_.save(data)
    echo(f"lab {name} is up in {data['up_seconds']:.1f}s: `tailor lab status --name {name}`, "
         f"`tailor lab probe --name {name}`, `tailor lab down --name {name}`")
    return data


def _initial(plan: plan_.Plan, backend: str, paths: list[str]) -> dict:
    run = state_.run_dir(plan.name)
    bpffs = os.path.join(BPFFS, f"tailor-lab-{plan.name}") if backend == "kernel" else None
    nodes = []
    for n in plan.nodes:
        d = os.path.join(run, n.name)
        nodes.append({"name": n.name, "index": n.index, "netns": n.netns if backend == "kernel" else None,
                      "switch_port": n.switch_port, "underlay": list(n.underlay),
                      "gateways": list(n.gateways),
                      "pod_cidrs": list(n.pod_cidrs), "agent_socket": os.path.join(d, "agent.sock"),
                      "cni_socket": os.path.join(d, "cni.sock"), "state_dir": os.path.join(d, "state"),
                      "bpffs_root": os.path.join(bpffs, n.name) if bpffs else None, "made": False})
    pods = [{"namespace": p.namespace, "name": p.name, "kind": p.kind, "ref": p.ref, "node": p.node,
             "netns": p.netns if backend == "kernel" else None, "uid": p.uid,
             "container_id": p.container_id, "families": list(p.families), "addresses": [],
             "interface": "", "netns_made": False, "wired": False} for p in plan.pods]
    return {"name": plan.name, "backend": backend, "step": "plan", "ready": False, "run_dir": run,
            "manifests": [os.path.abspath(p) for p in paths], "created": time.time(),
            "underlay": plan.underlay,
            "switch": {"netns": plan.switch_netns, "bridge": plan_.BRIDGE}
            if backend == "kernel" and plan.underlay == "switched" else None,
            "router": {"netns": plan.switch_netns} if backend == "kernel" and plan.underlay == "routed" else None,
            "outside": {**plan_.outside(plan), **({} if backend == "kernel" else {"netns": None})},
            "bpffs_root": bpffs, "nodes": nodes, "pods": pods, "processes": {}}


def _underlay(data: dict, echo: Echo) -> None:
    sw, router = data["switch"], data.get("router")
    if sw:
        netns_.make_switch(sw["netns"], sw["bridge"])
    else:
        netns_.make_router(router["netns"])
    for node in data["nodes"]:
        node["made"] = True
        state_.save(data)
        if sw:
            netns_.make_node(sw["netns"], sw["bridge"], node, plan_.NODE_IFNAME)
        else:
            netns_.make_routed_node(router["netns"], node, plan_.NODE_IFNAME)
    data["outside"]["made"] = True
    state_.save(data)
    netns_.make_outside(sw["netns"] if sw else router["netns"], data["outside"],
                        bridge=sw["bridge"] if sw else None)
    if sw:
        # As a real node has one: the default route, here via the outside host.
        for node in data["nodes"]:
            netns_.default_route(node["netns"], data["outside"]["addresses"])


def _kube_proxy(data: dict, echo: Echo) -> None:
    from tailor.lab import kubeproxy

    count = kubeproxy.install(data)
    echo(f"  kube-proxy: {count} Service ports translated on each of {len(data['nodes'])} nodes")


def _api(data: dict, echo: Echo) -> None:
    from tailor.lab.control import operated

    operated.start_api(data, echo)


def _operator(data: dict, echo: Echo) -> None:
    from tailor.lab.control import operated

    operated.start_operator(data, echo)


def _controller(data: dict, echo: Echo) -> None:
    processes.start(data, "controller", processes.controller_argv(data))
    processes.wait_socket(data, "controller", os.path.join(data["run_dir"], "controller.sock"))


def _agents(data: dict, echo: Echo) -> None:
    for node in data["nodes"]:
        os.makedirs(node["state_dir"], exist_ok=True)
        if node["bpffs_root"]:
            os.makedirs(node["bpffs_root"], exist_ok=True)
        processes.start(data, f"agent/{node['name']}", processes.agent_argv(data, node),
                        processes.agent_netns(data, node))
    for node in data["nodes"]:
        processes.wait_agent(data, node)


def _wire_pods(data: dict, echo: Echo, wire: Callable) -> None:
    """Wire every pod, POD_WORKERS at a time. `wire(pod, node, record)` wires
    one; `record(**fields)` updates the pod's entry and saves the state file
    (one writer at a time). After each pod its addresses are reported (with
    the operator) and the progress shown."""
    lock = threading.Lock()
    done = [0]

    def one(pod: dict) -> None:
        def record(**fields) -> None:
            with lock:
                pod.update(fields)
                state_.save(data)

        wire(pod, state_.node(data, pod["node"]), record)
        _report(data, pod)
        with lock:
            done[0] += 1
            _progress(echo, done[0], len(data["pods"]))

    _parallel(one, data["pods"])


def _pods_kernel(data: dict, echo: Echo) -> None:
    from tailor.lab import cni

    def wire(pod: dict, node: dict, record: Callable) -> None:
        record(netns_made=True)
        netns_.make_pod(pod["netns"])
        started = time.monotonic()
        result = cni.add(data, node, pod)
        record(addresses=cni.addresses(result), interface=cni.host_interface(result), wired=True,
               cni_add_ms=round(1000 * (time.monotonic() - started), 1))

    _wire_pods(data, echo, wire)
    # ADD returns once the pod's program is attached: this is pod start as the runtime sees it.
    times = sorted(p["cni_add_ms"] for p in data["pods"])
    echo(f"  CNI ADD (program attached) p50 {_percentile(times, 50)} ms, "
         f"p99 {_percentile(times, 99)} ms over {len(times)} pods, {POD_WORKERS} at a time")


def _pods_emulated(data: dict, echo: Echo) -> None:
    """No CNI: the lab hands out addresses as the CNI's IPAM would (.1 is the
    gateway, kept back) and wires each pod through its node's Wire service."""
    import grpc

    from tailor.lab import emulated

    used: dict[str, int] = {}
    for pod in data["pods"]:
        node = state_.node(data, pod["node"])
        for family in pod["families"]:
            cidr = next((c for c in node["pod_cidrs"] if ipaddress.ip_network(c).version == family), None)
            if cidr is not None:
                used[cidr] = used.get(cidr, 1) + 1
                pod["addresses"].append(str(ipaddress.ip_network(cidr).network_address + used[cidr]))
    state_.save(data)

    def wire(pod: dict, node: dict, record: Callable) -> None:
        try:
            answer = emulated.wire(node["cni_socket"], {
                "namespace": pod["namespace"], "name": pod["name"], "uid": pod["uid"],
                "containerID": pod["container_id"], "addresses": pod["addresses"]})
        except grpc.RpcError as e:
            raise LabError(f"wiring {pod['ref']} on {pod['node']} failed: {e.details()}") from None
        record(interface=answer["interface"], wired=True)

    _wire_pods(data, echo, wire)


def _sync(data: dict, echo: Echo) -> None:
    from tailor.lab.control import controller

    answer = controller.call(os.path.join(data["run_dir"], controller.SOCKET), "Sync", {"timeout": 60})
    data["pushes"] = answer["pushes"]
    if not answer["synced"]:
        raise LabError("not every pod's program is loaded on its agent: " + "; ".join(answer["failures"]))
    # And what the agents hold is what the lab's own model compiles to: group
    # members included, which hand-offs racing each other can leave stale
    # until the reconcile loop repairs them.
    want = agents.wanted(data)
    deadline = time.monotonic() + 60
    while (why := agents.unsettled(data, want)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if why:
        raise LabError("the agents do not hold what the lab's model compiles to: " + "; ".join(why[:10]))
    _echo_pushes(data, echo, "every program Loaded", "controller")


def _report(data: dict, pod: dict) -> None:
    if data.get("control") == "operator":
        from tailor.lab.control import operated

        operated.report(data, pod)


def _sync_operator(data: dict, echo: Echo) -> None:
    from tailor.lab.control import operated

    data["pushes"] = operated.sync(data, lambda: agents.held(data), wanted=agents.wanted(data))
    _echo_pushes(data, echo, "every PodProgram Loaded", "operator")


def _echo_pushes(data: dict, echo: Echo, settled: str, who: str) -> None:
    echo(f"  {settled}: {len(data['pods'])} pods; {who} "
         + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in data["pushes"].items()))


def _percentile(sorted_values: list[float], pct: int) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, (len(sorted_values) * pct + 99) // 100 - 1)]


def _progress(echo: Echo, done: int, total: int) -> None:
    if done == total or total <= 20 or done % max(1, total // 10) == 0:
        echo(f"  pods {done}/{total}")


def _parallel(fn, items) -> None:
    with futures.ThreadPoolExecutor(max_workers=POD_WORKERS) as pool:
        for f in [pool.submit(fn, item) for item in items]:
            f.result()


def _keep_logs(data: dict) -> str | None:
    """Copy the run dir's logs out before `down` removes it."""
    run = data["run_dir"]
    logs = [f for f in os.listdir(run) if f.endswith(".log")] if os.path.isdir(run) else []
    if not logs:
        return None
    import tempfile

    keep = tempfile.mkdtemp(prefix=f"tailor-lab-{data['name']}-logs-")
    for f in logs:
        shutil.copy(os.path.join(run, f), keep)
    return keep


# -- status and probe -----------------------------------------------------------------

def load(name: str) -> dict:
    try:
        return state_.load(name)
    except FileNotFoundError:
        known = state_.labs()
        raise LabError(f"no lab named {name} under {state_.root()}"
                       + (f" (labs: {', '.join(known)})" if known else ": `tailor lab up -f PATH` makes one")) from None


def status(name: str) -> dict:
    """The state file joined with each agent's List (program state, hash, features)."""
    import grpc

    data = load(name)
    listed: dict[str, dict] = {}
    for node in data["nodes"]:
        node["agent"] = "running" if processes.alive(data["processes"].get(f"agent/{node['name']}")) else "not running"
        if node["agent"] != "running":
            continue
        try:
            pods = agents.listed(node)
        except grpc.RpcError as e:
            node["agent"] = f"not answering ({e.code().name})"
            continue
        for s in pods:
            listed[s["uid"] or s["key"]] = {k: s[k] for k in ("state", "hash", "features", "message",
                                                              "interface")}
    for pod in data["pods"]:
        pod["program"] = listed.get(pod["uid"]) or listed.get(f"{pod['namespace']}/{pod['name']}")
    control = data.get("control", "lab")
    keys = ("apiserver", "operator") if control == "operator" else ("controller",)
    data["control_plane"] = {k: "running" if processes.alive(data["processes"].get(k)) else "not running"
                             for k in keys}
    data["controller"] = data["control_plane"]["controller"] if control == "lab" else \
        ", ".join(f"{k} {v}" for k, v in data["control_plane"].items())
    return data


def probe(name: str, timeout: float | None = None) -> dict:
    from tailor.lab.probing import probe as probe_

    data = load(name)
    if not data.get("ready"):
        raise LabError(f"lab {name} is not up (its last step was {data['step']!r}): "
                       f"`tailor lab down --name {name}` and `up` again")
    return probe_.run(data, timeout or probe_.TIMEOUT)


# -- down -----------------------------------------------------------------------------

def down(name: str, echo: Echo = print) -> list[str]:
    """Undo everything the state file records; returns what was removed.
    Raises LabError listing what could not be removed."""
    from tailor.lab import cni

    data = load(name)
    removed, problems = [], []
    kernel = data["backend"] == "kernel"
    agents_up = {n["name"]: processes.alive(data["processes"].get(f"agent/{n['name']}"))
                 for n in data["nodes"]}
    # 1. CNI DEL per wired pod while its agent still runs: the agent detaches
    #    the program, deletes the veth and releases the addresses.
    if kernel:
        wired = [p for p in data["pods"] if p.get("wired") or p.get("netns_made")]

        def delete(pod: dict) -> None:
            if not agents_up.get(pod["node"]):
                return
            try:
                cni.delete(data, state_.node(data, pod["node"]), pod)
            except cni.CniError as e:
                problems.append(str(e))

        _parallel(delete, wired)
        if wired:
            removed.append(f"{len(wired)} pod attachments (CNI DEL)")
    # 2. Processes: agents, then the control plane; then anything still running
    #    inside the lab's namespaces (probe servers, test clients).
    # Reverse start order: the operator flushes its PodPrograms to a live API.
    order = {"operator": 1, "controller": 1, "apiserver": 2}
    for key in sorted(data.get("processes", {}), key=lambda k: order.get(k, 0)):
        if processes.stop(data, key):
            removed.append(f"process {key} (pid {data['processes'][key]['pid']})")
    if data.get("image"):
        from tailor.lab import image as image_

        removed += [f"container {c}" for c in image_.remove(data)]
    if kernel:
        namespaces = [p["netns"] for p in data["pods"]] + [n["netns"] for n in data["nodes"]] \
            + [x["netns"] for x in (data.get("outside"), data.get("switch"), data.get("router"))
               if x and x.get("netns")]
        _kill_inside(namespaces)
        # 3. Namespaces: deleting one deletes its interfaces (and veth peers).
        for ns in namespaces:
            try:
                if netns_.delete(ns):
                    removed.append(f"netns {ns}")
            except netns_.NetnsError as e:
                problems.append(str(e))
    # 4. Pinned programs, maps and links, then the run dir.
    if data.get("bpffs_root") and os.path.isdir(data["bpffs_root"]):
        shutil.rmtree(data["bpffs_root"], ignore_errors=True)
        removed.append(f"bpffs {data['bpffs_root']}")
    shutil.rmtree(data["run_dir"], ignore_errors=True)
    removed.append(f"run dir {data['run_dir']}")
    with contextlib.suppress(OSError):   # the root too, when this was its last lab
        os.rmdir(os.path.dirname(data["run_dir"]))
    left = leftovers(data)
    if left or problems:
        raise LabError(f"lab {name} is down but not clean: " + "; ".join(problems + left))
    echo(f"lab {name} is down: removed " + ", ".join(removed))
    return removed


def leftovers(data: dict) -> list[str]:
    """What of the lab still exists (nothing, after a clean `down`)."""
    left = [f"netns {n}" for n in netns_.names() if n.startswith(f"{data['name']}.")]
    if data.get("bpffs_root") and os.path.exists(data["bpffs_root"]):
        left.append(f"bpffs {data['bpffs_root']}")
    if os.path.exists(data["run_dir"]):
        left.append(f"run dir {data['run_dir']}")
    left += [f"process {k} (pid {e['pid']})" for k, e in data.get("processes", {}).items()
             if processes.alive(e)]
    return left


def _kill_inside(namespaces: list[str]) -> None:
    """SIGKILL what still runs inside the lab's namespaces (the lab started it all)."""
    import signal

    for ns in namespaces:
        if not netns_.exists(ns):
            continue
        pids = netns_.ip("netns", "pids", ns, check=False).split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
