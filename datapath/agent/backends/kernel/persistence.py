"""What the kernel backend keeps across agent restarts, and how the next
agent takes it back: the pins on bpffs, the state files beside them, and
adoption at start.

Called by the kernel backend (backend.py): at start to open the node maps
and adopt every pinned pod, on attach and swap to pin a pod's objects and
record its program, on detach to remove all of it. All bpf() goes through
the eBPF toolkit (ebpf.kernel, ebpf.attach); pyroute2 only to ask whether
an interface still exists, and only then.

Pins (bpffs, default /sys/fs/bpf/tailor/<node>):

    maps/{ct4,ct6,endpoints4,endpoints6}          node-wide, shared by every pod
    pods/<ns>_<name>_<uid>/ingress/prog             into the pod: tcx egress of the veth
    pods/<ns>_<name>_<uid>/ingress/link
    pods/<ns>_<name>_<uid>/ingress/<map>            the pod's own maps (stats, peers4, ...)
    pods/<ns>_<name>_<uid>/egress/...               from the pod: tcx ingress of the veth
    pods/<ns>_<name>_<uid>/<direction>_next/...     only while a new program is swapped in

State files (a plain directory, default /var/lib/tailor/<node>), each
written to a temporary file, synced and renamed over the old one, so a
crash leaves the old file or the new one, never half of either:

    groups.json                             the node's numbering of peer groups and which
                                            groups the program source wants here (their
                                            members are read back from the pinned ids/ports maps)
    pods/<ns>_<name>_<uid>/meta.json        hash, features, addresses, endpoint, instructions,
                                            the bit of each group its programs were loaded with
    pods/<ns>_<name>_<uid>/program.pb       the PodProgram message in force (wire.received_to_proto)
    pods/<ns>_<name>_<uid>/meta.next.json   } only while a swap is under way
    pods/<ns>_<name>_<uid>/program.next.pb  }

Adoption (start): the node maps, every pod's links, programs and maps are
reopened from their pins and the meta files. A swap cut short is finished or
undone by what the links run: links already on the `_next` program roll
forward (the other link is switched too), links on the old one roll back. A
pod whose host interface vanished (its tcx link lost its device) or whose
meta is missing is removed, pins and endpoint entries included.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

from tailor.datapath import layout
from tailor.datapath.agent import wire
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath.agent.backends import base
from tailor.datapath.ebpf import attach as attach_
from tailor.datapath.ebpf import errors, kernel
from tailor.datapath.ebpf.maps import MapType

DEFAULT_BPFFS_ROOT = "/sys/fs/bpf/tailor"
DEFAULT_STATE_DIR = "/var/lib/tailor"
# File names inside a direction's pin directory that are not maps.
RESERVED = ("prog", "link")
# Suffix of a direction's pin directory while a swap is under way (bpffs
# refuses names with a dot).
NEXT = "_next"
NEXT_FILES = ("meta.next.json", "program.next.pb")


@dataclasses.dataclass
class Side:
    """One direction of an attached pod: program, link and own maps by fd."""
    prog: kernel.KernelProgram
    link: attach_.Link | None
    maps: dict[str, kernel.KernelMap]

    def close(self) -> None:
        for obj in (self.prog, self.link, *self.maps.values()):
            if obj is not None:
                obj.close()


@dataclasses.dataclass
class Pod:
    dirname: str                     # <ns>_<name>_<uid>
    endpoint: base.Endpoint
    meta: dict
    received: object                 # wire.Received, None if program.pb is unreadable
    sides: dict[str, Side]

    @property
    def key(self) -> str:
        return f"{self.meta['namespace']}/{self.meta['name']}"

    def close(self) -> None:
        for side in self.sides.values():
            side.close()


def pod_dirname(namespace: str, name: str, uid: str) -> str:
    # Namespaces and names are DNS labels and uids UUIDs: no '_' in any of them.
    return f"{namespace}_{name}_{uid or 'nouid'}"


def pinnable(map_name: str) -> bool:
    """Whether a pod's own map can be pinned under its name beside prog and link."""
    return map_name not in RESERVED and "/" not in map_name and "." not in map_name


def pod_meta(endpoint: base.Endpoint, received, bits: dict[str, int] | None = None) -> dict:
    """meta.json for `received` on `endpoint`; instructions counted as the
    compiler counts them (8-byte slots); `bits`: the node's bit of each group
    its loaded programs test (what they were resolved with)."""
    return {"namespace": received.namespace, "name": received.name, "uid": received.uid,
            "hash": received.hash, "features": list(received.features),
            "addresses": list(received.addresses), "endpoint": endpoint.to_json(),
            "instructions": dict(received.instructions), "groups": dict(sorted((bits or {}).items()))}


