"""Kernel objects: maps and programs held by file descriptor, their pins on
bpffs, and BPF_PROG_TEST_RUN.

Called by the agent's kernel backend (load a pod's program and its maps, pin
them, adopt them again after a restart), by `attach` (which puts a
KernelProgram on an interface) and by the kernel tests and the VM-vs-kernel
differential tests (test_run). All bpf() calls go through `libbpf`.

Objects own their fd: close() (or leaving a `with` block) releases it. A
pinned object outlives the fd; unpin() removes the pin.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
import struct
from collections.abc import Iterator

from tailor.datapath.ebpf import errors, isa, libbpf, maps

BPFFS_ROOT = "/sys/fs/bpf"

# enum bpf_prog_type
SCHED_CLS = 3
SCHED_ACT = 4
XDP = 6

# The kernel accepts object names of [A-Za-z0-9_.], at most 15 characters.
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.]")


def kernel_name(name: str) -> str:
    """The name the kernel will accept and show in bpftool for `name`."""
    return _BAD_NAME_CHARS.sub("_", name)[:libbpf.OBJ_NAME_LEN - 1]


class FdObject:
    """An fd-owning bpf object: close(), context manager, pin()."""
    fd: int

    def _what(self) -> str:
        raise NotImplementedError

    def pin(self, path: str) -> None:
        """Pin on bpffs so the object outlives this process. The parent
        directory is created if missing."""
        ensure_dir(os.path.dirname(path) or ".")
        libbpf.obj_pin(self.live_fd(), path, self._what())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def live_fd(self) -> int:
        """The fd, or an error naming the object if it was closed."""
        if self.fd < 0:
            raise errors.KernelError(f"{self._what()} is closed", errno.EBADF)
        return self.fd

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_pinned_fd(path: str, kind: str) -> int:
    """An fd for the object pinned at `path`, which must be a `kind`
    ('map', 'prog' or 'link'): bpf_obj_get itself accepts any kind."""
    fd = libbpf.obj_get(path)
    found = libbpf.object_kind(fd)
    if found != kind:
        os.close(fd)
        raise errors.KernelError(
            f"{path} is pinned as a bpf {found}, not a {kind}", errno.EINVAL)
    return fd


# --- maps ------------------------------------------------------------------

class KernelMap(FdObject):
    """A kernel map. Keys and values are bytes of exactly the spec's sizes;
    for per-CPU maps a value is a list with one bytes per possible CPU."""

    def __init__(self, fd: int, spec: maps.MapSpec):
        self.fd = fd
        self.spec = spec
        self.percpu = spec.type in maps.PERCPU_TYPES
        self._ncpus = libbpf.num_possible_cpus() if self.percpu else 1
        # The kernel pads each per-CPU slot to 8 bytes.
        self._slot = (spec.value_size + 7) // 8 * 8 if self.percpu else spec.value_size

    @classmethod
    def create(cls, spec: maps.MapSpec) -> KernelMap:
        fd = libbpf.map_create(int(spec.type), kernel_name(spec.name), spec.key_size,
                               spec.value_size, spec.max_entries, spec.flags)
        return cls(fd, spec)

    @classmethod
    def open_pinned(cls, path: str, name: str | None = None) -> KernelMap:
        """Adopt a pinned map; its spec is read back from the kernel. `name`
        overrides the kernel's (truncated) name as the spec's name."""
        fd = open_pinned_fd(path, "map")
        try:
            info = libbpf.map_info(fd, f"map pinned at {path}")
            spec = maps.MapSpec(name=name or info.name.decode(), type=maps.MapType(info.type),
                                key_size=info.key_size, value_size=info.value_size,
                                max_entries=info.max_entries, flags=info.map_flags)
        except ValueError as e:
            os.close(fd)
            raise errors.KernelError(f"map pinned at {path} is not one tailor uses: {e}",
                                     errno.EINVAL) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, spec)

    def _what(self) -> str:
        return f"map {self.spec.name!r}"

    def _key(self, key: bytes) -> bytes:
        if len(key) != self.spec.key_size:
            raise ValueError(f"map {self.spec.name!r}: key is {len(key)} bytes, "
                             f"the map's keys are {self.spec.key_size}")
        return key

    def _pack(self, value) -> bytes:
        size = self.spec.value_size
        if not self.percpu:
            if len(value) != size:
                raise ValueError(f"map {self.spec.name!r}: value is {len(value)} bytes, "
                                 f"the map's values are {size}")
            return bytes(value)
        # Per-CPU: one value for every CPU, or a single bytes copied to all.
        values = [value] * self._ncpus if isinstance(value, (bytes, bytearray)) else list(value)
        if len(values) != self._ncpus or any(len(v) != size for v in values):
            raise ValueError(f"map {self.spec.name!r}: per-CPU value needs {self._ncpus} "
                             f"values of {size} bytes (or one bytes for all CPUs)")
        pad = b"\0" * (self._slot - size)
        return b"".join(bytes(v) + pad for v in values)

    def _unpack(self, raw: bytes):
        if not self.percpu:
            return raw
        size = self.spec.value_size
        return [raw[i * self._slot:i * self._slot + size] for i in range(self._ncpus)]

    def lookup(self, key: bytes) -> bytes | list[bytes] | None:
        raw = libbpf.map_lookup(self.live_fd(), self._key(key), self._slot * self._ncpus,
                                self._what())
        return None if raw is None else self._unpack(raw)

    def update(self, key: bytes, value, flags: int = maps.BPF_ANY) -> None:
        libbpf.map_update(self.live_fd(), self._key(key), self._pack(value), flags,
                          self._what())

    def delete(self, key: bytes) -> bool:
        return libbpf.map_delete(self.live_fd(), self._key(key), self._what())

    def keys(self) -> Iterator[bytes]:
        key = None
        while True:
            key = libbpf.map_next_key(self.live_fd(), key, self.spec.key_size, self._what())
            if key is None:
                return
            yield key

    def items(self) -> Iterator[tuple[bytes, bytes | list[bytes]]]:
        """(key, value) pairs; an entry deleted during the walk is skipped."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def clear(self) -> None:
        for key in list(self.keys()):
            self.delete(key)

    def info(self) -> libbpf.MapInfo:
        return libbpf.map_info(self.live_fd(), self._what())

    def __repr__(self) -> str:
        return f"KernelMap({self.spec.name!r}, fd={self.fd})"


