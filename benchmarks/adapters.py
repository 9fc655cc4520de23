"""Every call the benchmarks make into tailor, in one place.

The sections never import tailor themselves: when tailor's internals move,
this module is re-pointed and the sections keep measuring the same thing.
Each function goes through the highest-level helper there is — the tracer's
Node fills a program's maps and the node's identity maps, Desired plans,
events.World applies watch events, the datapath's NodeGroups says what a
node's identity maps hold — so no section packs map contents or knows a
map's layout. Written against commit 67dab9a (peers as node-wide groups,
programs compiled once per shape and patched per pod).

Called by the section modules only. Nothing here times anything: the
sections hold the clocks.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys

from tailor.datapath import groups as node_groups
from tailor.datapath import packets as pk
from tailor.datapath import trace
from tailor.datapath.ebpf.builder import Builder, R0
from tailor.datapath.ebpf.helper_ids import TcAct
from tailor.operator import tracing
from tailor.operator.cluster import manifests
from tailor.operator.cluster.state import ClusterState
from tailor.operator.compiler import resolve, template
from tailor.operator.compiler import spec as S

# The tailor being measured: its checkout (or a snapshot of one).
TAILOR_ROOT = pathlib.Path(tracing.__file__).resolve().parents[1]
PASSING = trace.PASSING
BPFFS = "/sys/fs/bpf"


def provenance() -> dict:
    """Where the measured tailor came from: its folder and, if that is a git
    checkout, the commit and the files changed since it (a dirty tree is
    not the commit). A snapshot made with `git archive` carries a COMMIT file."""
    out = {"tailor_root": str(TAILOR_ROOT)}
    stamp = TAILOR_ROOT / "COMMIT"
    if stamp.exists():
        out["commit"] = stamp.read_text().strip()
        out["changed_files"] = []
        return out
    try:
        git = ["git", "-C", str(TAILOR_ROOT)]
        out["commit"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                                       check=True).stdout.strip()
        status = subprocess.run(git + ["status", "--porcelain"], capture_output=True, text=True,
                                check=True).stdout.splitlines()
        out["changed_files"] = sorted(line[3:] for line in status if not line[3:].startswith("benchmarks/"))
    except (OSError, subprocess.CalledProcessError):
        out["commit"] = None
    return out


def kernel_unavailable() -> str | None:
    """Why BPF_PROG_TEST_RUN and program loads cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (bpf())"
    if not os.path.ismount(BPFFS):
        return f"needs bpffs at {BPFFS} (scripts/install-deps.sh mounts it)"
    return None


# -- cluster state and compiling ------------------------------------------------------

def state_of(objects: list[dict]) -> ClusterState:
    """A ClusterState from manifest dicts, read as from files."""
    state = ClusterState()
    manifests.apply(state, [("benchmark", o) for o in objects])
    return state


def pod_refs(state: ClusterState) -> list[str]:
    """Every pod that has an address, in name order (what gets a program)."""
    return [p.ref for p in state.sorted_pods() if p.ips]


class Generator:
    """Resolve + compile pods of one state, as the operator's full plan does:
    a Resolver (pods alike share one resolution) and Templates (a program
    shape compiled once, each later pod of that shape patched with its own
    constants). `new_shape` says whether the last pod compiled a template."""

    def __init__(self, state: ClusterState):
        self.state = state
        self._resolver = resolve.Resolver(state)
        self._templates = template.Templates()
        self.new_shape = False

    def __call__(self, ref: str):
        """(spec, programs) for one pod."""
        before = self._templates.compiled
        spec = self._resolver.resolve(self.state.find_pod(ref))
        programs = self._templates.compile(spec)
        self.new_shape = self._templates.compiled != before
        return spec, programs


def generate(state: ClusterState, ref: str):
    """(spec, programs) for one pod of `state`."""
    return Generator(state)(ref)


def instructions(programs, direction: str) -> int:
    return programs.program(direction).instructions


def features(programs) -> list[str]:
    return list(programs.features)


def shape_key(programs) -> tuple:
    """What tells two pods' programs apart but for their constants (the hash
    covers addresses too): features and both instruction counts."""
    return (programs.features, programs.ingress.instructions, programs.egress.instructions)


# -- the kernel: loading and BPF_PROG_TEST_RUN ------------------------------------------