class _Vanished(Exception):
    """A pinned pod's host interface is gone."""


class Store:
    """One node's pins and state files: `root` on bpffs, `state_dir` a plain
    directory; `netns` the named network namespace the pods' host-side
    interfaces live in (None: the agent's own)."""

    def __init__(self, root: str, state_dir: str, netns: str | None):
        self.root = root
        self.state_dir = state_dir
        self.netns = netns

    # -- paths -----------------------------------------------------------------------

    def pin_dir(self, dirname: str, direction: str | None = None, nxt: bool = False) -> str:
        path = os.path.join(self.root, "pods", dirname)
        if direction:
            path = os.path.join(path, direction + (NEXT if nxt else ""))
        return path

    def state_path(self, dirname: str, filename: str = "") -> str:
        return os.path.join(self.state_dir, "pods", dirname, filename)

    # -- start -----------------------------------------------------------------------

    def make_dirs(self) -> None:
        kernel.ensure_dir(os.path.join(self.root, "maps"))
        kernel.ensure_dir(os.path.join(self.root, "pods"))
        os.makedirs(os.path.join(self.state_dir, "pods"), exist_ok=True)

    def pinned(self) -> list[str]:
        """The pods pinned under the root: their dirnames, sorted."""
        return sorted(os.listdir(os.path.join(self.root, "pods")))

    def forget_unpinned(self, pinned: list[str]) -> None:
        """Remove the state files of pods not in `pinned` (their pins are
        gone, e.g. bpffs was remounted)."""
        for dirname in os.listdir(os.path.join(self.state_dir, "pods")):
            if dirname not in pinned:
                shutil.rmtree(self.state_path(dirname), ignore_errors=True)

    def open_node_maps(self, node_maps: dict[str, kernel.KernelMap]) -> None:
        """Fill `node_maps` with the pinned node-wide maps, creating and
        pinning those not there yet. A pinned map of another shape is an
        error: pods' programs still use it."""
        for name, spec in layout.NODE_MAPS.items():
            if name in node_maps:
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
            node_maps[name] = m

    def read_groups_file(self) -> dict:
        """groups.json as last written ({} when there is none)."""
        path = os.path.join(self.state_dir, "groups.json")
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise base.BackendError(f"{path}: {e}; remove it and the agent numbers the node's "
                                    "groups again from its pods' programs") from None

    def write_groups(self, saved: dict) -> None:
        """groups.json: what datapath.groups.NodeGroups.to_json() gave."""
        _write_atomic(os.path.join(self.state_dir, "groups.json"),
                      json.dumps(saved, sort_keys=True).encode())

    # -- adoption --------------------------------------------------------------------

    def adopt(self, dirname: str, node_maps: dict[str, kernel.KernelMap]) -> Pod | None:
        """Reopen one pinned pod, finishing or undoing a swap cut short.
        None (after removing it, and its entries in `node_maps`) when it
        cannot be adopted."""
        try:
            with open(self.state_path(dirname, "meta.json")) as f:
                meta = json.load(f)
            endpoint = base.Endpoint.from_json(meta["endpoint"])
        except (OSError, ValueError, KeyError, TypeError):
            self.remove(dirname)             # no record of what it is: not ours to keep
            return None
        sides: dict[str, Side] = {}
        try:
            for d in layout.DIRECTIONS:
                sides[d] = self._open_side(self.pin_dir(dirname, d), with_link=True)
            meta = self._settle_swap(dirname, meta, sides)
            if not self._links_alive(dirname, endpoint, sides):
                raise _Vanished()
        except (_Vanished, errors.KernelError, OSError):
            for side in sides.values():
                side.close()
            self.remove(dirname)
            base.drop_endpoints(node_maps, endpoint)
            return None
        received = self._read_program(dirname, "program.pb")
        if received is not None:
            # program.pb has the entries of the last Apply; UpdateMaps since
            # then changed only the pinned maps, which are the truth.
            received = dataclasses.replace(received, entries=_live_entries(sides, received))
        return Pod(dirname, endpoint, meta, received, sides)

    def _open_side(self, path: str, with_link: bool) -> Side:
        side = Side(None, None, {})
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

    def _settle_swap(self, dirname: str, meta: dict, sides: dict[str, Side]) -> dict:
        """A `_next` left by a swap cut short: roll forward if any link already
        runs the new program, else throw the new objects away."""
        nexts = {d: self.pin_dir(dirname, d, nxt=True) for d in layout.DIRECTIONS}
        if not any(os.path.exists(p) for p in nexts.values()):
            return meta
        try:
            new = {d: self._open_side(p, with_link=False) for d, p in nexts.items()}
            with open(self.state_path(dirname, "meta.next.json")) as f:
                next_meta = json.load(f)
        except (errors.KernelError, OSError, ValueError):
            new, next_meta = None, None
        running = {d: s.link.info().prog_id for d, s in sides.items() if s.link is not None}
        if new and any(running.get(d) == new[d].prog.info().id for d in layout.DIRECTIONS):
            for d in layout.DIRECTIONS:
                if sides[d].link is not None and running[d] != new[d].prog.info().id:
                    sides[d].link.update(new[d].prog)
            for d in layout.DIRECTIONS:
                sides[d].prog.close()
                for m in sides[d].maps.values():
                    m.close()
                sides[d] = Side(new[d].prog, sides[d].link, new[d].maps)
            self.finish_swap(dirname)
            return next_meta
        for side in (new or {}).values():
            side.close()
        self.discard_next(dirname)
        return meta

    def _links_alive(self, dirname: str, endpoint: base.Endpoint, sides: dict[str, Side]) -> bool:
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
                kernel.unpin(os.path.join(self.pin_dir(dirname, d), "link"))
                side.link = None
            if not self._interface_is(endpoint):
                return False
            self.attach_link(side, dirname, d, endpoint.host_ifindex)
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
            with open(self.state_path(dirname, filename), "rb") as f:
                return wire.from_proto(pb.PodProgram.FromString(f.read()))
        except (OSError, ValueError):
            return None

    # -- writing ---------------------------------------------------------------------

    def pin_side(self, side: Side, dirname: str, direction: str, nxt: bool = False) -> None:
        """Pin a loaded direction's program and own maps (not its link)."""
        path = self.pin_dir(dirname, direction, nxt=nxt)
        side.prog.pin(os.path.join(path, "prog"))
        for name, m in side.maps.items():
            m.pin(os.path.join(path, name))

    def attach_link(self, side: Side, dirname: str, direction: str, ifindex: int) -> None:
        """Attach the side's program on its veth hook by a tcx link, and pin
        the link (a pinned link stays attached when the agent is gone)."""
        side.link = attach_.attach_tcx(side.prog, ifindex, layout.hook(direction), netns=self.netns)
        side.link.pin(os.path.join(self.pin_dir(dirname, direction), "link"))

    def write_state(self, dirname: str, meta: dict, received, suffix: str = "") -> None:
        """meta.json and program.pb (suffix ".next": the swap's pair)."""
        os.makedirs(self.state_path(dirname), exist_ok=True)
        _write_atomic(self.state_path(dirname, f"meta{suffix}.json"),
                      json.dumps(meta, indent=1, sort_keys=True).encode())
        _write_atomic(self.state_path(dirname, f"program{suffix}.pb"),
                      wire.received_to_proto(received).SerializeToString())

    def finish_swap(self, dirname: str) -> None:
        """The links run the `_next` programs: make the `_next` pins the pins
        (idempotent, so an adoption can finish what a crash interrupted)."""
        for d in layout.DIRECTIONS:
            cur, nxt = self.pin_dir(dirname, d), self.pin_dir(dirname, d, nxt=True)
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
            nxt = self.state_path(dirname, f"{name}.next{ext}")
            if os.path.exists(nxt):
                os.replace(nxt, self.state_path(dirname, f"{name}{ext}"))

    def discard_next(self, dirname: str) -> None:
        """Undo a swap that did not happen: its `_next` pins and files go."""
        for d in layout.DIRECTIONS:
            kernel.remove_tree(self.pin_dir(dirname, d, nxt=True))
        for name in NEXT_FILES:
            _remove(self.state_path(dirname, name))

    # -- removing --------------------------------------------------------------------

    def remove_pins(self, dirname: str) -> None:
        """Detach any pinned links (a pin keeps a link attached), then unpin."""
        path = self.pin_dir(dirname)
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

    def remove(self, dirname: str) -> None:
        """Every pin and state file of the pod."""
        self.remove_pins(dirname)
        shutil.rmtree(self.state_path(dirname), ignore_errors=True)


def _live_entries(sides: dict[str, Side], received) -> dict[str, dict[str, dict[bytes, bytes]]]:
    """The pod's own hash/LPM maps as they are in the kernel (stats and array
    maps, which hold every index, keep what `received` says)."""
    out = {d: dict(tables) for d, tables in received.entries.items()}
    for d, side in sides.items():
        for name, m in side.maps.items():
            if name != layout.STATS.name and m.spec.type not in (MapType.ARRAY, MapType.PERCPU_ARRAY):
                out.setdefault(d, {})[name] = dict(m.items())
    return out


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
