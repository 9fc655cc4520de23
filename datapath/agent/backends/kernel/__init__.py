"""The kernel backend: each pod's programs in the kernel through bpf(), on
tcx links of its host-side veth, everything pinned on bpffs so that the
agent can stop, crash or be upgraded while every pod stays enforced.

Imported only through the backend registry (backends/__init__.py) when
`--backend kernel` is chosen, and by its tests; never by the emulated
backend, nor it by the emulated one. Two modules:

    backend.py      KernelBackend: attach, swap, detach, maps, reading, trace
    persistence.py  pins and state files, written atomically; adoption at start
"""
from tailor.datapath.agent.backends.kernel.backend import KernelBackend
from tailor.datapath.agent.backends.kernel.persistence import (
    DEFAULT_BPFFS_ROOT, DEFAULT_STATE_DIR, pod_dirname)

__all__ = ["KernelBackend", "pod_dirname", "DEFAULT_BPFFS_ROOT", "DEFAULT_STATE_DIR"]