class KernelNode:
    """Pods' programs loaded in the kernel as one node holds them: the
    tracer's Node (it fills the node's identity maps with the members of
    the groups a program tests, from `state`, creates the pod's own maps,
    and loads the programs with their groups bound). Close it when done."""

    def __init__(self, state: ClusterState):
        self._node = tracing.Node(trace.engine("kernel"), state)

    def add(self, spec, programs) -> None:
        self._node.add(spec, programs)

    def add_generic(self, spec) -> None:
        """The pod on the generic programs, its policy in their maps."""
        self._node.add_generic(spec)

    def set_services(self, state: ClusterState) -> None:
        """The node's Service table for `state`, as its agent holds it."""
        from tailor.operator.compiler import servicemaps

        self._node.set_services(servicemaps.entries(state)[0])

    def loaded(self, pod: str, direction: str):
        return self._node.pods[pod].loaded[direction]

    def programs(self, pod: str):
        return self._node.pods[pod].programs

    @property
    def size(self) -> int:
        return len(self._node.pods)

    def close(self) -> None:
        self._node.close()


@contextlib.contextmanager
def kernel_node(state: ClusterState):
    node = KernelNode(state)
    try:
        yield node
    finally:
        node.close()


@contextlib.contextmanager
def floor_program():
    """The floor: `r0 = TC_ACT_OK; exit`, built with tailor's Builder."""
    from tailor.datapath.ebpf import kernel

    b = Builder()
    b.mov64(R0, int(TcAct.OK))
    b.exit()
    loaded = kernel.KernelProgram.load(b.assemble(), {}, name="bench_floor")
    try:
        yield loaded
    finally:
        loaded.close()


def test_run(loaded, packet: bytes, repeat: int) -> tuple[float, int]:
    """(ns per run, return value) of `repeat` BPF_PROG_TEST_RUN repetitions."""
    run = loaded.test_run(packet, repeat=repeat)
    return run.duration_ns, run.retval


def verified_insns(loaded) -> int:
    return loaded.info().verified_insns


def frame(src: str, dst: str, protocol: str, sport: int, dport: int) -> bytes:
    """A connection's first packet (TCP SYN) from src to dst."""
    return pk.frame(pk.Flow(src, dst, protocol, sport, dport), tcp_flags=pk.TCP_SYN)


# -- the program's shape, as plain data (for the C generator) ------------------------------

def shape(spec) -> dict:
    """The logic of a pod's two programs as plain data:
    {"families": [4, 6], "ipv4": ..., "ipv6": ...,
     "ingress"/"egress": {"tiers": [{"kind": "anp"|"np"|"banp", "rules": [
         {"action": "Allow"|"Deny"|"Pass",
          "peers": [["cidr", net, [excepts]] | ["group", i] | ["any"]],
          "ports": None | [["range", proto, lo, hi] | ["named", proto, slot]]}]}]}}
    Groups and named ports are numbered in the order the pod's rules name
    them (a node numbers them its own way; the compares are the same)."""
    numbers: dict = {}

    def number(key) -> int:
        return numbers.setdefault(key, sum(1 for k in numbers if k[0] == key[0]))

    def peer(p):
        if isinstance(p, S.Cidr):
            return ["cidr", p.cidr, list(p.excepts)]
        if isinstance(p, S.Group):
            return ["group", number(("group", p.id))]
        return ["any"]

    def port(p):
        if isinstance(p, S.NamedPort):
            return ["named", p.protocol, number(("named", p.id))]
        return ["range", p.protocol, p.lo, p.hi]

    out = {"families": list(spec.families), "ipv4": spec.ipv4, "ipv6": spec.ipv6}
    for direction in S.DIRECTIONS:
        d = spec.direction(direction)
        out[direction] = {"tiers": [
            {"kind": t.kind.value, "rules": [
                {"action": r.action.value, "peers": [peer(p) for p in r.peers],
                 "ports": None if r.ports is None else [port(p) for p in r.ports]}
                for r in t.rules]} for t in d.tiers]}
    return out


# -- the operator's model: watch events, planning, what is pushed ---------------------------

class Change:
    """What one watch event did: the pods to plan again and the groups whose
    members moved (both feed the next plan)."""

    def __init__(self, pods: set[str], groups: set[str]):
        self.pods, self.groups = pods, groups

    def __len__(self) -> int:
        return len(self.pods)


