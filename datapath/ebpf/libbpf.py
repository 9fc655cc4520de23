"""The ctypes binding to libbpf's low-level bpf() wrappers (Debian libbpf1,
1.1.x). The only module of tailor that touches ctypes or libbpf.

Called by `kernel` (maps, programs, pins, test runs) and `attach` (links).
Every function here takes and returns plain Python values (ints, bytes) and
turns a failure into `errors.KernelError` naming the call and the object; the
callers never see a ctypes type or a negative return code.

Struct layouts are those of libbpf 1.1: libbpf checks `sz` against the size
it was built with and refuses non-zero bytes past it, so each *_opts struct
below stops exactly where 1.1's does (no `log_true_size`, no tcx link options:
those arrived in 1.2 and 1.3). Since 1.0 libbpf returns -errno and also sets
errno; we read the return value.
"""
from __future__ import annotations

import ctypes
import errno as errno_mod
import functools
import os

from tailor.datapath.ebpf import errors

LIBRARY = "libbpf.so.1"

# enum bpf_attach_type values used with links (uapi/linux/bpf.h, 6.6+).
TCX_INGRESS = 46
TCX_EGRESS = 47
# enum bpf_link_type for tcx links.
LINK_TYPE_TCX = 11

OBJ_NAME_LEN = 16     # BPF_OBJ_NAME_LEN, including the NUL
TAG_SIZE = 8          # BPF_TAG_SIZE

c_u32 = ctypes.c_uint32
c_u64 = ctypes.c_uint64


# --- libbpf 1.1 option structs ---------------------------------------------

class MapCreateOpts(ctypes.Structure):
    """struct bpf_map_create_opts (libbpf 1.1): 48 bytes."""
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("btf_fd", c_u32),
        ("btf_key_type_id", c_u32),
        ("btf_value_type_id", c_u32),
        ("btf_vmlinux_value_type_id", c_u32),
        ("inner_map_fd", c_u32),
        ("map_flags", c_u32),
        ("map_extra", c_u64),
        ("numa_node", c_u32),
        ("map_ifindex", c_u32),
    ]


class ProgLoadOpts(ctypes.Structure):
    """struct bpf_prog_load_opts (libbpf 1.1): 104 bytes, ends at log_buf."""
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("attempts", ctypes.c_int),
        ("expected_attach_type", c_u32),
        ("prog_btf_fd", c_u32),
        ("prog_flags", c_u32),
        ("prog_ifindex", c_u32),
        ("kern_version", c_u32),
        ("attach_btf_id", c_u32),
        ("attach_prog_fd", c_u32),
        ("attach_btf_obj_fd", c_u32),
        ("fd_array", ctypes.POINTER(ctypes.c_int)),
        ("func_info", ctypes.c_void_p),
        ("func_info_cnt", c_u32),
        ("func_info_rec_size", c_u32),
        ("line_info", ctypes.c_void_p),
        ("line_info_cnt", c_u32),
        ("line_info_rec_size", c_u32),
        ("log_level", c_u32),
        ("log_size", c_u32),
        ("log_buf", ctypes.c_void_p),
    ]


class TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf 1.1): 80 bytes."""
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", c_u32),
        ("data_size_out", c_u32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", c_u32),
        ("ctx_size_out", c_u32),
        ("retval", c_u32),
        ("repeat", ctypes.c_int),
        ("duration", c_u32),
        ("flags", c_u32),
        ("cpu", c_u32),
        ("batch_size", c_u32),
    ]


# --- kernel info structs (uapi; the kernel copies min(our size, its size)) ---

class ProgInfo(ctypes.Structure):
    """struct bpf_prog_info up to attach_btf_id (232 bytes on 6.1+)."""
    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("tag", ctypes.c_uint8 * TAG_SIZE),
        ("jited_prog_len", c_u32),
        ("xlated_prog_len", c_u32),
        ("jited_prog_insns", c_u64),
        ("xlated_prog_insns", c_u64),
        ("load_time", c_u64),
        ("created_by_uid", c_u32),
        ("nr_map_ids", c_u32),
        ("map_ids", c_u64),
        ("name", ctypes.c_char * OBJ_NAME_LEN),
        ("ifindex", c_u32),
        ("gpl_compatible", c_u32),
        ("netns_dev", c_u64),
        ("netns_ino", c_u64),
        ("nr_jited_ksyms", c_u32),
        ("nr_jited_func_lens", c_u32),
        ("jited_ksyms", c_u64),
        ("jited_func_lens", c_u64),
        ("btf_id", c_u32),
        ("func_info_rec_size", c_u32),
        ("func_info", c_u64),
        ("nr_func_info", c_u32),
        ("nr_line_info", c_u32),
        ("line_info", c_u64),
        ("jited_line_info", c_u64),
        ("nr_jited_line_info", c_u32),
        ("line_info_rec_size", c_u32),
        ("jited_line_info_rec_size", c_u32),
        ("nr_prog_tags", c_u32),
        ("prog_tags", c_u64),
        ("run_time_ns", c_u64),
        ("run_cnt", c_u64),
        ("recursion_misses", c_u64),
        ("verified_insns", c_u32),
        ("attach_btf_obj_id", c_u32),
        ("attach_btf_id", c_u32),
        ("_pad", c_u32),
    ]


class MapInfo(ctypes.Structure):
    """struct bpf_map_info up to map_extra (88 bytes on 6.1+)."""
    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("key_size", c_u32),
        ("value_size", c_u32),
        ("max_entries", c_u32),
        ("map_flags", c_u32),
        ("name", ctypes.c_char * OBJ_NAME_LEN),
        ("ifindex", c_u32),
        ("btf_vmlinux_value_type_id", c_u32),
        ("netns_dev", c_u64),
        ("netns_ino", c_u64),
        ("btf_id", c_u32),
        ("btf_key_type_id", c_u32),
        ("btf_value_type_id", c_u32),
        ("_pad", c_u32),
        ("map_extra", c_u64),
    ]


class LinkInfo(ctypes.Structure):
    """struct bpf_link_info: the common head, then the per-type union read as
    the tcx member (ifindex, attach_type) at offset 16."""
    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("prog_id", c_u32),
        ("_pad", c_u32),
        ("tcx_ifindex", c_u32),
        ("tcx_attach_type", c_u32),
        ("_union_rest", ctypes.c_uint8 * 24),
    ]


def _sized(struct_type):
    opts = struct_type()
    opts.sz = ctypes.sizeof(struct_type)
    return opts


# --- loading the library ---------------------------------------------------

_PROTOTYPES = {
    # name: (restype, argtypes)
    "bpf_map_create": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, c_u32, c_u32, c_u32,
                                      ctypes.POINTER(MapCreateOpts)]),
    "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                           c_u64]),
    "bpf_map_delete_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p]),
    "bpf_map_get_next_key": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_prog_load": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                                     ctypes.c_void_p, ctypes.c_size_t,
                                     ctypes.POINTER(ProgLoadOpts)]),
    "bpf_prog_test_run_opts": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(TestRunOpts)]),
    "bpf_obj_pin": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p]),
    "bpf_obj_get": (ctypes.c_int, [ctypes.c_char_p]),
    # opts is NULL: libbpf 1.1 knows no tcx link options (relative_fd etc.).
    "bpf_link_create": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                       ctypes.c_void_p]),
    "bpf_link_detach": (ctypes.c_int, [ctypes.c_int]),
    # opts NULL: no BPF_F_REPLACE (old_prog_fd) check, swap whatever is attached.
    "bpf_link_update": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]),
    # 1.1 has only the generic form; the typed *_get_info_by_fd came in 1.2.
    "bpf_obj_get_info_by_fd": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p,
                                              ctypes.POINTER(c_u32)]),
    "bpf_prog_get_fd_by_id": (ctypes.c_int, [c_u32]),
    "libbpf_num_possible_cpus": (ctypes.c_int, []),
}


@functools.cache
def _lib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError as e:
        raise errors.KernelError(
            f"cannot load {LIBRARY}: {e}; install the libbpf1 package") from None
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


# What to do about the errors a caller can fix.
_HINTS = {
    errno_mod.EPERM: "; bpf() needs root (or CAP_BPF with CAP_NET_ADMIN)",
    errno_mod.ENOENT: "; nothing is pinned there or the id is gone",
    errno_mod.ENODEV: "; no interface has that ifindex in this network namespace",
    errno_mod.E2BIG: "; the map is full (max_entries) or the object is too large",
}


def _check(ret: int, what: str) -> int:
    """libbpf returns -errno on failure; raise naming the call and object."""
    if ret >= 0:
        return ret
    err = -ret
    raise errors.KernelError(f"{what}: {os.strerror(err)} (errno {err}){_HINTS.get(err, '')}",
                             err)


def _buf(data: bytes):
    # No trailing NUL: the kernel reads exactly the sizes it was told.
    return ctypes.create_string_buffer(bytes(data), len(data))


# --- maps ------------------------------------------------------------------

def map_create(map_type: int, name: str, key_size: int, value_size: int,
               max_entries: int, flags: int = 0) -> int:
    opts = _sized(MapCreateOpts)
    opts.map_flags = flags
    ret = _lib().bpf_map_create(map_type, name.encode(), key_size, value_size,
                                max_entries, ctypes.byref(opts))
    return _check(ret, f"bpf_map_create({name!r}, type {map_type}, key {key_size}B, "
                       f"value {value_size}B, {max_entries} entries, flags {flags:#x})")


def map_lookup(fd: int, key: bytes, value_size: int, what: str) -> bytes | None:
    """The value under `key`, or None when there is none (ENOENT)."""
    value = ctypes.create_string_buffer(value_size)
    ret = _lib().bpf_map_lookup_elem(fd, _buf(key), value)
    if ret == -errno_mod.ENOENT:
        return None
    _check(ret, f"bpf_map_lookup_elem on {what}")
    return value.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int, what: str) -> None:
    _check(_lib().bpf_map_update_elem(fd, _buf(key), _buf(value), flags),
           f"bpf_map_update_elem on {what} (flags {flags})")


def map_delete(fd: int, key: bytes, what: str) -> bool:
    """True if an entry was removed, False if there was none."""
    ret = _lib().bpf_map_delete_elem(fd, _buf(key))
    if ret == -errno_mod.ENOENT:
        return False
    _check(ret, f"bpf_map_delete_elem on {what}")
    return True


def map_next_key(fd: int, key: bytes | None, key_size: int, what: str) -> bytes | None:
    """The key after `key` (the first key when None), or None at the end."""
    nxt = ctypes.create_string_buffer(key_size)
    ret = _lib().bpf_map_get_next_key(fd, None if key is None else _buf(key), nxt)
    if ret == -errno_mod.ENOENT:
        return None
    _check(ret, f"bpf_map_get_next_key on {what}")
    return nxt.raw


def num_possible_cpus() -> int:
    """Per-CPU map values hold one slot per *possible* CPU (not online)."""
    return _check(_lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


# --- programs --------------------------------------------------------------

def prog_load(prog_type: int, name: str, license: str, insns: bytes, *,
              log_level: int = 0, log_size: int = 0) -> tuple[int, str]:
    """Load raw instruction bytes. Returns (fd or -errno, verifier log).

    Unlike the other calls this does not raise: the caller decides whether to
    retry with a log or a bigger log buffer (ENOSPC means the log was cut).
    With log_level 0 no log buffer is passed, so a successful load pays for
    no log; libbpf 1.1 itself does no retry in that case.
    """
    opts = _sized(ProgLoadOpts)
    log = ctypes.create_string_buffer(log_size) if log_level else None
    if log is not None:
        opts.log_level = log_level
        opts.log_size = log_size
        opts.log_buf = ctypes.cast(log, ctypes.c_void_p)
    code = _buf(insns)
    ret = _lib().bpf_prog_load(prog_type, name.encode(), license.encode(), code,
                               len(insns) // 8, ctypes.byref(opts))
    text = log.value.decode(errors="replace") if log is not None else ""
    return ret, text


def prog_test_run(fd: int, data: bytes, data_out_size: int, ctx: bytes | None,
                  ctx_out_size: int, repeat: int, what: str
                  ) -> tuple[int, bytes, int, bytes]:
    """BPF_PROG_TEST_RUN. Returns (retval, data out, duration ns, ctx out)."""
    opts = _sized(TestRunOpts)
    data_in = _buf(data)
    data_out = ctypes.create_string_buffer(data_out_size)
    opts.data_in = ctypes.cast(data_in, ctypes.c_void_p)
    opts.data_size_in = len(data)
    opts.data_out = ctypes.cast(data_out, ctypes.c_void_p)
    opts.data_size_out = data_out_size
    ctx_in = _buf(ctx) if ctx is not None else None
    ctx_out = ctypes.create_string_buffer(ctx_out_size) if ctx_out_size else None
    if ctx_in is not None:
        opts.ctx_in = ctypes.cast(ctx_in, ctypes.c_void_p)
        opts.ctx_size_in = len(ctx)
    if ctx_out is not None:
        opts.ctx_out = ctypes.cast(ctx_out, ctypes.c_void_p)
        opts.ctx_size_out = ctx_out_size
    opts.repeat = repeat
    ret = _lib().bpf_prog_test_run_opts(fd, ctypes.byref(opts))
    if ret == -errno_mod.ENOSPC:
        raise errors.KernelError(
            f"bpf_prog_test_run_opts on {what}: the output packet is "
            f"{opts.data_size_out} bytes, more than the {data_out_size} reserved",
            errno_mod.ENOSPC)
    _check(ret, f"bpf_prog_test_run_opts on {what} ({len(data)}-byte packet)")
    out_ctx = ctx_out.raw[:opts.ctx_size_out] if ctx_out is not None else b""
    return opts.retval, data_out.raw[:opts.data_size_out], opts.duration, out_ctx


def prog_get_fd_by_id(prog_id: int) -> int:
    return _check(_lib().bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id({prog_id})")


# --- any object: pins, info, links -------------------------------------------

def obj_pin(fd: int, path: str, what: str) -> None:
    _check(_lib().bpf_obj_pin(fd, os.fsencode(path)), f"bpf_obj_pin of {what} at {path}")


def obj_get(path: str) -> int:
    return _check(_lib().bpf_obj_get(os.fsencode(path)), f"bpf_obj_get({path})")


def _info(fd: int, info_type, what: str):
    info = info_type()
    size = c_u32(ctypes.sizeof(info_type))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           f"bpf_obj_get_info_by_fd on {what}")
    return info


def prog_info(fd: int, what: str) -> ProgInfo:
    return _info(fd, ProgInfo, what)


def map_info(fd: int, what: str) -> MapInfo:
    return _info(fd, MapInfo, what)


def link_info(fd: int, what: str) -> LinkInfo:
    return _info(fd, LinkInfo, what)


def link_create(prog_fd: int, target: int, attach_type: int, what: str) -> int:
    return _check(_lib().bpf_link_create(prog_fd, target, attach_type, None),
                  f"bpf_link_create of {what} (attach type {attach_type}, target {target})")


def link_update(fd: int, prog_fd: int, what: str) -> None:
    """BPF_LINK_UPDATE: the link runs `prog_fd` from now on, atomically (no
    moment with no program or with both)."""
    _check(_lib().bpf_link_update(fd, prog_fd, None), f"bpf_link_update of {what}")


def link_detach(fd: int, what: str) -> None:
    _check(_lib().bpf_link_detach(fd), f"bpf_link_detach of {what}")


def object_kind(fd: int) -> str:
    """'map', 'prog' or 'link': what kind of bpf object an fd refers to.
    bpf_obj_get returns any kind, and info structs differ per kind."""
    target = os.readlink(f"/proc/self/fd/{fd}")   # e.g. "anon_inode:bpf-map"
    # Links were "bpf_link" before kernel 6.x renamed them "bpf-link".
    for kind in ("map", "prog", "link"):
        if f"bpf-{kind}" in target or f"bpf_{kind}" in target:
            return kind
    return target
