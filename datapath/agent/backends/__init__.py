"""The agent's datapath backends behind one interface (base.Backend), and
the registry that names them: `kernel` (bpf() programs on tcx links, state
pinned on bpffs) and `emulated` (the userspace VM).

Called by `tailor agent` (cli/agent.py: the --backend choices and their
help) and by the daemon (daemon.py: open_backend). The two backends never
import each other; this registry is the only place that names both, and it
imports the chosen one alone when it is opened, so an emulated agent never
loads libbpf. Importing this package imports neither (the CLI reads the
names on every start).
"""
from __future__ import annotations


def _open_kernel(node: str, *, bpffs_root: str | None, state_dir: str | None, netns: str | None):
    from tailor.datapath.agent.backends import kernel
    return kernel.KernelBackend(node, bpffs_root=bpffs_root, state_dir=state_dir, netns=netns)


def _open_emulated(node: str, *, bpffs_root: str | None, state_dir: str | None, netns: str | None):
    # Nothing pinned, no interfaces touched: the other options mean nothing to it.
    from tailor.datapath.agent.backends import emulated
    return emulated.EmulatedBackend(node)


# name -> (one line for --help, how to open it).
REGISTRY = {
    "kernel": ("programs in the kernel on the pods' veths, pinned on bpffs (needs root)",
               _open_kernel),
    "emulated": ("programs in the userspace VM, nothing enforced (kind, no eBPF, no root)",
                 _open_emulated),
}
BACKENDS = tuple(REGISTRY)
# A node agent enforces unless told otherwise.
DEFAULT = "kernel"


def describe(name: str) -> str:
    """The backend's one-line description."""
    return REGISTRY[name][0]


def open_backend(name: str, node: str, *, bpffs_root: str | None = None,
                 state_dir: str | None = None, netns: str | None = None):
    """A backend by name, not yet started. Raises ValueError for a name not
    in the registry."""
    if name not in REGISTRY:
        raise ValueError(f"unknown backend {name!r}: one of {', '.join(BACKENDS)}")
    return REGISTRY[name][1](node, bpffs_root=bpffs_root, state_dir=state_dir, netns=netns)
