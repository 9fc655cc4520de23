"""The agent's answers to CNI commands: one request in, one response out.

Called by server.CniSocketServer (one thread per connection) with requests
from the `tailor` plugin (wire format in tailor.datapath.cni.protocol). Each
command is answered by the method its row of protocol.COMMANDS names. The
agent core builds one CniHandler and gives it what only the core knows:

    attach(pod, endpoint) -> None
        pod = {"namespace", "name", "uid", "containerID"}; returns once the
        pod's eBPF program is attached to endpoint.host_ifname, raises on
        failure: AttachUnavailable (or TimeoutError / ConnectionError) when
        the program could not be attached *yet* (the plugin answers code 11,
        the runtime retries), any other exception when it was rejected.
    detach(containerID, ifname) -> None
        forget the attachment's program; idempotent.
    ready() -> bool | Readiness
        whether the agent can take ADDs (STATUS).

ADD = IPAM allocate -> the veth pair -> attach, and meanwhile configure
(addresses, routes, neighbours, links up) -> CNI result. The attach waits on
the program source and on the kernel, the configuring on netlink; neither
needs the other, so they overlap, and the program is on the veth before
ADD answers, as before. Any failure undoes everything ADD made (detach,
veth, addresses) before answering, and an attach that outlives the plugin's
timeout is abandoned the same way, so a failed ADD never leaves an address,
a veth or a program behind.
DEL = detach -> teardown -> release, every step idempotent, and every step is
tried even when one fails (the namespace may be long gone).
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import threading
import time
from collections.abc import Callable

from tailor.datapath.agent.cni import ipam as ipam_
from tailor.datapath.agent.cni import wiring as wiring_
from tailor.datapath.cni import protocol

# The handler answers this long before the plugin's own timeout runs out, so
# its code 11 (and its clean-up) arrive rather than the plugin giving up first.
ANSWER_MARGIN_SECONDS = 1.0


class AttachUnavailable(Exception):
    """attach() could not attach the program now (backend busy or down, or
    the compiled program did not arrive in time): try again later."""


@dataclasses.dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str = ""
    limited_connectivity: bool = False   # existing pods are affected too (code 51)


Readiness.READY = Readiness(True)

Attach = Callable[[dict, wiring_.Endpoint], None]
Detach = Callable[[str, str], None]


class CniFailure(Exception):
    """A command failed with a CNI error code."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


