"""The kernel backend: each pod's two programs loaded with bpf(), attached
with tcx links to its host-side veth, and everything pinned on bpffs so the
agent can die and come back without a packet meeting no policy.

Chosen by `tailor agent --backend kernel`; called by the agent core under its
lock. All bpf() goes through the eBPF toolkit (ebpf.kernel, ebpf.attach).

Pins (bpffs, default /sys/fs/bpf/tailor/<node>):

    maps/{ct4,ct6,endpoints4,endpoints6}          node-wide, shared by every pod
    pods/<ns>_<name>_<uid>/ingress/prog             into the pod: tcx egress of the veth
    pods/<ns>_<name>_<uid>/ingress/link
    pods/<ns>_<name>_<uid>/ingress/<map>            the pod's own maps (stats, peers4, ...)
    pods/<ns>_<name>_<uid>/egress/...               from the pod: tcx ingress of the veth
    pods/<ns>_<name>_<uid>/<direction>_next/...     only while a new program is swapped in

State files (a plain directory, default /var/lib/tailor/<node>):

    pods/<ns>_<name>_<uid>/meta.json        hash, features, addresses, endpoint
    pods/<ns>_<name>_<uid>/program.pb       the PodProgram message in force
    pods/<ns>_<name>_<uid>/meta.next.json   } only while a swap is under way
    pods/<ns>_<name>_<uid>/program.next.pb  }

Replacing a pod's program (a new hash for the same uid): the new programs
and maps are loaded and filled beside the old ones and pinned under
`<direction>_next`, the next meta is written, then each tcx link is switched
to the new program with BPF_LINK_UPDATE (atomic: a packet meets the old
program or the new one, never none), then the `_next` pins replace the old
ones by rename and the old objects are released. A program the verifier
rejects never reaches a link; the old one stays in force.

Adoption (start): the node maps, every pod's links, programs and maps are
reopened from their pins and the meta files. A swap cut short is finished or
undone by what the links run: links already on the `_next` program roll
forward (the other link is switched too), links on the old one roll back. A
pod whose host interface vanished (its tcx link lost its device) or whose
meta is missing is removed, pins and endpoint entries included.

Trace runs BPF_PROG_TEST_RUN on scratch copies of the pods' programs, loaded
for the trace against fresh connection tracking, fresh counters, and copies
of the live endpoints and peer maps. Running the live programs would record
the traced connection in the live conntrack map — a diagnostic would open a
reply path in the real datapath — and count in the pod's real counters.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import threading

from tailor.datapath.agent import wire
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.backends import base
from tailor.datapath.ebpf import attach as attach_
from tailor.datapath.ebpf import errors, isa, kernel
from tailor.datapath.ebpf.maps import MapType
from tailor.operator.compiler import layout

DEFAULT_BPFFS_ROOT = "/sys/fs/bpf/tailor"
DEFAULT_STATE_DIR = "/var/lib/tailor"
# File names inside a direction's pin directory that are not maps.
RESERVED = ("prog", "link")
# Suffix of a direction's pin directory while a swap is under way (bpffs
# refuses names with a dot).
NEXT = "_next"
# Scratch connection tracking for traces: a trace makes at most a few entries.
SCRATCH_ENTRIES = 64


@dataclasses.dataclass
class _Side:
    """One direction of an attached pod: program, link and own maps by fd."""
    prog: kernel.KernelProgram
    link: attach_.Link | None
    maps: dict[str, kernel.KernelMap]

    def close(self) -> None:
        for obj in (self.prog, self.link, *self.maps.values()):
            if obj is not None:
                obj.close()


def _live_entries(sides: dict[str, _Side], received) -> dict[str, dict[str, dict[bytes, bytes]]]:
    """The pod's own hash/LPM maps as they are in the kernel (stats and array
    maps, which hold every index, keep what `received` says)."""
    out = {d: dict(tables) for d, tables in received.entries.items()}
    for d, side in sides.items():
        for name, m in side.maps.items():
            if name != layout.STATS.name and m.spec.type not in (MapType.ARRAY, MapType.PERCPU_ARRAY):
                out.setdefault(d, {})[name] = dict(m.items())
    return out


@dataclasses.dataclass
class _Pod:
    dirname: str                     # <ns>_<name>_<uid>
    endpoint: base.Endpoint
    meta: dict
    received: object                 # wire.Received, None if program.pb is unreadable
    sides: dict[str, _Side]

    @property
    def key(self) -> str:
        return f"{self.meta['namespace']}/{self.meta['name']}"

    def close(self) -> None:
        for side in self.sides.values():
            side.close()


def _hook(direction: str) -> str:
    """The veth hook a pod's program sits on: into the pod is the host-side
    veth's egress, out of the pod its ingress."""
    return "egress" if direction == "ingress" else "ingress"


