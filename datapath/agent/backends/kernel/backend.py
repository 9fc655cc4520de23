"""The kernel backend itself: each pod's two programs loaded with bpf(),
attached with tcx links to its host-side veth, replaced by an atomic swap,
detached; its maps updated and read in place.

Chosen by `tailor agent --backend kernel` (through the registry in
backends/__init__.py); called by the agent core under its lock. Everything
it loads is pinned and recorded through persistence.Store, so the agent can
die and come back without a packet meeting no policy; all bpf() goes
through the eBPF toolkit (ebpf.kernel, ebpf.attach).

Replacing a pod's program (a new hash for the same uid): the new programs
and maps are loaded and filled beside the old ones and pinned under
`<direction>_next`, the next meta is written, then each tcx link is switched
to the new program with BPF_LINK_UPDATE (atomic: a packet meets the old
program or the new one, never none), then the `_next` pins replace the old
ones by rename and the old objects are released. A program the verifier
rejects never reaches a link; the old one stays in force.

Trace (base.Backend.trace) runs BPF_PROG_TEST_RUN on scratch copies of the
pods' programs, loaded for the trace against fresh connection tracking,
fresh counters, and copies of the live endpoints and identity maps, all closed
when the trace is done.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os

from tailor.datapath import groups as groups_
from tailor.datapath import layout
from tailor.datapath.agent.backends import base
from tailor.datapath.agent.backends.kernel import persistence
from tailor.datapath.ebpf import errors, kernel

log = logging.getLogger("tailor.agent.kernel")


class KernelBackend(base.Backend):
    name = "kernel"

    def __init__(self, node: str, *, bpffs_root: str | None = None, state_dir: str | None = None,
                 netns: str | None = None):
        """`netns`: the named network namespace (under /var/run/netns) the
        pods' host-side interfaces live in; None is the agent's own."""
        super().__init__()
        self.node = node
        self.store = persistence.Store(
            bpffs_root or os.path.join(persistence.DEFAULT_BPFFS_ROOT, node),
            state_dir or os.path.join(persistence.DEFAULT_STATE_DIR, node), netns)
        self.node_maps: dict[str, kernel.KernelMap] = {}
        self._pods: dict[str, persistence.Pod] = {}
        self._saved_groups: dict | None = None      # groups.json as last written

    # -- start / stop ----------------------------------------------------------------

    def start(self) -> list[base.Adopted]:
        with self._lock:
            self.store.make_dirs()
            self.store.open_node_maps(self.node_maps)
            pinned = self.store.pinned()
            pods = [p for p in (self.store.adopt(d, self.node_maps) for d in pinned) if p is not None]
            self.groups = self._restore_groups(pods)
            self._saved_groups = self.groups.to_json()
            adopted = []
            for pod in pods:
                self._pods[pod.key] = pod
                base.put_endpoints(self.node_maps, pod.endpoint)
                if pod.received is not None:
                    pod = self._keep_numbering(pod)
                adopted.append(base.Adopted(self._pod_state(pod), pod.endpoint, pod.received))
            self.store.forget_unpinned(pinned)
            self._groups_changed()
            return adopted

    def _restore_groups(self, pods: list[persistence.Pod]):
        """The node's groups as they were: groups.json, else the bits the
        adopted pods' programs were loaded with, and the members read back
        from the identity maps — which are then made to hold exactly what
        that registry says (an entry holding bits nobody knows is rewritten,
        or it would join a future group)."""
        saved = self.store.read_groups_file()
        bits = dict(saved.get("bits", {}))
        for pod in pods:
            for g, b in sorted(pod.meta.get("groups", {}).items()):
                if g not in bits and b not in bits.values():
                    bits[g] = b
        names = [m.name for m in (*layout.IDS_MAPS.values(), *layout.PORTS_MAPS.values())]
        live = {n: dict(self.node_maps[n].items()) for n in names}
        registry = groups_.NodeGroups.restore({**saved, "bits": bits}, live)
        want = registry.contents()
        fixes = {n: {**{k: v for k, v in want[n].items() if live[n].get(k) != v},
                     **{k: None for k in live[n].keys() - want[n].keys()}} for n in names}
        base.write_entries(self.node_maps, fixes)
        return registry

    def _keep_numbering(self, pod: persistence.Pod) -> persistence.Pod:
        """An adopted pod's programs test groups by the bits they were loaded
        with: the registry keeps those bits, or (groups.json lost or out of
        step) the programs are resolved again and swapped in."""
        tested = frozenset(i.group for insns in pod.received.insns.values() for i in insns if i.group)
        recorded = pod.meta.get("groups", {})
        if set(recorded) == tested and all(self.groups.claim(g, b) for g, b in sorted(recorded.items())):
            self.groups.hold(pod.key, tested)
            return pod
        try:
            insns, groups = self._resolved(pod.received)
            bits = {g: self.groups.bit(g) for g in groups}
            swapped = self._swap(pod, pod.endpoint, pod.received, self._load(pod.received, insns), bits)
        except (base.AttachFailed, errors.KernelError) as e:
            log.error("pod %s: its programs could not be resolved again to this node's groups: %s; "
                      "they stay as loaded until the next Apply", pod.key, e)
            self.groups.hold(pod.key, tested)
            return pod
        self._pods[pod.key] = swapped
        self.groups.hold(pod.key, groups)
        return swapped

    def stop(self) -> None:
        """Close our fds; links, programs and maps stay pinned and in force."""
        with self._lock:
            for pod in self._pods.values():
                pod.close()
            self._pods.clear()
            for m in self.node_maps.values():
                m.close()
            self.node_maps.clear()

    # -- attach ------------------------------------------------------------------------

    def attach(self, endpoint: base.Endpoint, received) -> tuple[base.PodState, bool]:
        key = received.key
        with self._lock:
            old = self._pods.get(key)
            # Same pod, same program, same interface: no reload; only the
            # maps take what this Apply says (peers may have changed).
            if (old is not None and old.meta["uid"] == received.uid
                    and old.meta["hash"] == received.hash and old.endpoint == endpoint):
                base.sync_pod_maps(key, _own(old), received)
                return self._pod_state(old), False
            # A re-created pod (new uid) or a re-wired one (new interface): start afresh.
            if old is not None and (old.meta["uid"] != received.uid
                                    or old.endpoint.host_ifindex != endpoint.host_ifindex):
                self.detach(key)
                old = None
            insns, groups = self._resolved(received)
            bits = {g: self.groups.bit(g) for g in groups}
            new = self._load(received, insns)
            try:
                if old is None:
                    pod = self._attach_new(endpoint, received, new, bits)
                else:
                    pod = self._swap(old, endpoint, received, new, bits)
            except BaseException:
                for side in new.values():
                    side.close()
                raise
            if old is not None:
                base.drop_endpoints(self.node_maps, old.endpoint)
            self._pods[key] = pod
            base.put_endpoints(self.node_maps, endpoint)
            self.groups.hold(key, groups)
            self._groups_changed()
            return self._pod_state(pod), True

    def _groups_changed(self) -> None:
        saved = self.groups.to_json()
        if saved != self._saved_groups:
            self.store.write_groups(saved)
            self._saved_groups = saved

    def _load(self, received, insns: dict) -> dict[str, persistence.Side]:
        """Both programs and their own maps, filled; by fd only, nothing pinned."""
        sides: dict[str, persistence.Side] = {}
        try:
            for d in layout.DIRECTIONS:
                bound, own = {}, {}
                for spec in received.maps[d]:
                    if spec.name in layout.NODE_MAPS:
                        bound[spec.name] = self.node_maps[spec.name]
                        continue
                    if not persistence.pinnable(spec.name):
                        raise base.AttachFailed(f"pod {received.key}: map name {spec.name!r} "
                                                "is not usable as a pin name")
                    m = kernel.KernelMap.create(spec)
                    own[spec.name] = bound[spec.name] = m
                    for k, v in received.entries.get(d, {}).get(spec.name, {}).items():
                        m.update(k, v)
                sides[d] = persistence.Side(None, None, own)
                name = f"tl{d[0]}_{received.hash[:10]}"
                sides[d].prog = kernel.KernelProgram.load(insns[d], bound, name=name)
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

    def _attach_new(self, endpoint: base.Endpoint, received,
                    sides: dict[str, persistence.Side], bits: dict[str, int]) -> persistence.Pod:
        dirname = persistence.pod_dirname(received.namespace, received.name, received.uid)
        self.store.remove_pins(dirname)     # leftovers of an attach that died half-way
        meta = persistence.pod_meta(endpoint, received, bits)
        try:
            for d, side in sides.items():
                self.store.pin_side(side, dirname, d)
            self.store.write_state(dirname, meta, received)
            for d, side in sides.items():
                self.store.attach_link(side, dirname, d, endpoint.host_ifindex)
        except errors.KernelError as e:
            self._unlink(sides)
            self.store.remove(dirname)
            raise base.AttachFailed(f"pod {received.key}: attaching to {endpoint.host_ifname} "
                                    f"(ifindex {endpoint.host_ifindex}): {e}") from None
        except BaseException:
            self._unlink(sides)
            self.store.remove(dirname)
            raise
        return persistence.Pod(dirname, endpoint, meta, received, sides)

    def _swap(self, old: persistence.Pod, endpoint: base.Endpoint, received,
              new: dict[str, persistence.Side], bits: dict[str, int]) -> persistence.Pod:
        """Switch the existing links to the new programs (see the module doc)."""
        dirname = old.dirname
        meta = persistence.pod_meta(endpoint, received, bits)
        switched = []
        try:
            for d, side in new.items():
                kernel.remove_tree(self.store.pin_dir(dirname, d, nxt=True))
                self.store.pin_side(side, dirname, d, nxt=True)
            self.store.write_state(dirname, meta, received, suffix=".next")
            for d in layout.DIRECTIONS:
                old.sides[d].link.update(new[d].prog)
                switched.append(d)
        except BaseException as e:
            for d in switched:               # back to the old program, still loaded
                try:
                    old.sides[d].link.update(old.sides[d].prog)
                except errors.KernelError:
                    pass
            self.store.discard_next(dirname)
            if isinstance(e, errors.KernelError):
                raise base.AttachFailed(f"pod {received.key}: switching to hash {received.hash}: "
                                        f"{e}; hash {old.meta['hash']} stays in force") from None
            raise
        self._finish_swap(dirname)
        for d in layout.DIRECTIONS:
            new[d].link, old.sides[d].link = old.sides[d].link, None
            old.sides[d].close()
        return persistence.Pod(dirname, endpoint, meta, received, new)

    def _finish_swap(self, dirname: str) -> None:
        # A method of its own, so that a test can cut a swap short right
        # after the links switched and before the pins moved.
        self.store.finish_swap(dirname)

    # -- detach --------------------------------------------------------------------------

    def detach(self, key: str) -> bool:
        with self._lock:
            pod = self._pods.pop(key, None)
            if pod is None:
                return False
            self._unlink(pod.sides)
            self.store.remove(pod.dirname)
            base.drop_endpoints(self.node_maps, pod.endpoint)
            pod.close()
            self.groups.release(key)
            self._groups_changed()
            return True

    def _unlink(self, sides: dict[str, persistence.Side]) -> None:
        for side in sides.values():
            if side.link is None:
                continue
            try:
                side.link.detach()
            except errors.KernelError as e:
                if e.errno not in (errno.ENOLINK, errno.EINVAL, errno.ENOENT):
                    raise

    # -- maps ----------------------------------------------------------------------------

    def update_maps(self, key: str, maps: dict[str, dict[str, dict[bytes, bytes]]]) -> int:
        with self._lock:
            return base.update_pod_maps(key, self._own_maps(key), maps)

    # -- reading -------------------------------------------------------------------------

    def _pod(self, key: str) -> persistence.Pod:
        pod = self._pods.get(key)
        if pod is None:
            raise base.UnknownPod(f"pod {key} has no programs on node {self.node}")
        return pod

    def _pod_state(self, pod: persistence.Pod) -> base.PodState:
        meta, ep = pod.meta, pod.endpoint
        loads = {}
        for d, side in pod.sides.items():
            info = side.prog.info()
            link = side.link.info() if side.link is not None else None
            loads[d] = base.LoadInfo(
                program_id=info.id, verified_insns=info.verified_insns,
                attach=(f"tcx/{layout.hook(d)} ifindex {link.ifindex} ({ep.host_ifname}), "
                        f"link {link.id}" if link else "not attached"),
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

    # -- base.Backend's hooks for counters() and trace() -------------------------------

    def _own_maps(self, key: str) -> dict[str, dict]:
        return _own(self._pod(key))

    def _node_maps(self) -> dict[str, kernel.KernelMap]:
        return self.node_maps

    def _endpoints(self) -> dict[str, base.Endpoint]:
        return {k: p.endpoint for k, p in self._pods.items()}

    @contextlib.contextmanager
    def _scratch(self, keys: set[str]):
        """Scratch programs and maps by fd (nothing pinned), every one closed
        on the way out."""
        owned: list = []

        def create(spec) -> kernel.KernelMap:
            m = kernel.KernelMap.create(spec)
            owned.append(m)
            return m

        try:
            node_maps = base.scratch_node_maps(self.node_maps, create)
            progs = {key: self._scratch_programs(self._pods[key], node_maps, create, owned)
                     for key in keys}

            def run(key: str, direction: str, frame: bytes, mark: int) -> tuple[int, bytes, int]:
                result = progs[key][direction].test_run(frame, ctx=kernel.SkbCtx(mark=mark) if mark else None)
                return result.retval, result.data, result.skb.mark

            yield run
        finally:
            for obj in owned:
                obj.close()

    def _scratch_programs(self, pod: persistence.Pod, node_maps: dict, create, owned: list) -> dict:
        if pod.received is None:
            raise ValueError(f"pod {pod.key}: its program could not be read back after a "
                             "restart; apply it again to trace it")
        entries = base.scratch_entries(_own(pod))
        insns, _ = self._resolved(pod.received)
        progs = {}
        for d in layout.DIRECTIONS:
            bound = {}
            for spec in pod.received.maps[d]:
                if spec.name in node_maps:
                    bound[spec.name] = node_maps[spec.name]
                    continue
                bound[spec.name] = m = create(spec)
                for k, v in entries[d].get(spec.name, {}).items():
                    m.update(k, v)
            progs[d] = kernel.KernelProgram.load(insns[d], bound, name=f"tltrace_{d[0]}")
            owned.append(progs[d])
        return progs


def _own(pod: persistence.Pod) -> dict[str, dict[str, kernel.KernelMap]]:
    """{direction: {map name: map}}: the pod's own maps."""
    return {d: side.maps for d, side in pod.sides.items()}