class CniHandler:
    def __init__(self, node_ipam: ipam_.Ipam, wiring: wiring_.Wiring, attach: Attach,
                 detach: Detach, ready: Callable[[], bool | Readiness] = lambda: True):
        self.node_ipam = node_ipam
        self.wiring = wiring
        self.attach = attach
        self.detach = detach
        self.ready = ready

    def handle(self, request: dict) -> dict:
        """A protocol request -> a protocol response. Never raises."""
        started = time.monotonic()
        command = request.get("command")
        try:
            if not isinstance(command, str) or command not in protocol.COMMANDS:
                raise CniFailure(protocol.ERR_INVALID_ENV, f"unknown command {command!r}")
            config = request.get("config")
            if not isinstance(config, dict):
                raise CniFailure(protocol.ERR_INVALID_CONFIG, "request without a network config")
            method = getattr(self, protocol.COMMANDS[command].method)
            return protocol.ok(method(request, started))
        except CniFailure as f:
            return protocol.error(f.code, f.msg, f.details)
        except Exception as e:   # a bug or an unexpected kernel answer
            return protocol.error(protocol.ERR_INTERNAL, f"tailor agent: {command} failed",
                                  f"{type(e).__name__}: {e}")

    # -- commands: one method per row of protocol.COMMANDS, (request, started) -> result

    def add(self, request: dict, started: float) -> dict:
        container_id, ifname, netns = _attachment(request)
        ipam = self._ipam(request["config"])
        try:
            allocations = ipam.allocate(container_id, ifname)
        except ipam_.IpamError as e:
            raise CniFailure(protocol.ERR_IPAM_EXHAUSTED, "no pod address available", str(e)) from None
        endpoint = None
        try:
            endpoint = self._veth(container_id, ifname, netns, allocations)
            attaching = _Attaching(self.attach, request, endpoint, started)
            try:
                self._configure(endpoint)
            except BaseException:
                # Let the attach end first: an attach still starting would
                # register its pod after the undo's detach and keep it.
                attaching.join()
                raise
            attaching.result()
        except BaseException:
            self._undo(container_id, ifname, ipam, program=endpoint is not None)
            raise
        return _result(endpoint, allocations)

    def delete(self, request: dict, started: float) -> dict:
        container_id, ifname, netns = _attachment(request, netns_required=False)
        failures = []
        for step in (lambda: self.detach(container_id, ifname),
                     lambda: self.wiring.teardown(container_id, ifname, netns or None),
                     lambda: self._ipam(request["config"]).release(container_id, ifname)):
            try:
                step()
            except Exception as e:
                failures.append(e)
        if failures:
            first = failures[0]
            code = protocol.ERR_TRY_AGAIN if _unavailable(first) else protocol.ERR_INTERNAL
            raise CniFailure(code, "DEL could not clean up everything",
                             "; ".join(f"{type(e).__name__}: {e}" for e in failures))
        return {}

    def check(self, request: dict, started: float) -> dict:
        container_id, ifname, netns = _attachment(request)
        prev = request["config"].get("prevResult") or {}
        pod_iface = _pod_interface(prev, ifname)
        if pod_iface[0] is None:
            raise CniFailure(protocol.ERR_INVALID_CONFIG, "prevResult lacks the pod interface",
                             f"no interface {ifname!r} with a sandbox in prevResult")
        try:
            addresses = [ipaddress.ip_interface(ip["address"]).ip for ip in prev.get("ips", [])
                         if ip.get("interface") is None or ip.get("interface") == pod_iface[0]]
        except (ValueError, KeyError, TypeError) as e:
            raise CniFailure(protocol.ERR_INVALID_CONFIG, "prevResult has a bad ip entry", str(e)) from None
        held = {a.address for a in self._ipam(request["config"]).lookup(container_id, ifname)}
        missing = [str(a) for a in addresses if a not in held]
        if missing:
            raise CniFailure(protocol.ERR_CHECK_FAILED, "address reservation missing",
                             f"{', '.join(missing)} not reserved for {container_id}/{ifname}")
        try:
            self.wiring.check(container_id, ifname, netns, addresses, pod_iface[1])
        except wiring_.NetnsMissing as e:
            raise CniFailure(protocol.ERR_UNKNOWN_CONTAINER, "container network namespace is gone",
                             str(e)) from None
        except wiring_.WiringError as e:
            raise CniFailure(protocol.ERR_CHECK_FAILED, "pod networking differs from prevResult",
                             str(e)) from None
        return {}

    def status(self, request: dict, started: float) -> dict:
        readiness = self.ready()
        if not isinstance(readiness, Readiness):
            readiness = Readiness(bool(readiness), "" if readiness else "agent not ready")
        if not readiness.ready:
            code = (protocol.ERR_NOT_AVAILABLE_LIMITED if readiness.limited_connectivity
                    else protocol.ERR_NOT_AVAILABLE)
            raise CniFailure(code, "tailor agent is not ready", readiness.reason)
        ipam = self._ipam(request["config"])
        if not ipam.rangesets:
            raise CniFailure(protocol.ERR_NOT_AVAILABLE, "no pod CIDR known yet",
                             "the agent takes its node's from the Node's spec.podCIDRs in the "
                             "operator's node table, which has not arrived (or the Node has none: "
                             "kube-controller-manager --allocate-node-cidrs); or give it --pod-cidr, "
                             "or set ipam.ranges")
        empty = [subnet for subnet, n in ipam.free().items() if n == 0]
        if empty:
            raise CniFailure(protocol.ERR_NOT_AVAILABLE, "no free pod address",
                             f"every address of {', '.join(empty)} is allocated")
        return {}

    def gc(self, request: dict, started: float) -> dict:
        config = request["config"]
        attachments = config.get("cni.dev/valid-attachments")
        if not isinstance(attachments, list):   # never read a missing list as "none valid"
            raise CniFailure(protocol.ERR_INVALID_CONFIG, "GC needs cni.dev/valid-attachments")
        valid = {(a["containerID"], a["ifname"]) for a in attachments}
        ipam = self._ipam(config)
        known = {a.key for a in ipam.allocated()} | set(self.wiring.host_attachments())
        failures = []
        for container_id, ifname in sorted(known - valid):
            for step in (lambda: self.detach(container_id, ifname),
                         lambda: self.wiring.teardown(container_id, ifname),
                         lambda: ipam.release(container_id, ifname)):
                try:
                    step()
                except Exception as e:
                    failures.append(f"{container_id}/{ifname}: {type(e).__name__}: {e}")
        if failures:
            raise CniFailure(protocol.ERR_INTERNAL, "GC could not remove every stale attachment",
                             "; ".join(failures))
        return {}

    # -- steps --------------------------------------------------------------------

    def _ipam(self, config: dict) -> ipam_.Ipam:
        """The netconf's own ipam.ranges when it has them, else the node's."""
        try:
            rangesets = ipam_.parse_ranges(config.get("ipam"))
        except (ValueError, KeyError, TypeError) as e:
            raise CniFailure(protocol.ERR_INVALID_CONFIG, "invalid ipam.ranges", str(e)) from None
        return self.node_ipam.with_ranges(rangesets) if rangesets else self.node_ipam

    def _veth(self, container_id: str, ifname: str, netns: str,
              allocations: list[ipam_.Allocation]) -> wiring_.Endpoint:
        with _wiring_failures():
            return self.wiring.create_veth(container_id, ifname, netns,
                                           [a.address for a in allocations])

    def _configure(self, endpoint: wiring_.Endpoint) -> None:
        with _wiring_failures():
            self.wiring.configure(endpoint)

    def _undo(self, container_id: str, ifname: str, ipam: ipam_.Ipam, program: bool) -> None:
        """Best effort: remove what a failed ADD made. A late attach finds its
        veth gone (the kernel drops tc/tcx attachments with the device)."""
        steps = [lambda: self.wiring.teardown(container_id, ifname),
                 lambda: ipam.release(container_id, ifname)]
        if program:
            steps.insert(0, lambda: self.detach(container_id, ifname))
        for step in steps:
            try:
                step()
            except Exception:
                pass   # the original failure is what the runtime needs to see