def pod_dirname(namespace: str, name: str, uid: str) -> str:
    # Namespaces and names are DNS labels and uids UUIDs: no '_' in any of them.
    return f"{namespace}_{name}_{uid or 'nouid'}"


class KernelBackend(base.Backend):
    name = "kernel"

    def __init__(self, node: str, *, bpffs_root: str | None = None, state_dir: str | None = None,
                 netns: str | None = None):
        """`netns`: the named network namespace (under /var/run/netns) the
        pods' host-side interfaces live in; None is the agent's own."""
        self.node = node
        self.root = bpffs_root or os.path.join(DEFAULT_BPFFS_ROOT, node)
        self.state_dir = state_dir or os.path.join(DEFAULT_STATE_DIR, node)
        self.netns = netns
        self.node_maps: dict[str, kernel.KernelMap] = {}
        self._pods: dict[str, _Pod] = {}
        self._lock = threading.RLock()

    # -- paths -----------------------------------------------------------------------

    def _pin_dir(self, dirname: str, direction: str | None = None, nxt: bool = False) -> str:
        path = os.path.join(self.root, "pods", dirname)
        if direction:
            path = os.path.join(path, direction + (NEXT if nxt else ""))
        return path

    def _state(self, dirname: str, filename: str = "") -> str:
        return os.path.join(self.state_dir, "pods", dirname, filename)

    # -- start / stop ----------------------------------------------------------------

    def start(self) -> list[base.Adopted]:
        with self._lock:
            kernel.ensure_dir(os.path.join(self.root, "maps"))
            kernel.ensure_dir(os.path.join(self.root, "pods"))
            os.makedirs(os.path.join(self.state_dir, "pods"), exist_ok=True)
            self._open_node_maps()
            adopted = []
            pinned = sorted(os.listdir(os.path.join(self.root, "pods")))
            for dirname in pinned:
                pod = self._adopt(dirname)
                if pod is not None:
                    self._pods[pod.key] = pod
                    base.put_endpoints(self.node_maps, pod.endpoint)
                    adopted.append(base.Adopted(self._pod_state(pod), pod.endpoint, pod.received))
            # State left by a pod whose pins are gone (e.g. bpffs remounted).
            for dirname in os.listdir(os.path.join(self.state_dir, "pods")):
                if dirname not in pinned:
                    shutil.rmtree(self._state(dirname), ignore_errors=True)
            return adopted

    def _open_node_maps(self) -> None:
        for name, spec in layout.NODE_MAPS.items():
            if name in self.node_maps:
                continue
            path = os.path.join(self.root, "maps", name)
            if os.path.exists(path):
                m = kernel.KernelMap.open_pinned(path, name=name)
                if dataclasses.replace(m.spec, name=name) != spec:
                    m.close()
                    raise base.BackendError(
                        f"node map pinned at {path} is {m.spec}, this agent needs {spec}; "
                        "remove the pod programs and the pin to recreate it")
            else:
                m = kernel.KernelMap.create(spec)
                m.pin(path)
            self.node_maps[name] = m

    def stop(self) -> None:
        """Close our fds; links, programs and maps stay pinned and in force."""
        with self._lock:
            for pod in self._pods.values():
                pod.close()
            self._pods.clear()
            for m in self.node_maps.values():
                m.close()
            self.node_maps.clear()

    # -- adoption ----------------------------------------------------------------------

    def _adopt(self, dirname: str) -> _Pod | None:
        """Reopen one pinned pod, finishing or undoing a swap cut short.
        None (after removing it) when it cannot be adopted."""
        try:
            with open(self._state(dirname, "meta.json")) as f:
                meta = json.load(f)
            endpoint = base.Endpoint.from_json(meta["endpoint"])
        except (OSError, ValueError, KeyError, TypeError):
            self._remove_pins(dirname)         # no record of what it is: not ours to keep
            shutil.rmtree(self._state(dirname), ignore_errors=True)
            return None
        sides: dict[str, _Side] = {}
        try:
            for d in base.DIRECTIONS:
                sides[d] = self._open_side(self._pin_dir(dirname, d), with_link=True)
            meta = self._settle_swap(dirname, meta, sides)
            if not self._links_alive(dirname, endpoint, sides):
                raise _Vanished()
        except (_Vanished, errors.KernelError, OSError):
            for side in sides.values():
                side.close()
            self._remove_pod_files(dirname, endpoint)
            return None
        received = self._read_program(dirname, "program.pb")
        if received is not None:
            # program.pb has the entries of the last Apply; UpdateMaps since
            # then changed only the pinned maps, which are the truth.
            received = dataclasses.replace(received, entries=_live_entries(sides, received))
        return _Pod(dirname, endpoint, meta, received, sides)

    def _open_side(self, path: str, with_link: bool) -> _Side:
        side = _Side(None, None, {})
        try:
            side.prog = kernel.KernelProgram.open_pinned(os.path.join(path, "prog"))
            link_path = os.path.join(path, "link")
            if with_link and os.path.exists(link_path):
                side.link = attach_.Link.open_pinned(link_path)
            for name in sorted(os.listdir(path)):
                if name not in RESERVED:
                    side.maps[name] = kernel.KernelMap.open_pinned(os.path.join(path, name), name=name)
        except BaseException:
            side.close()
            raise
        return side

    def _settle_swap(self, dirname: str, meta: dict, sides: dict[str, _Side]) -> dict:
        """A `_next` left by a swap cut short: roll forward if any link already
        runs the new program, else throw the new objects away."""
        nexts = {d: self._pin_dir(dirname, d, nxt=True) for d in base.DIRECTIONS}
        if not any(os.path.exists(p) for p in nexts.values()):
            return meta
        try:
            new = {d: self._open_side(p, with_link=False) for d, p in nexts.items()}
            with open(self._state(dirname, "meta.next.json")) as f:
                next_meta = json.load(f)
        except (errors.KernelError, OSError, ValueError):
            new, next_meta = None, None
        running = {d: s.link.info().prog_id for d, s in sides.items() if s.link is not None}
        if new and any(running.get(d) == new[d].prog.info().id for d in base.DIRECTIONS):
            for d in base.DIRECTIONS:
                if sides[d].link is not None and running[d] != new[d].prog.info().id:
                    sides[d].link.update(new[d].prog)
            for d in base.DIRECTIONS:
                sides[d].prog.close()
                for m in sides[d].maps.values():
                    m.close()
                sides[d] = _Side(new[d].prog, sides[d].link, new[d].maps)
            self._finish_swap(dirname)
            return next_meta
        for side in (new or {}).values():
            side.close()
        for p in nexts.values():
            kernel.remove_tree(p)
        for name in ("meta.next.json", "program.next.pb"):
            _remove(self._state(dirname, name))
        return meta

    def _links_alive(self, dirname: str, endpoint: base.Endpoint, sides: dict[str, _Side]) -> bool:
        """Every link on the endpoint's interface. A link whose device is gone
        reads ifindex 0; a missing link is remade if the interface is there."""
        for d, side in sides.items():
            if side.link is not None:
                info = side.link.info()
                if info.ifindex == endpoint.host_ifindex:
                    if info.prog_id != side.prog.info().id:   # not what the pins say: make it so
                        side.link.update(side.prog)
                    continue
                side.link.close()
                kernel.unpin(os.path.join(self._pin_dir(dirname, d), "link"))
                side.link = None
            if not self._interface_is(endpoint):
                return False
            side.link = attach_.attach_tcx(side.prog, endpoint.host_ifindex, _hook(d), netns=self.netns)
            side.link.pin(os.path.join(self._pin_dir(dirname, d), "link"))
        return True

    def _interface_is(self, endpoint: base.Endpoint) -> bool:
        """Whether the endpoint's host interface still exists under its name
        and index (an index can be reused by a newer interface)."""
        from pyroute2 import IPRoute   # lazily: ~350 ms, and only on this rare path
        with (IPRoute(netns=self.netns) if self.netns else IPRoute()) as ipr:
            try:
                links = ipr.get_links(endpoint.host_ifindex)
            except Exception:
                return False
            return any(lk.get_attr("IFLA_IFNAME") == endpoint.host_ifname for lk in links)

    def _read_program(self, dirname: str, filename: str):
        try:
            with open(self._state(dirname, filename), "rb") as f:
                return wire.from_proto(pb.PodProgram.FromString(f.read()))
        except (OSError, ValueError):
            return None

    # -- attach ------------------------------------------------------------------------

    def attach(self, endpoint: base.Endpoint, received) -> tuple[base.PodState, bool]:
        key = received.key
        with self._lock:
            old = self._pods.get(key)
            # Same pod, same program, same interface: no reload; only the
            # maps take what this Apply says (peers may have changed).
            if (old is not None and old.meta["uid"] == received.uid
                    and old.meta["hash"] == received.hash and old.endpoint == endpoint):
                base.sync_pod_maps(key, {d: side.maps for d, side in old.sides.items()}, received)
                return self._pod_state(old), False
            # A re-created pod (new uid) or a re-wired one (new interface): start afresh.
            if old is not None and (old.meta["uid"] != received.uid
                                    or old.endpoint.host_ifindex != endpoint.host_ifindex):
                self.detach(key)
                old = None
            new = self._load(received)
            try:
                if old is None:
                    pod = self._attach_new(endpoint, received, new)
                else:
                    pod = self._swap(old, endpoint, received, new)
            except BaseException:
                for side in new.values():
                    side.close()
                raise
            if old is not None:
                base.drop_endpoints(self.node_maps, old.endpoint)
            self._pods[key] = pod
            base.put_endpoints(self.node_maps, endpoint)
            return self._pod_state(pod), True

    def _load(self, received) -> dict[str, _Side]:
        """Both programs and their own maps, filled; by fd only, nothing pinned."""
        sides: dict[str, _Side] = {}
        try:
            for d in base.DIRECTIONS:
                bound, own = {}, {}
                for spec in received.maps[d]:
                    if spec.name in layout.NODE_MAPS:
                        bound[spec.name] = self.node_maps[spec.name]
                        continue
                    if spec.name in RESERVED or "/" in spec.name or "." in spec.name:
                        raise base.AttachFailed(f"pod {received.key}: map name {spec.name!r} "
                                                "is not usable as a pin name")
                    m = kernel.KernelMap.create(spec)
                    own[spec.name] = bound[spec.name] = m
                    for k, v in received.entries.get(d, {}).get(spec.name, {}).items():
                        m.update(k, v)
                sides[d] = _Side(None, None, own)
                name = f"tl{d[0]}_{received.hash[:10]}"
                sides[d].prog = kernel.KernelProgram.load(received.insns[d], bound, name=name)
        except (errors.KernelError, ValueError) as e:
            for side in sides.values():
                side.close()
            if isinstance(e, base.AttachFailed):
                raise
            raise base.AttachFailed(f"pod {received.key}: the {d} program (hash {received.hash}) "
                                    f"was not loaded: {e}") from None
        except BaseException:
            for side in sides.values():
                side.close()
            raise
        return sides

    def _pin_side(self, side: _Side, path: str) -> None:
        side.prog.pin(os.path.join(path, "prog"))
        for name, m in side.maps.items():
            m.pin(os.path.join(path, name))

    def _write_state(self, dirname: str, meta: dict, received, suffix: str = "") -> None:
        os.makedirs(self._state(dirname), exist_ok=True)
        _write_atomic(self._state(dirname, f"meta{suffix}.json"),
                      json.dumps(meta, indent=1, sort_keys=True).encode())
        message = _to_message(received)
        _write_atomic(self._state(dirname, f"program{suffix}.pb"), message.SerializeToString())

    def _attach_new(self, endpoint: base.Endpoint, received, sides: dict[str, _Side]) -> _Pod:
        dirname = pod_dirname(received.namespace, received.name, received.uid)
        self._remove_pins(dirname)          # leftovers of an attach that died half-way
        meta = _meta(endpoint, received)
        try:
            for d, side in sides.items():
                self._pin_side(side, self._pin_dir(dirname, d))
            self._write_state(dirname, meta, received)
            for d, side in sides.items():
                side.link = attach_.attach_tcx(side.prog, endpoint.host_ifindex, _hook(d),
                                               netns=self.netns)
                side.link.pin(os.path.join(self._pin_dir(dirname, d), "link"))
        except errors.KernelError as e:
            self._unlink(sides)
            self._remove_pins(dirname)
            shutil.rmtree(self._state(dirname), ignore_errors=True)
            raise base.AttachFailed(f"pod {received.key}: attaching to {endpoint.host_ifname} "
                                    f"(ifindex {endpoint.host_ifindex}): {e}") from None
        except BaseException:
            self._unlink(sides)
            self._remove_pins(dirname)
            shutil.rmtree(self._state(dirname), ignore_errors=True)
            raise
        return _Pod(dirname, endpoint, meta, received, sides)

    def _swap(self, old: _Pod, endpoint: base.Endpoint, received, new: dict[str, _Side]) -> _Pod:
        """Switch the existing links to the new programs (see the module doc)."""
        dirname = old.dirname
        meta = _meta(endpoint, received)
        switched = []
        try:
            for d, side in new.items():
                path = self._pin_dir(dirname, d, nxt=True)
                kernel.remove_tree(path)
                self._pin_side(side, path)
            self._write_state(dirname, meta, received, suffix=".next")
            for d in base.DIRECTIONS:
                old.sides[d].link.update(new[d].prog)
                switched.append(d)
        except BaseException as e:
            for d in switched:               # back to the old program, still loaded
                try:
                    old.sides[d].link.update(old.sides[d].prog)
                except errors.KernelError:
                    pass
            for d in base.DIRECTIONS:
                kernel.remove_tree(self._pin_dir(dirname, d, nxt=True))
            for name in ("meta.next.json", "program.next.pb"):
                _remove(self._state(dirname, name))
            if isinstance(e, errors.KernelError):
                raise base.AttachFailed(f"pod {received.key}: switching to hash {received.hash}: "
                                        f"{e}; hash {old.meta['hash']} stays in force") from None
            raise
        self._finish_swap(dirname)
        for d in base.DIRECTIONS:
            new[d].link, old.sides[d].link = old.sides[d].link, None
            old.sides[d].close()
        return _Pod(dirname, endpoint, meta, received, new)

    def _finish_swap(self, dirname: str) -> None:
        """The links run the `_next` programs: make the `_next` pins the pins
        (idempotent, so an adoption can finish what a crash interrupted)."""
        for d in base.DIRECTIONS:
            cur, nxt = self._pin_dir(dirname, d), self._pin_dir(dirname, d, nxt=True)
            if not os.path.isdir(nxt):
                continue
            for name in os.listdir(cur):
                if name != "link":
                    kernel.unpin(os.path.join(cur, name))
            for name in os.listdir(nxt):
                os.rename(os.path.join(nxt, name), os.path.join(cur, name))
            os.rmdir(nxt)
        for name in ("meta", "program"):
            ext = ".json" if name == "meta" else ".pb"
            nxt = self._state(dirname, f"{name}.next{ext}")
            if os.path.exists(nxt):
                os.replace(nxt, self._state(dirname, f"{name}{ext}"))

    # -- detach --------------------------------------------------------------------------

    def detach(self, key: str) -> bool:
        with self._lock:
            pod = self._pods.pop(key, None)
            if pod is None:
                return False
            self._unlink(pod.sides)
            self._remove_pod_files(pod.dirname, pod.endpoint)
            pod.close()
            return True

    def _unlink(self, sides: dict[str, _Side]) -> None:
        for side in sides.values():
            if side.link is None:
                continue
            try:
                side.link.detach()
            except errors.KernelError as e:
                if e.errno not in (errno.ENOLINK, errno.EINVAL, errno.ENOENT):
                    raise

    def _remove_pins(self, dirname: str) -> None:
        """Detach any pinned links (a pin keeps a link attached), then unpin."""
        path = self._pin_dir(dirname)
        if not os.path.isdir(path):
            return
        for root, _, files in os.walk(path):
            if "link" in files:
                try:
                    with attach_.Link.open_pinned(os.path.join(root, "link")) as link:
                        link.detach()
                except errors.KernelError:
                    pass
        kernel.remove_tree(path)

    def _remove_pod_files(self, dirname: str, endpoint: base.Endpoint) -> None:
        self._remove_pins(dirname)
        shutil.rmtree(self._state(dirname), ignore_errors=True)
        base.drop_endpoints(self.node_maps, endpoint)

    # -- maps ----------------------------------------------------------------------------

    def update_maps(self, key: str, maps: dict[str, dict[str, dict[bytes, bytes]]]) -> int:
        with self._lock:
            pod = self._pod(key)
            return base.update_pod_maps(key, {d: side.maps for d, side in pod.sides.items()}, maps)

    # -- reading -------------------------------------------------------------------------

    def _pod(self, key: str) -> _Pod:
        pod = self._pods.get(key)
        if pod is None:
            raise base.UnknownPod(f"pod {key} has no programs on node {self.node}")
        return pod

    def _pod_state(self, pod: _Pod) -> base.PodState:
        meta, ep = pod.meta, pod.endpoint
        loads = {}
        for d, side in pod.sides.items():
            info = side.prog.info()
            link = side.link.info() if side.link is not None else None
            loads[d] = base.LoadInfo(
                program_id=info.id, verified_insns=info.verified_insns,
                attach=(f"tcx/{_hook(d)} ifindex {link.ifindex} ({ep.host_ifname}), link {link.id}"
                        if link else "not attached"),
                hash=meta["hash"], instructions=meta["instructions"].get(d, 0))
        return base.PodState(meta["namespace"], meta["name"], meta["uid"], base.State.LOADED, "",
                             meta["hash"], tuple(meta["features"]), tuple(ep.addresses),
                             ep.host_ifname, loads.get("ingress"), loads.get("egress"))

    def pods(self) -> list[base.PodState]:
        with self._lock:
            return [self._pod_state(p) for _, p in sorted(self._pods.items())]

    def state(self, key: str) -> base.PodState | None:
        with self._lock:
            pod = self._pods.get(key)
            return None if pod is None else self._pod_state(pod)

    def endpoint(self, key: str) -> base.Endpoint | None:
        pod = self._pods.get(key)
        return pod.endpoint if pod else None

    def link_ids(self, key: str) -> dict[str, tuple[int, int]]:
        """{direction: (link id, program id)}: what is attached, for tests and tools."""
        with self._lock:
            pod = self._pod(key)
            return {d: (s.link.info().id, s.link.info().prog_id) for d, s in pod.sides.items()}

    def counters(self, key: str) -> base.Counters:
        with self._lock:
            pod = self._pod(key)
            return base.Counters(*(base.stat_totals(pod.sides[d].maps[layout.STATS.name])
                                   if layout.STATS.name in pod.sides[d].maps else (0, 0, 0)
                                   for d in base.DIRECTIONS))

    def trace(self, src: str, dst: str, protocol: str, src_port: int, dst_port: int
              ) -> base.TraceResult:
        with self._lock:
            endpoints = {k: p.endpoint for k, p in self._pods.items()}
            s, d = base.resolve_end(src, endpoints), base.resolve_end(dst, endpoints)
            flow = base.pick_flow(s, d, protocol, src_port, dst_port)
            owned: list = []
            try:
                scratch = {}
                for name, spec in layout.NODE_MAPS.items():
                    if name in (layout.CT4.name, layout.CT6.name):
                        spec = dataclasses.replace(spec, max_entries=SCRATCH_ENTRIES)
                    scratch[name] = kernel.KernelMap.create(spec)
                    owned.append(scratch[name])
                    if name not in (layout.CT4.name, layout.CT6.name):
                        for k, v in self.node_maps[name].items():
                            scratch[name].update(k, v)
                progs = {}
                for key in {e.key for e in (s, d) if e.key}:
                    progs[key] = self._scratch_programs(self._pods[key], scratch, owned)

                def run(key: str, direction: str, frame: bytes) -> tuple[int, bytes]:
                    result = progs[key][direction].test_run(frame)
                    return result.retval, result.data

                return base.walk(run, s, d, flow)
            finally:
                for obj in owned:
                    obj.close()

    def _scratch_programs(self, pod: _Pod, scratch: dict, owned: list) -> dict:
        if pod.received is None:
            raise ValueError(f"pod {pod.key}: its program could not be read back after a "
                             "restart; apply it again to trace it")
        progs = {}
        for d in base.DIRECTIONS:
            bound = {}
            for spec in pod.received.maps[d]:
                if spec.name in scratch:
                    bound[spec.name] = scratch[spec.name]
                    continue
                m = kernel.KernelMap.create(spec)
                owned.append(m)
                bound[spec.name] = m
                live = pod.sides[d].maps.get(spec.name)
                if live is not None and spec.name != layout.STATS.name:
                    for k, v in live.items():
                        m.update(k, v)
            progs[d] = kernel.KernelProgram.load(pod.received.insns[d], bound, name=f"tltrace_{d[0]}")
            owned.append(progs[d])
        return progs


