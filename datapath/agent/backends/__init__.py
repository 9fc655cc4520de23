"""The agent's datapath backends behind one interface (base.Backend):
`kernel` (bpf() programs on tcx links, state pinned on bpffs) and `emulated`
(the userspace VM). The two never import each other; `open_backend` is the
only place that names both, and imports the chosen one alone."""
from __future__ import annotations

BACKENDS = ("kernel", "emulated")


def open_backend(name: str, node: str, *, bpffs_root: str | None = None,
                 state_dir: str | None = None, netns: str | None = None):
    """A backend by name, not yet started."""
    if name == "kernel":
        from tailor.datapath.agent.backends import kernel
        return kernel.KernelBackend(node, bpffs_root=bpffs_root, state_dir=state_dir, netns=netns)
    if name == "emulated":
        from tailor.datapath.agent.backends import emulated
        return emulated.EmulatedBackend(node)
    raise ValueError(f"unknown backend {name!r}: one of {', '.join(BACKENDS)}")