class _Attaching:
    """attach(pod, endpoint) on its own thread, bounded by the plugin's
    timeout minus a margin (counted from when the request arrived), so that
    ADD can configure the pod meanwhile and still answer in time."""

    def __init__(self, attach: Attach, request: dict, endpoint: wiring_.Endpoint, started: float):
        args = request.get("args") or {}
        self.pod = {"namespace": args.get("K8S_POD_NAMESPACE", ""), "name": args.get("K8S_POD_NAME", ""),
                    "uid": args.get("K8S_POD_UID", ""), "containerID": endpoint.container_id}
        timeout = float(request["config"].get("timeoutSeconds", protocol.DEFAULT_TIMEOUT_SECONDS))
        self.budget = max(0.1, min(timeout - ANSWER_MARGIN_SECONDS, timeout * 0.8)
                          - (time.monotonic() - started))
        self.deadline = time.monotonic() + self.budget
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(attach, endpoint), daemon=True,
                                        name=f"tailor-attach-{endpoint.host_ifname}")
        self._thread.start()

    def _run(self, attach: Attach, endpoint: wiring_.Endpoint) -> None:
        try:
            attach(self.pod, endpoint)
        except BaseException as e:
            self._error = e

    def join(self) -> bool:
        """Wait until the attach ends or the budget is spent; whether it ended."""
        self._thread.join(max(0.0, self.deadline - time.monotonic()))
        return not self._thread.is_alive()

    def result(self) -> None:
        """Return once attached; CniFailure when the attach failed or is late."""
        if not self.join():
            raise CniFailure(protocol.ERR_TRY_AGAIN, "pod program not attached in time",
                             f"attach for {self.pod['namespace']}/{self.pod['name']} took longer "
                             f"than {self.budget:.1f}s")
        if self._error is not None:
            e = self._error
            code = protocol.ERR_TRY_AGAIN if _unavailable(e) else protocol.ERR_ATTACH
            raise CniFailure(code, "pod program not attached", f"{type(e).__name__}: {e}")


# A row added to protocol.COMMANDS without its method stops the agent at
# import, rather than answering the first pod that sends it with code 100.
_unanswered = [name for name, c in protocol.COMMANDS.items()
               if not callable(getattr(CniHandler, c.method, None))]
if _unanswered:
    raise TypeError(f"CniHandler lacks the methods protocol.COMMANDS names for {', '.join(_unanswered)}")


# -- pure helpers ---------------------------------------------------------------------

def _attachment(request: dict, netns_required: bool = True) -> tuple[str, str, str]:
    container_id = request.get("containerID") or ""
    ifname = request.get("ifname") or ""
    netns = request.get("netns") or ""
    if not container_id or not ifname or (netns_required and not netns):
        raise CniFailure(protocol.ERR_INVALID_ENV, "request lacks containerID, ifname or netns")
    return container_id, ifname, netns


@contextlib.contextmanager
def _wiring_failures():
    """The wiring's errors as the CNI codes ADD answers."""
    try:
        yield
    except wiring_.NetnsMissing as e:
        raise CniFailure(protocol.ERR_INVALID_ENV, "invalid CNI_NETNS", str(e)) from None
    except wiring_.WiringError as e:
        raise CniFailure(protocol.ERR_WIRING, "could not wire the pod", str(e)) from None


def _unavailable(e: BaseException) -> bool:
    return isinstance(e, (AttachUnavailable, TimeoutError, ConnectionError))


def _pod_interface(prev: dict, ifname: str) -> tuple[int | None, str | None]:
    """Index and MAC of the pod-side interface in a prevResult."""
    for i, iface in enumerate(prev.get("interfaces") or []):
        if isinstance(iface, dict) and iface.get("name") == ifname and iface.get("sandbox"):
            return i, iface.get("mac")
    return None, None


def _result(endpoint: wiring_.Endpoint, allocations: list[ipam_.Allocation]) -> dict:
    """The CNI 1.1.0 ADD result: host side first, pod side second (index 1,
    which every ip entry names), the addresses as configured (/32, /128)."""
    ips, routes = [], []
    for iface in endpoint.addresses:
        gw = wiring_.gateway_for(iface.ip)
        ips.append({"address": str(iface), "gateway": str(gw), "interface": 1})
        routes.append({"dst": "0.0.0.0/0" if iface.version == 4 else "::/0", "gw": str(gw)})
    return {
        "cniVersion": protocol.CNI_VERSION,
        "interfaces": [{"name": endpoint.host_ifname, "mac": endpoint.host_mac},
                       {"name": endpoint.ifname, "mac": endpoint.pod_mac, "sandbox": endpoint.netns}],
        "ips": ips,
        "routes": routes,
        "dns": {},
    }