class _Vanished(Exception):
    """A pinned pod's host interface is gone."""


def _meta(endpoint: base.Endpoint, received) -> dict:
    return {"namespace": received.namespace, "name": received.name, "uid": received.uid,
            "hash": received.hash, "features": list(received.features),
            "addresses": list(received.addresses), "endpoint": endpoint.to_json(),
            "instructions": {d: len(received.insns[d]) for d in base.DIRECTIONS}}


def _to_message(received) -> pb.PodProgram:
    """A Received back into its message, for program.pb."""
    msg = pb.PodProgram(pod=pb.PodRef(namespace=received.namespace, name=received.name,
                                      uid=received.uid),
                        addresses=list(received.addresses), hash=received.hash,
                        features=list(received.features))
    for d in base.DIRECTIONS:
        part = getattr(msg, d)
        part.direction = d
        _fill_program(part, received.insns[d], received.maps[d])
    for d in base.DIRECTIONS:
        for name, table in sorted(received.entries.get(d, {}).items()):
            msg.maps.add(direction=d, map=name,
                         entries=[pb.MapEntry(key=k, value=v) for k, v in sorted(table.items())])
    return msg


def _fill_program(part: pb.Program, insns, maps) -> None:
    slot = 0
    for insn in insns:
        if insn.ref is not None:
            part.relocations.add(slot=slot, map=insn.ref, pseudo=insn.src)
        slot += insn.slots
    part.insns = isa.encode(insns)
    for m in maps:
        part.maps.add(name=m.name, type=int(m.type), key_size=m.key_size,
                      value_size=m.value_size, max_entries=m.max_entries, flags=m.flags)
    part.instructions = len(insns)
    part.annotations.extend(i.comment or "" for i in insns)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
