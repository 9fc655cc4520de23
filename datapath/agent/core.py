"""The agent's state machine, free of gRPC and of sockets.

Called by server.AgentServicer (Apply, UpdateMaps, Remove, List, Get,
Counters, Trace, Health) and by the CNI handler (attach_pod on ADD,
detach_pod on DEL and GC, ready on STATUS), from many threads at once.

Two tables, keyed by pod ("namespace/name"):
    programs   what the program sources want in force (Apply, ProgramFor,
               or adopted from the backend at start)
    endpoints  the pods wired on this node (CNI ADD, or adopted)
A pod with both is attached in the backend; a program without an endpoint is
PENDING and is attached the moment its endpoint appears; an endpoint without
a program makes attach_pod ask the program source and wait.

A pod's state, as Get and List report it:
    LOADED   the backend has the pod's programs in force
    FAILED   the last program given was refused (message says why; an older
             program may still be in force, the message says which)
    PENDING  a program is known, the pod is not (yet) wired here
"""
from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import threading
import time
from collections.abc import Callable

from tailor.datapath import layout
from tailor.datapath.agent.backends import base

VERSION = "0.1.0"
# How long attach_pod waits for a program (Apply or the program source).
ATTACH_TIMEOUT_SECONDS = 10.0
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 1.0

# program_for(namespace, name, uid, node, addresses, timeout) -> wire.Received.
# Raises LookupError when the source does not know the pod (yet),
# ConnectionError when it cannot be reached; both are retried.
ProgramFor = Callable[[str, str, str, str, tuple, float], object]


class CoreError(Exception):
    """Base of the core's errors; the message names the pod."""


class NotFound(CoreError):
    pass


class InvalidRequest(CoreError):
    pass


class ProgramUnavailable(TimeoutError):
    """No program for a pod arrived in time. A TimeoutError, so the CNI side
    answers code 11 (try again later) and undoes the ADD."""


class NullMetrics:
    """The hooks the core calls; metrics.Metrics records them."""

    def applied(self, outcome: str, seconds: float) -> None: ...
    def maps_updated(self, entries: int) -> None: ...
    def cni_attach(self, outcome: str, seconds: float) -> None: ...


@dataclasses.dataclass
class _Failure:
    hash: str
    message: str


