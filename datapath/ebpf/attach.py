"""Put a loaded program on a network interface's tc hook.

Called by the agent's kernel backend to attach a pod's program to the pod's
host-side veth, and by the kernel tests.

Two mechanisms:
  tcx (kernel 6.6+): a bpf link (bpf_link_create). The link is an fd that can
      be pinned on bpffs, so the attachment survives an agent restart, and it
      cannot be clobbered by another tool replacing a tc filter.
  tc (older kernels): a clsact qdisc and a cls_bpf filter in direct-action
      mode, through netlink (pyroute2). It stays until deleted, fd or not.
`attach()` prefers tcx and falls back to tc when the kernel does not know the
tcx attach types.

pyroute2 is imported inside the tc functions only: importing it costs ~350 ms,
which short-lived callers of this module should not pay for tcx.
"""
from __future__ import annotations

import dataclasses
import errno
import os

from tailor.datapath.ebpf import errors, kernel, libbpf

# An interface's two hooks (not a pod's program directions: the pod's ingress
# program sits on the host veth's egress hook; see datapath/layout.hook).
HOOKS = {"ingress": libbpf.TCX_INGRESS, "egress": libbpf.TCX_EGRESS}
# clsact's fixed parents: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / _EGRESS).
TC_PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
_ATTACH_TYPE_NAMES = {v: k for k, v in HOOKS.items()}

# Our tc filter's place on the hook, so detach_tc deletes it and nothing else.
TC_PRIO = 1
TC_HANDLE = 1

# The kernel's answers to a tcx attach type it does not know.
_NO_TCX = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})


def _direction(direction: str) -> str:
    if direction not in HOOKS:
        raise ValueError(f"hook must be 'ingress' or 'egress', not {direction!r}")
    return direction


@dataclasses.dataclass(frozen=True)
class LinkInfo:
    id: int
    prog_id: int
    ifindex: int
    direction: str | None   # None if the link is not a tcx link


class Link(kernel.FdObject):
    """A tcx link. Closing the fd detaches the program unless the link is
    pinned; detach() detaches it even when pinned."""

    def __init__(self, fd: int, description: str):
        self.fd = fd
        self.description = description

    @classmethod
    def open_pinned(cls, path: str) -> Link:
        return cls(kernel.open_pinned_fd(path, "link"), f"link pinned at {path}")

    def _what(self) -> str:
        return self.description

    def info(self) -> LinkInfo:
        i = libbpf.link_info(self.live_fd(), self._what())
        tcx = i.type == libbpf.LINK_TYPE_TCX
        return LinkInfo(id=i.id, prog_id=i.prog_id, ifindex=i.tcx_ifindex if tcx else 0,
                        direction=_ATTACH_TYPE_NAMES.get(i.tcx_attach_type) if tcx else None)

    @property
    def id(self) -> int:
        return self.info().id

    def update(self, prog: kernel.KernelProgram) -> None:
        """Swap the link's program for `prog` atomically: every packet meets
        either the old program or the new one, none meets no program."""
        libbpf.link_update(self.live_fd(), prog.live_fd(), f"{self._what()} to {prog.name!r}")

    def detach(self) -> None:
        """Take the program off the interface. The fd stays open (a defunct
        link) until close(); a pin of it should be removed with unpin()."""
        libbpf.link_detach(self.live_fd(), self._what())

    def __repr__(self) -> str:
        return f"Link({self.description}, fd={self.fd})"


def attach_tcx(prog: kernel.KernelProgram, ifindex: int, direction: str, *,
               netns: str | None = None) -> Link:
    """Attach with a tcx link. The kernel looks `ifindex` up in the calling
    thread's network namespace: the agent's own, where pods' host-side veths
    live, unless `netns` (a name under /var/run/netns) says otherwise. The
    link, once made, is bound to the device, whatever namespace we are in."""
    attach_type = HOOKS[_direction(direction)]
    where = f"ifindex {ifindex}" + (f" in netns {netns}" if netns else "")
    what = f"program {prog.name!r} on {where} tcx {direction}"
    if netns is None:
        fd = libbpf.link_create(prog.live_fd(), ifindex, attach_type, what)
    else:
        from pyroute2 import netns as pyroute2_netns   # lazily: ~350 ms to import
        pyroute2_netns.pushns(netns)
        try:
            fd = libbpf.link_create(prog.live_fd(), ifindex, attach_type, what)
        finally:
            pyroute2_netns.popns()
    return Link(fd, f"tcx link of {what}")