# --- programs --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ProgramInfo:
    id: int
    tag: str             # hex, as bpftool prints it
    name: str
    type: int
    xlated_len: int      # bytes of the kernel's rewritten instructions
    jited_len: int       # bytes of native code
    verified_insns: int  # instructions the verifier walked
    gpl_compatible: bool


# struct __sk_buff (uapi/linux/bpf.h): 192 bytes. For BPF_PROG_TEST_RUN of a
# tc program the kernel reads only these fields from ctx_in and requires every
# other byte to be zero; it writes the same fields back to ctx_out.
SKB_SIZE = 192
_SKB_FIELDS = {             # name: (offset, struct format)
    "mark": (8, "<I"),
    "priority": (32, "<I"),
    "ingress_ifindex": (36, "<I"),
    "ifindex": (40, "<I"),
    "cb": (48, "<5I"),
    "tstamp": (152, "<Q"),
    "wire_len": (160, "<I"),
    "gso_segs": (164, "<I"),
    "gso_size": (176, "<I"),
    "hwtstamp": (184, "<Q"),
}


@dataclasses.dataclass(frozen=True)
class SkbCtx:
    """The writable part of a struct __sk_buff for test runs.

    ifindex picks the device the skb appears to arrive on (default: the
    loopback device of the caller's netns); wire_len 0 means the packet
    length; ingress_ifindex becomes skb->skb_iif.
    """
    mark: int = 0
    priority: int = 0
    ingress_ifindex: int = 0
    ifindex: int = 0
    cb: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    tstamp: int = 0
    wire_len: int = 0
    gso_segs: int = 0
    gso_size: int = 0
    hwtstamp: int = 0

    def pack(self) -> bytes:
        buf = bytearray(SKB_SIZE)
        for name, (off, fmt) in _SKB_FIELDS.items():
            value = getattr(self, name)
            struct.pack_into(fmt, buf, off, *(value if name == "cb" else (value,)))
        return bytes(buf)

    @classmethod
    def unpack(cls, raw: bytes) -> SkbCtx:
        raw = raw.ljust(SKB_SIZE, b"\0")
        fields = {}
        for name, (off, fmt) in _SKB_FIELDS.items():
            value = struct.unpack_from(fmt, raw, off)
            fields[name] = tuple(value) if name == "cb" else value[0]
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class TestRun:
    __test__ = False       # not a pytest test class, despite the name
    retval: int
    data: bytes            # the packet as the program left it
    duration_ns: int       # average per repetition
    ctx: bytes             # tc: the struct __sk_buff after the run (SKB_SIZE bytes)

    @property
    def skb(self) -> SkbCtx:
        return SkbCtx.unpack(self.ctx)