class OperatorModel:
    """The operator's model and planner without kopf or gRPC, wired as its
    engine wires them: watch events into events.World (which mutates the
    ClusterState, computes the affected pods with tailor.operator.affected
    and the moved groups with its Memberships), then Desired.plan over
    those, each push marked sent as the pusher does once an agent has it."""

    def __init__(self):
        from tailor.operator import desired
        from tailor.operator.controller import events

        self._events = events
        self.world = events.World()
        self.desired = desired.Desired(self.world.memberships)

    def load(self, objects: list[dict]) -> list[str]:
        """The initial listing; returns the objects' errors (none expected)."""
        _, errors = self.world.load([(o["kind"], o) for o in objects])
        return errors

    def event(self, obj: dict, deleted: bool = False) -> Change:
        """One watch event; what it changed."""
        outcome = self.world.apply(obj["kind"], self._events.DELETED if deleted else "MODIFIED", obj)
        if outcome.error:
            raise ValueError(outcome.error)
        return Change(outcome.affected, outcome.groups)

    def plan(self, change: Change | None = None) -> list:
        """Every pod (None: the full plan) or what `change` touched."""
        if change is None:
            pushes = self.desired.plan(self.world.state)
        else:
            pushes = self.desired.plan(self.world.state, change.pods, change.groups)
        for push in pushes:
            if push.error:
                raise ValueError(f"{push.pod}: {push.error}")
            self.desired.sent(push)
        return pushes

    @property
    def pods(self) -> int:
        return len(self.world.state.pods)


def map_entries_by_node(pushes) -> dict[str, int]:
    """{node: map entries its agent holds after `pushes`}: the node's identity
    maps as the agent's NodeGroups fills them from the pushes' group
    members (one entry per address, whatever the number of groups and pods
    naming it), plus the pods' own map entries."""
    nodes: dict[str, node_groups.NodeGroups] = {}
    own: dict[str, int] = {}
    for push in pushes:
        node = push.node or ""
        if push.groups:
            nodes.setdefault(node, node_groups.NodeGroups()).update(push.groups, full=push.full)
        own[node] = own.get(node, 0) + sum(len(m) for maps in (push.entries or {}).values()
                                           for m in maps.values())
    return {node: own.get(node, 0) + sum(len(table) for table in nodes[node].contents().values())
            if node in nodes else own.get(node, 0) for node in set(own) | set(nodes)}


def push_counts(pushes) -> dict[str, int]:
    out: dict[str, int] = {}
    for push in pushes:
        out[push.action] = out.get(push.action, 0) + 1
    return out


# -- the operator end to end (kmock + kopf + emulated agents) -------------------------------

def operator_world_class():
    """tests/operator/operator_world.World: the API emulator (kmock, in a child
    process), the operator in a thread, three emulated agents. Raises
    ImportError when kmock or kopf is missing."""
    import kmock  # noqa: F401 - fail early with the missing package's name
    sys.path.insert(0, str(TAILOR_ROOT / "tests" / "operator"))
    from operator_world import World
    return World


def operator_held(world) -> dict[str, str]:
    """{pod key: program hash} every agent holds now."""
    out = {}
    for agent in world.agents.values():
        with agent.core._lock:
            for key, received in agent.core._programs.items():
                out[key] = received.hash
    return out


def operator_peer_everywhere(world, address: str) -> bool:
    """Every agent holds `address` as a member of some peer group (the new
    peer reached every node's identity maps)."""
    for agent in world.agents.values():
        held = agent.core.backend.groups
        if not any(address in held.members(g) for g in held.groups()):
            return False
    return True


def operator_counts(world, but: str = "") -> dict[str, int]:
    """What the agents were sent since the last reset, summed over pods and
    nodes, leaving out what pod `but` (its own start) was sent."""
    return {name: sum(n for key, n in counter.items() if key != but) for name, counter in world.counts().items()}


# -- the kernel lab --------------------------------------------------------------------------

def lab_up(path: str, *, nodes: int, name: str, control: str = "lab", workers: int | None = None,
           echo=None) -> dict:
    """`tailor lab up -f path --nodes N --backend kernel --control C`; returns
    the lab's state (its documented state.json). `workers`: CNI ADDs at a
    time — lab.up has no parameter for it, so its module constant is set
    for the call and restored."""
    from tailor.lab import lab

    if lab_exists(name):
        lab_down(name)
    saved = lab.POD_WORKERS
    lab.POD_WORKERS = workers or saved
    try:
        return lab.up([path], nodes=nodes, backend="kernel", name=name, control=control,
                      echo=echo or (lambda _: None))
    finally:
        lab.POD_WORKERS = saved


def lab_exists(name: str) -> bool:
    from tailor.lab import state

    return state.exists(name)


def lab_down(name: str) -> None:
    from tailor.lab import lab

    if lab_exists(name):
        lab.down(name, echo=lambda _: None)


def lab_probe_differences(name: str) -> tuple[int, list[str]]:
    """Real connections between every pair of the lab's pods against the
    model: (connections probed, differences)."""
    from tailor.lab import state
    from tailor.lab.probing import probe

    data = state.load(name)
    result = probe.run(data)
    return len(result["connections"]), probe.differences(result["connections"], probe.expected(data))