class Core:
    def __init__(self, node: str, backend: base.Backend, *, program_for: ProgramFor | None = None,
                 attach_timeout: float = ATTACH_TIMEOUT_SECONDS, metrics=None,
                 node_addresses: tuple[str, ...] = (), network=None):
        self.node = node
        self.node_addresses = tuple(node_addresses)
        # Routes to other nodes' pods and the masquerade (node/network.py);
        # None: SetNodes is only recorded.
        self.network = network
        self._nodes_digest = ""
        self.backend = backend
        self.program_for = program_for
        self.attach_timeout = attach_timeout
        self.metrics = metrics or NullMetrics()
        self._programs: dict[str, object] = {}                  # key -> wire.Received
        # key -> the stamp of its last Apply / UpdateMaps (unique across
        # pods and Removes): a CNI ADD that fetched a program while one of
        # those arrived keeps the pushed one.
        self._pushes: dict[str, int] = {}
        self._stamps = itertools.count(1)
        self._endpoints: dict[str, base.Endpoint] = {}          # key -> endpoint
        self._uids: dict[str, str] = {}                         # key -> uid the CNI named
        self._attachments: dict[tuple[str, str], str] = {}      # (containerID, ifname) -> key
        self._failures: dict[str, _Failure] = {}
        self._lock = threading.RLock()
        self._arrived = threading.Condition(self._lock)         # notified on every Apply
        self._started = False

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> list[base.Adopted]:
        """Start the backend; take over what it adopted."""
        with self._lock:
            adopted = self.backend.start()
            # Before any pod is served: its programs let these in.
            self.backend.set_node_addresses(self.node_addresses)
            for a in adopted:
                key = a.state.key
                self._endpoints[key] = a.endpoint
                self._uids[key] = a.state.uid
                self._attachments[(a.endpoint.container_id, a.endpoint.ifname)] = key
                if a.received is not None:
                    self._programs[key] = a.received
            self._started = True
            return adopted

    def stop(self) -> None:
        with self._lock:
            self._started = False
            self.backend.stop()
            self._arrived.notify_all()

    def ready(self) -> bool:
        return self._started

    # -- gRPC side -------------------------------------------------------------------

    def apply(self, received) -> tuple[base.PodState, bool]:
        """Want `received` (wire.Received) in force. (status, changed)."""
        started = time.monotonic()
        key = received.key
        with self._lock:
            known = self._programs.get(key)
            unchanged = (known is not None and known.uid == received.uid
                         and known.hash == received.hash and key not in self._failures)
            if received.groups:
                # Members first: a program never tests a group before the
                # node knows who is in it.
                try:
                    self.backend.update_groups(received.groups)
                except base.BackendError as e:
                    raise InvalidRequest(f"pod {key}: {e}") from None
            self._programs[key] = received
            self._pushes[key] = next(self._stamps)
            self._arrived.notify_all()
            endpoint = self._endpoint_for(key, received.uid)
            if endpoint is None:
                self.metrics.applied("pending", time.monotonic() - started)
                return self._status(key), not unchanged
            try:
                _, changed = self.backend.attach(endpoint, received)
            except base.AttachFailed as e:
                self._failures[key] = _Failure(received.hash, str(e))
                self.metrics.applied("failed", time.monotonic() - started)
                return self._status(key), False
            self._failures.pop(key, None)
            self.metrics.applied("changed" if changed else "unchanged", time.monotonic() - started)
            return self._status(key), changed

    def _endpoint_for(self, key: str, uid: str) -> base.Endpoint | None:
        """The pod's endpoint, unless the CNI wired a different pod (uid) there."""
        endpoint = self._endpoints.get(key)
        wired_uid = self._uids.get(key, "")
        if endpoint is not None and uid and wired_uid and uid != wired_uid:
            return None
        return endpoint

    def update_maps(self, namespace: str, name: str, uid: str,
                    maps: dict[str, dict[str, dict[bytes, bytes]]]) -> int:
        key = f"{namespace}/{name}"
        with self._lock:
            known = self._programs.get(key)
            if known is None or (uid and known.uid and uid != known.uid):
                raise NotFound(f"pod {key}{' uid ' + uid if uid else ''}: no program on node {self.node}")
            for d, tables in maps.items():
                declared = {m.name for m in known.maps.get(d, [])}
                missing = set(tables) - declared
                if missing:
                    raise InvalidRequest(f"pod {key}: its {d} program has no map "
                                         f"{', '.join(sorted(missing))}")
            entries = {d: dict(known.entries.get(d, {})) for d in layout.DIRECTIONS}
            for d, tables in maps.items():
                entries.setdefault(d, {}).update(tables)
            self._programs[key] = dataclasses.replace(known, entries=entries)
            self._pushes[key] = next(self._stamps)
            if self.backend.state(key) is None:
                changed = sum(len(t) for tables in maps.values() for t in tables.values())
            else:
                try:
                    changed = self.backend.update_maps(key, maps)
                except base.BackendError as e:
                    raise InvalidRequest(str(e)) from None
            self.metrics.maps_updated(changed)
            return changed

    def update_groups(self, changes, *, full: bool = False) -> tuple[int, str]:
        """Change node-wide group members. (entries changed, the node's
        groups digest after)."""
        with self._lock:
            try:
                changed = self.backend.update_groups(changes, full=full)
            except base.BackendError as e:
                raise InvalidRequest(str(e)) from None
            self.metrics.maps_updated(changed)
            return changed, self.backend.groups_digest()

    def groups_digest(self) -> str:
        with self._lock:
            return self.backend.groups_digest()

    def set_nodes(self, nodes, cluster_cidrs, program_source: str = "") -> tuple[int, str]:
        """The cluster's nodes (node/routes.ClusterNode), the whole truth:
        routes to their pods and the masquerade follow; `program_source`
        (if any) is where CNI ADDs ask from now on. (routes in force,
        digest). Not under the core's lock: netlink may take a while, and
        the network keeps its own."""
        from tailor.datapath.agent.node import routes

        try:
            nodes = [routes.ClusterNode(n.name, tuple(str(ipaddress.ip_address(a)) for a in n.addresses),
                                        tuple(str(ipaddress.ip_network(c)) for c in n.pod_cidrs))
                     for n in nodes]
            cluster_cidrs = [str(ipaddress.ip_network(c)) for c in cluster_cidrs]
        except ValueError as e:
            raise InvalidRequest(f"SetNodes: {e}") from None
        count = self.network.apply(nodes, cluster_cidrs) if self.network is not None else 0
        self._nodes_digest = routes.digest(nodes, cluster_cidrs)
        if program_source and hasattr(self.program_for, "point_at"):
            self.program_for.point_at(program_source)
        return count, self.nodes_digest()

    def set_services(self, entries) -> tuple[int, str]:
        """The cluster's Service table (datapath.services.ServiceEntry), the
        whole truth. (entries in force, digest)."""
        with self._lock:
            try:
                count = self.backend.set_services(entries)
            except base.BackendError as e:
                raise InvalidRequest(str(e)) from None
            digest = self.backend.services_digest()
        if self.network is not None:
            names = {6: "TCP", 17: "UDP", 132: "SCTP"}
            self.network.unserved([(e.address, names[e.protocol], e.port) for e in entries if not e.backends])
        return count, digest

    def services_digest(self) -> str:
        with self._lock:
            return self.backend.services_digest()

    def nodes_digest(self) -> str:
        """Of the last SetNodes in force ("" before the first; a restarted
        agent's network restores its last one)."""
        from tailor.datapath.agent.node import routes

        held = self.network.digest if self.network is not None else self._nodes_digest
        return routes.with_source(held, getattr(self.program_for, "learned", ""))

    def remove(self, namespace: str, name: str, uid: str = "") -> bool:
        """Detach and forget the pod's programs; the endpoint stays registered."""
        key = f"{namespace}/{name}"
        with self._lock:
            known = self._programs.get(key)
            if uid and known is not None and known.uid and known.uid != uid:
                return False           # a Remove meant for an older pod of that name
            removed = self._programs.pop(key, None) is not None
            self._failures.pop(key, None)
            self._pushes.pop(key, None)
            return self.backend.detach(key) or removed

    def get(self, namespace: str, name: str) -> base.PodState:
        key = f"{namespace}/{name}"
        with self._lock:
            status = self._status(key)
            if status is None:
                raise NotFound(f"pod {key}: no program on node {self.node}")
            return status

    def list(self) -> list[base.PodState]:
        with self._lock:
            keys = sorted(set(self._programs) | {s.key for s in self.backend.pods()})
            return [s for s in (self._status(k) for k in keys) if s is not None]

    def counters(self, namespace: str, name: str) -> base.Counters:
        key = f"{namespace}/{name}"
        try:
            return self.backend.counters(key)
        except base.UnknownPod as e:
            raise NotFound(str(e)) from None

    def trace(self, src: str, dst: str, protocol: str, src_port: int = 0,
              dst_port: int = 0) -> base.TraceResult:
        if protocol.upper() not in ("TCP", "UDP", "SCTP", "ICMP"):
            raise InvalidRequest(f"protocol {protocol!r}: TCP, UDP, SCTP or ICMP")
        try:
            return self.backend.trace(src, dst, protocol.upper(), src_port, dst_port)
        except ValueError as e:
            raise InvalidRequest(f"trace {src} -> {dst}: {e}") from None

    def health(self) -> dict:
        with self._lock:
            return {"node": self.node, "backend": self.backend.name, "ready": self._started,
                    "pods": len(set(self._programs) | set(self._endpoints)), "version": VERSION}

    def _status(self, key: str) -> base.PodState | None:
        """Compose what is in force (backend) with what is wanted (programs)."""
        attached = self.backend.state(key)
        wanted = self._programs.get(key)
        failure = self._failures.get(key)
        if attached is not None:
            if failure is not None:
                return dataclasses.replace(
                    attached, state=base.State.FAILED,
                    message=f"{failure.message}; hash {attached.hash} stays in force")
            return attached
        if wanted is None:
            return None
        if failure is not None:
            state, message = base.State.FAILED, failure.message
        else:
            state, message = base.State.PENDING, f"waiting for the pod's interface on node {self.node}"
        endpoint = self._endpoints.get(key)
        return base.PodState(wanted.namespace, wanted.name, wanted.uid, state, message,
                             wanted.hash, tuple(wanted.features), tuple(wanted.addresses),
                             endpoint.host_ifname if endpoint else "")

    # -- CNI side --------------------------------------------------------------------

    def attach_pod(self, pod: dict, endpoint) -> None:
        """The CNI handler's `attach`: returns once the pod's programs are in
        force on `endpoint` (a wiring.Endpoint or base.Endpoint). Raises
        ProgramUnavailable (a TimeoutError) when no program arrived in time,
        base.AttachFailed when the program was refused."""
        started = time.monotonic()
        namespace, name, uid = _pod_identity(pod)
        key = f"{namespace}/{name}"
        ep = endpoint if isinstance(endpoint, base.Endpoint) else base.Endpoint.of(endpoint)
        with self._lock:
            self._endpoints[key] = ep
            self._uids[key] = uid
            self._attachments[(ep.container_id, ep.ifname)] = key
            pushes = self._pushes.get(key)
        try:
            received = self._await_program(namespace, name, uid, ep, started + self.attach_timeout)
            with self._lock:
                if self._endpoints.get(key) is not ep:
                    raise base.AttachFailed(f"pod {key}: its attachment was removed while "
                                            "its program was being fetched")
                newer = self._programs.get(key)
                if self._pushes.get(key) != pushes and newer is not None \
                        and (not uid or not newer.uid or newer.uid == uid):
                    # An Apply or UpdateMaps came while the program source
                    # answered: it was sent after the answer, so it is newer.
                    received = newer
                elif received.groups:
                    # Fetched at CNI ADD: the members of the groups it tests
                    # come with it, and go in before the program does.
                    try:
                        self.backend.update_groups(received.groups)
                    except base.BackendError as e:
                        raise base.AttachFailed(f"pod {key}: {e}") from None
                self._programs[key] = received
                try:
                    self.backend.attach(ep, received)
                except base.AttachFailed as e:
                    self._failures[key] = _Failure(received.hash, str(e))
                    raise
                self._failures.pop(key, None)
        except BaseException as e:
            self.metrics.cni_attach("timeout" if isinstance(e, TimeoutError) else "failed",
                                    time.monotonic() - started)
            raise
        self.metrics.cni_attach("attached", time.monotonic() - started)

    def _await_program(self, namespace: str, name: str, uid: str, ep: base.Endpoint,
                       deadline: float):
        """The pod's program: known already, applied meanwhile, or fetched
        from the program source, retrying with backoff until `deadline`."""
        key = f"{namespace}/{name}"
        backoff, last_error = BACKOFF_FIRST, ""
        while True:
            with self._lock:
                known = self._programs.get(key)
                if known is not None and (not uid or not known.uid or known.uid == uid):
                    return known
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self.program_for is not None:
                try:
                    received = self.program_for(namespace, name, uid, self.node, ep.addresses,
                                                min(left, 5.0))
                    if received.key != key or (uid and received.uid and received.uid != uid):
                        last_error = (f"the program source answered with pod {received.key} "
                                      f"uid {received.uid}")
                    else:
                        return received
                except (LookupError, ConnectionError, TimeoutError) as e:
                    last_error = str(e)
                except ValueError as e:           # a malformed program: not worth retrying
                    raise base.AttachFailed(f"pod {key}: the program source sent a bad "
                                            f"program: {e}") from None
            with self._lock:
                self._arrived.wait(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, BACKOFF_MAX)
        source = ("no program source configured" if self.program_for is None
                  else f"the program source: {last_error or 'no answer'}")
        raise ProgramUnavailable(f"no program for pod {key} (uid {uid or '?'}) arrived within "
                                 f"{self.attach_timeout:g}s: no Apply, and {source}")

    def detach_pod(self, container_id: str, ifname: str) -> None:
        """The CNI handler's `detach`: idempotent. The pod's program stays
        known (PENDING), so a new sandbox of the same pod attaches at once."""
        with self._lock:
            key = self._attachments.pop((container_id, ifname), None)
            if key is None:
                return
            ep = self._endpoints.get(key)
            if ep is not None and (ep.container_id, ep.ifname) == (container_id, ifname):
                del self._endpoints[key]
                self._uids.pop(key, None)
                self.backend.detach(key)
                self._failures.pop(key, None)


def _pod_identity(pod: dict) -> tuple[str, str, str]:
    """(namespace, name, uid) from the CNI handler's pod dict (or raw CNI_ARGS)."""
    namespace = pod.get("namespace") or pod.get("K8S_POD_NAMESPACE") or ""
    name = pod.get("name") or pod.get("K8S_POD_NAME") or ""
    uid = pod.get("uid") or pod.get("K8S_POD_UID") or ""
    if not namespace or not name:
        raise base.AttachFailed("the runtime named no pod (CNI_ARGS without K8S_POD_NAMESPACE "
                                "and K8S_POD_NAME): tailor attaches programs to pods only")
    return namespace, name, uid