# Verifier log buffer: first try, and the cap when growing on ENOSPC. The
# kernel keeps the log's tail when the buffer is too small, so even a capped
# log ends with the reason.
LOG_SIZE = 1 << 20
LOG_SIZE_MAX = 1 << 28
# Trailing statistics lines of a verifier log, not part of the reason.
_LOG_STATS = re.compile(r"^(processed \d+ insns|verification time|stack depth|"
                        r"max_states_per_insn)")


def verifier_reason(log: str, lines: int = 3) -> str:
    """The last meaningful lines of a verifier log: what it objected to."""
    body = [ln for ln in log.splitlines() if ln.strip() and not _LOG_STATS.match(ln)]
    return "\n".join(body[-lines:])


class KernelProgram(FdObject):
    """A loaded program. `log` is the verifier log when one was asked for."""

    def __init__(self, fd: int, name: str, prog_type: int = SCHED_CLS, log: str = ""):
        self.fd = fd
        self.name = name
        self.prog_type = prog_type
        self.log = log

    @classmethod
    def load(cls, insns: list[isa.Insn], maps: dict[str, KernelMap] | None = None, *,
             prog_type: int = SCHED_CLS, name: str = "tailor", license: str = "GPL",
             log_level: int = 0) -> KernelProgram:
        """Resolve map references, encode and load.

        log_level 0 loads without a log (fast); only if the verifier rejects
        the program is it loaded again with a log, to explain why. A
        log_level > 0 keeps the log of a successful load in `.log`.
        """
        fds = {ref: m.live_fd() for ref, m in (maps or {}).items()}
        try:
            code = isa.encode(isa.resolve_maps(insns, fds))
        except KeyError as e:
            raise errors.KernelError(f"program {name!r}: {e.args[0]}; pass the map in "
                                     f"maps={{...}}", errno.EINVAL) from None
        kname = kernel_name(name)
        ret, log = libbpf.prog_load(prog_type, kname, license, code, log_level=log_level,
                                    log_size=LOG_SIZE if log_level else 0)
        if ret < 0:
            ret, log = cls._load_with_log(prog_type, kname, license, code, max(log_level, 1))
        if ret < 0:
            cls._raise_rejected(name, isa.slot_count(insns), -ret, log)
        return cls(ret, name, prog_type, log)

    @staticmethod
    def _load_with_log(prog_type, kname, license, code, log_level) -> tuple[int, str]:
        size = LOG_SIZE
        while True:
            ret, log = libbpf.prog_load(prog_type, kname, license, code,
                                        log_level=log_level, log_size=size)
            if ret != -errno.ENOSPC or size >= LOG_SIZE_MAX:
                return ret, log
            size *= 4

    @staticmethod
    def _raise_rejected(name: str, slots: int, err: int, log: str):
        if not log.strip():
            # No log: not the verifier but the bpf() call itself (EPERM
            # without CAP_BPF, E2BIG, a bad map fd...).
            raise errors.KernelError(
                f"bpf_prog_load of program {name!r} ({slots} insns): "
                f"{os.strerror(err)} (errno {err})", err)
        raise errors.VerifierError(
            f"the verifier rejected program {name!r} ({slots} insns, errno {err} "
            f"{errno.errorcode.get(err, '')}): {verifier_reason(log)}\n"
            f"(the full log is in the exception's .log)", log, err)

    @classmethod
    def open_pinned(cls, path: str) -> KernelProgram:
        fd = open_pinned_fd(path, "prog")
        info = libbpf.prog_info(fd, f"program pinned at {path}")
        return cls(fd, info.name.decode(), info.type)

    @classmethod
    def from_id(cls, prog_id: int) -> KernelProgram:
        fd = libbpf.prog_get_fd_by_id(prog_id)
        info = libbpf.prog_info(fd, f"program id {prog_id}")
        return cls(fd, info.name.decode(), info.type)

    def _what(self) -> str:
        return f"program {self.name!r}"

    def info(self) -> ProgramInfo:
        i = libbpf.prog_info(self.live_fd(), self._what())
        return ProgramInfo(id=i.id, tag=bytes(i.tag).hex(), name=i.name.decode(),
                           type=i.type, xlated_len=i.xlated_prog_len,
                           jited_len=i.jited_prog_len, verified_insns=i.verified_insns,
                           gpl_compatible=bool(i.gpl_compatible & 1))

    def test_run(self, data: bytes, *, ctx: bytes | SkbCtx | None = None,
                 repeat: int = 1, headroom: int = 4096) -> TestRun:
        """Run once (or `repeat` times) on `data` in the kernel.

        For tc programs the packet must be at least an Ethernet header (14
        bytes). `headroom` is how much the program may grow the packet.
        The returned ctx is the __sk_buff after the run (mark, priority, cb...).
        """
        if isinstance(ctx, SkbCtx):
            ctx = ctx.pack()
        # tc programs always get their __sk_buff back (the kernel zero-fills
        # a missing ctx_in); other types only the ctx they were given.
        is_tc = self.prog_type in (SCHED_CLS, SCHED_ACT)
        ctx_out_size = SKB_SIZE if is_tc else len(ctx or b"")
        retval, out, duration, ctx_out = libbpf.prog_test_run(
            self.live_fd(), data, len(data) + headroom, ctx, ctx_out_size, repeat,
            self._what())
        return TestRun(retval=retval, data=out, duration_ns=duration, ctx=ctx_out)

    def __repr__(self) -> str:
        return f"KernelProgram({self.name!r}, fd={self.fd})"


