"""The emulated backend: pods' programs and maps held by the userspace VM,
nothing in the kernel.

Chosen by `tailor agent --backend emulated` (kind clusters, machines without
eBPF, the lab without root). The CNI still wires every pod, so pods have
connectivity; nothing is enforced. What this backend gives is the same
programs, the same maps and the same node-wide endpoints the kernel backend
would hold, so Trace and Counters answer what the kernel would do.

Trace (base.Backend.trace) runs the VM on scratch copies (empty connection
tracking, fresh counters, the pods' current peer maps and endpoints): a
trace is a new connection, and it leaves the node's maps as it found them —
like the kernel backend's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random

from tailor.datapath import groups
from tailor.datapath.agent.backends import base
from tailor.datapath.ebpf import vm
from tailor.datapath import layout


class _Pod:
    def __init__(self, endpoint: base.Endpoint, received, programs: dict, maps: dict):
        self.endpoint = endpoint
        self.received = received
        self.programs = programs          # direction -> vm.Program
        self.maps = maps                  # direction -> {name: VmMap}, the pod's own

    def state(self) -> base.PodState:
        r, ep = self.received, self.endpoint
        loads = {d: base.LoadInfo(program_id=0, verified_insns=0,
                                  attach=f"vm/{layout.hook(d)} ifindex {ep.host_ifindex} "
                                         f"({ep.host_ifname})",
                                  hash=r.hash, instructions=r.instructions[d])
                 for d in layout.DIRECTIONS}
        return base.PodState(r.namespace, r.name, r.uid, base.State.LOADED, "", r.hash,
                             tuple(r.features), tuple(ep.addresses), ep.host_ifname,
                             loads["ingress"], loads["egress"])


class EmulatedBackend(base.Backend):
    name = "emulated"

    def __init__(self, node: str = ""):
        # base's lock also keeps the VM's programs, which are not reentrant,
        # to one run at a time.
        super().__init__()
        self.node = node
        self.node_maps: dict[str, vm.VmMap] = {}
        self._pods: dict[str, _Pod] = {}

    def start(self) -> list[base.Adopted]:
        with self._lock:
            if not self.node_maps:
                self.node_maps = {n: vm.VmMap.create(s) for n, s in layout.NODE_MAPS.items()}
            return []

    def stop(self) -> None:
        with self._lock:
            self._pods.clear()
            self.node_maps.clear()
            self.groups = groups.NodeGroups()

    # -- attach / detach -------------------------------------------------------------

    def attach(self, endpoint: base.Endpoint, received) -> tuple[base.PodState, bool]:
        key = received.key
        with self._lock:
            old = self._pods.get(key)
            # Same pod, same program, same interface: no reload; only the
            # maps take what this Apply says (peers may have changed).
            if (old is not None and old.received.uid == received.uid
                    and old.received.hash == received.hash and old.endpoint == endpoint):
                base.sync_pod_maps(key, old.maps, received)
                old.received = received
                return old.state(), False
            insns, groups = self._resolved(received)
            programs, maps = self._load(received, insns, self.node_maps)
            if old is not None:
                base.drop_endpoints(self.node_maps, old.endpoint)
            pod = _Pod(endpoint, received, programs, maps)
            self._pods[key] = pod
            self.groups.hold(key, groups)
            base.put_endpoints(self.node_maps, endpoint)
            return pod.state(), True

    def _load(self, received, insns: dict, node_maps) -> tuple[dict, dict]:
        """VM programs of `insns` (received's, groups resolved) and the pod's
        own maps, filled from received.entries."""
        programs, owned = {}, {}
        for d in layout.DIRECTIONS:
            bound, owned[d] = {}, {}
            for spec in received.maps[d]:
                if spec.name in layout.NODE_MAPS:
                    bound[spec.name] = node_maps[spec.name]
                    continue
                try:
                    m = vm.VmMap.create(spec)
                    for k, v in received.entries.get(d, {}).get(spec.name, {}).items():
                        m.update(k, v)
                except (ValueError, vm.MapError) as e:
                    raise base.AttachFailed(f"pod {received.key}: {d} map {spec.name!r}: {e}") from None
                bound[spec.name] = owned[d][spec.name] = m
            try:
                programs[d] = vm.Program(list(insns[d]), bound)
            except (vm.VmError, ValueError, KeyError) as e:
                raise base.AttachFailed(f"pod {received.key}: the {d} program does not load "
                                        f"in the VM: {e}") from None
        return programs, owned

    def detach(self, key: str) -> bool:
        with self._lock:
            pod = self._pods.pop(key, None)
            if pod is None:
                return False
            base.drop_endpoints(self.node_maps, pod.endpoint)
            self.groups.release(key)
            return True

    def update_maps(self, key: str, maps: dict[str, dict[str, dict[bytes, bytes]]]) -> int:
        with self._lock:
            return base.update_pod_maps(key, self._own_maps(key), maps)

    # -- reading ---------------------------------------------------------------------

    def _pod(self, key: str) -> _Pod:
        pod = self._pods.get(key)
        if pod is None:
            raise base.UnknownPod(f"pod {key} has no programs on node {self.node or '(this)'}")
        return pod

    def pods(self) -> list[base.PodState]:
        with self._lock:
            return [p.state() for _, p in sorted(self._pods.items())]

    def state(self, key: str) -> base.PodState | None:
        with self._lock:
            pod = self._pods.get(key)
            return None if pod is None else pod.state()

    def endpoint(self, key: str) -> base.Endpoint | None:
        pod = self._pods.get(key)
        return pod.endpoint if pod else None

    def run(self, key: str, direction: str, frame: bytes) -> tuple[int, bytes]:
        """One packet through a pod's live VM program (it counts and may
        record connections, as a packet on the wire would)."""
        with self._lock:
            result = self._pod(key).programs[direction].run(frame, ktime_ns=1,
                                                           prandom_seed=random.getrandbits(32))
            return result.retval, result.packet

    # -- base.Backend's hooks for counters() and trace() -------------------------------

    def _own_maps(self, key: str) -> dict[str, dict]:
        return self._pod(key).maps

    def _node_maps(self) -> dict[str, vm.VmMap]:
        return self.node_maps

    def _endpoints(self) -> dict[str, base.Endpoint]:
        return {k: p.endpoint for k, p in self._pods.items()}

    @contextlib.contextmanager
    def _scratch(self, keys: set[str]):
        """VM programs on scratch maps; nothing to release but memory."""
        node_maps = base.scratch_node_maps(self.node_maps, vm.VmMap.create)
        programs = {}
        for key in keys:
            pod = self._pods[key]
            copy = dataclasses.replace(pod.received, entries=base.scratch_entries(pod.maps))
            programs[key], _ = self._load(copy, self._resolved(copy)[0], node_maps)

        def run(key: str, direction: str, frame: bytes, mark: int) -> tuple[int, bytes, int]:
            ctx = vm.SkbContext.from_packet(frame, mark=mark) if mark else None
            result = programs[key][direction].run(frame, ctx=ctx, ktime_ns=1,
                                                  prandom_seed=random.getrandbits(32))
            return result.retval, result.packet, result.ctx.mark

        yield run