@dataclasses.dataclass(frozen=True)
class TcFilter:
    """A cls_bpf filter on a clsact hook, as attach_tc left it."""
    ifindex: int
    direction: str
    netns: str | None = None
    prio: int = TC_PRIO
    handle: int = TC_HANDLE

    def detach(self) -> None:
        detach_tc(self.ifindex, self.direction, netns=self.netns, prio=self.prio,
                  handle=self.handle)


def _iproute(netns: str | None):
    from pyroute2 import IPRoute   # lazily: ~350 ms to import
    return IPRoute(netns=netns) if netns else IPRoute()


def _netlink_error(e: Exception, what: str) -> errors.KernelError:
    code = getattr(e, "code", 0) or 0
    return errors.KernelError(f"{what}: {os.strerror(code) if code else e}", code)


def attach_tc(prog: kernel.KernelProgram, ifindex: int, direction: str, *,
              netns: str | None = None, prio: int = TC_PRIO,
              handle: int = TC_HANDLE) -> TcFilter:
    """Attach as a direct-action cls_bpf filter, adding clsact if missing.
    A filter already at (prio, handle) is replaced, so re-attaching a new
    version of a pod's program swaps it in place."""
    parent = TC_PARENTS[_direction(direction)]
    where = f"ifindex {ifindex}" + (f" in netns {netns}" if netns else "")
    with _iproute(netns) as ipr:
        try:
            ipr.tc("add", kind="clsact", index=ifindex)
        except Exception as e:
            if getattr(e, "code", None) != errno.EEXIST:
                raise _netlink_error(e, f"adding clsact qdisc on {where}") from None
        try:
            ipr.tc("replace-filter", kind="bpf", index=ifindex, fd=prog.live_fd(),
                   name=kernel.kernel_name(prog.name), parent=parent, prio=prio,
                   handle=handle, classid=1, direct_action=True)
        except Exception as e:
            raise _netlink_error(
                e, f"adding tc {direction} filter of program {prog.name!r} on {where}"
            ) from None
    return TcFilter(ifindex, direction, netns, prio, handle)


def detach_tc(ifindex: int, direction: str, *, netns: str | None = None,
              prio: int = TC_PRIO, handle: int = TC_HANDLE) -> bool:
    """Delete the filter attach_tc added. False if it was not there (the
    interface or its clsact may already be gone: detaching is idempotent).
    The clsact qdisc stays: other tools may have filters on it."""
    parent = TC_PARENTS[_direction(direction)]
    with _iproute(netns) as ipr:
        try:
            ipr.tc("del-filter", kind="bpf", index=ifindex, parent=parent, prio=prio,
                   handle=handle)
        except Exception as e:
            if getattr(e, "code", None) in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                return False
            raise _netlink_error(
                e, f"deleting tc {direction} filter on ifindex {ifindex}") from None
    return True


def tc_filters(ifindex: int, direction: str, *, netns: str | None = None) -> list[dict]:
    """The bpf filters on a clsact hook: [{'name', 'prio', 'handle'}].
    (pyroute2 0.9 does not decode TCA_BPF_ID, so no program id here.)"""
    parent = TC_PARENTS[_direction(direction)]
    out = []
    with _iproute(netns) as ipr:
        try:
            msgs = ipr.get_filters(index=ifindex, parent=parent)
        except Exception as e:
            if getattr(e, "code", None) in (errno.ENOENT, errno.EINVAL):
                return []
            raise _netlink_error(e, f"listing tc filters on ifindex {ifindex}") from None
        for msg in msgs:
            if msg.get_attr("TCA_KIND") != "bpf":
                continue
            opts = msg.get_attr("TCA_OPTIONS")
            if opts is None:
                continue   # the per-prio chain header, not a filter
            out.append({"name": opts.get_attr("TCA_BPF_NAME"),
                        "prio": msg["info"] >> 16, "handle": msg["handle"]})
    return out


def attach(prog: kernel.KernelProgram, ifindex: int, direction: str, *,
           netns: str | None = None) -> Link | TcFilter:
    """tcx when the kernel has it, else a tc filter."""
    try:
        return attach_tcx(prog, ifindex, direction, netns=netns)
    except errors.KernelError as e:
        if e.errno not in _NO_TCX:
            raise
    return attach_tc(prog, ifindex, direction, netns=netns)