# --- bpffs -----------------------------------------------------------------

def _bpffs_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        # fields: id parent major:minor root mountpoint opts ... - fstype source
        return [line.split()[4] for line in f if line.split(" - ")[1].startswith("bpf ")]


def is_bpffs_mounted(path: str = BPFFS_ROOT) -> bool:
    """Whether `path` lies on a bpffs mount."""
    path = os.path.realpath(path)
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in _bpffs_mounts())


def ensure_dir(path: str) -> str:
    """mkdir -p inside bpffs (directories work there as anywhere)."""
    if not is_bpffs_mounted(path):
        raise errors.KernelError(f"{path} is not on a bpffs mount; mount one with "
                                 f"`mount -t bpf bpf {BPFFS_ROOT}`", errno.ENOTSUP)
    os.makedirs(path, exist_ok=True)
    return path


def unpin(path: str, missing_ok: bool = True) -> bool:
    """Remove a pin. The object lives on while fds or links hold it."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        if missing_ok:
            return False
        raise


def remove_tree(path: str) -> None:
    """Unpin everything under `path` and remove its directories, bottom-up."""
    if not os.path.exists(path):
        return
    if not is_bpffs_mounted(path):
        raise errors.KernelError(f"refusing to remove {path}: not on bpffs", errno.EINVAL)
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)
