"""Maps with the kernel's semantics, held in Python.

Used by the emulated datapath and tests (the userspace methods, the same
names and behaviour as kernel.KernelMap) and by helpers.py (the `prog_*`
methods, which return the helper's value: a live bytearray or a negative
errno, never raise).

Values are bytearrays that a program's map_lookup_elem pointer writes
straight into. Where the kernel updates a value in place (arrays, per-CPU
hash) the VM copies into the same bytearray; where it allocates a new
element (hash, LRU hash, LPM trie) the VM makes a new one, so a pointer
taken before the update keeps pointing at the old, detached value.

Documented differences from the kernel:
- LRU_HASH evicts the exact least-recently-used entry (program lookups and
  updates count as use; userspace lookups do not). The kernel's LRU is
  approximate and per-CPU and can evict before the map is full: tests must
  not depend on which entry goes, only that the map stays within bounds.
- Per-CPU maps: the program always runs on CPU 0. Userspace sees one value
  per possible CPU (lookup returns a list of bytes); update takes one bytes
  value (copied to every CPU) or a list with one per CPU.
- Iteration order (keys/items) is insertion order, not the kernel's.
"""
from __future__ import annotations

import collections
import errno as _errno
import os

from .. import maps as _maps
from ..errors import KernelError
from ..maps import BPF_ANY, BPF_EXIST, BPF_NOEXIST, MapSpec, MapType


class MapError(KernelError):
    """A map operation failed the way the kernel's would; `errno` is the
    kernel's (E2BIG, EEXIST, ENOENT, EINVAL, ENOSPC), so code can handle VM
    and kernel maps alike."""

    def __init__(self, map_name: str, op: str, err: int):
        super().__init__(f"{op} on VM map {map_name!r}: {_errno.errorcode[err]} "
                         f"({os.strerror(err)})", err)


def possible_cpus() -> int:
    """Number of possible CPUs, as the kernel sizes per-CPU values."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
        return max(int(part.split("-")[-1]) for part in text.split(",")) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


class VmMap:
    """Base: userspace API on top of the prog_* primitives."""

    def __init__(self, spec: MapSpec, ncpus: int = 1):
        self.spec = spec
        self.name = spec.name
        self.key_size = spec.key_size
        self.value_size = spec.value_size
        self.max_entries = spec.max_entries
        self.percpu = spec.type in _maps.PERCPU_TYPES
        self.ncpus = ncpus if self.percpu else 1

    @staticmethod
    def create(spec: MapSpec, ncpus: int | None = None) -> "VmMap":
        kind = {MapType.HASH: HashMap, MapType.PERCPU_HASH: HashMap,
                MapType.LRU_HASH: LruHashMap, MapType.LRU_PERCPU_HASH: LruHashMap,
                MapType.ARRAY: ArrayMap, MapType.PERCPU_ARRAY: ArrayMap,
                MapType.LPM_TRIE: LpmTrieMap}.get(spec.type)
        if kind is None:
            raise ValueError(f"map {spec.name!r}: type {spec.type!r} is not modelled by the VM")
        if ncpus is None:
            ncpus = possible_cpus() if spec.type in _maps.PERCPU_TYPES else 1
        return kind(spec, ncpus)

    # --- primitives (subclasses) ------------------------------------------------
    # _get(key, touch) -> the key's storage (a bytearray; per-CPU: a list of
    # them) or None; touch=True is a program lookup (counts as LRU use).

    def _get(self, key: bytes, touch: bool):
        raise NotImplementedError

    def prog_update(self, key: bytes, value: bytes, flags: int) -> int:
        raise NotImplementedError

    def prog_delete(self, key: bytes) -> int:
        raise NotImplementedError

    def _entries(self):
        """(key, storage) pairs."""
        raise NotImplementedError

    # --- the program's view ----------------------------------------------------------

    def prog_lookup(self, key: bytes, cpu: int = 0) -> bytearray | None:
        slot = self._get(key, True)
        if slot is None:
            return None
        if self.percpu:
            return slot[cpu] if cpu < self.ncpus else None
        return slot

    def _new_slot(self, value: bytes):
        """Storage for a new element written by a program (per-CPU: this CPU
        gets the value, the others zeros, like pcpu_init_value)."""
        if self.percpu:
            return [bytearray(value)] + [bytearray(self.value_size) for _ in range(self.ncpus - 1)]
        return bytearray(value)

    # --- userspace API (mirrors kernel.KernelMap) -------------------------------------

    def _check_key(self, key: bytes) -> bytes:
        key = bytes(key)
        if len(key) != self.key_size:
            raise ValueError(f"map {self.name!r}: key is {len(key)} bytes, want {self.key_size}")
        return key

    def _check_value(self, value) -> list[bytes] | bytes:
        if self.percpu and isinstance(value, (list, tuple)):
            if len(value) != self.ncpus:
                raise ValueError(f"map {self.name!r}: {len(value)} per-CPU values, "
                                 f"want {self.ncpus}")
            return [self._one_value(v) for v in value]
        return self._one_value(value)

    def _one_value(self, value) -> bytes:
        value = bytes(value)
        if len(value) != self.value_size:
            raise ValueError(f"map {self.name!r}: value is {len(value)} bytes, "
                             f"want {self.value_size}")
        return value

    def lookup(self, key: bytes):
        """The value (bytes), a list of bytes per CPU for per-CPU maps, or
        None. Does not count as use for LRU (the kernel's syscall lookup
        does not set the reference bit either)."""
        slot = self._get(self._check_key(key), False)
        if slot is None:
            return None
        return [bytes(v) for v in slot] if self.percpu else bytes(slot)

    def update(self, key: bytes, value, flags: int = BPF_ANY) -> None:
        key = self._check_key(key)
        value = self._check_value(value)
        per_cpu = value if isinstance(value, list) else None
        err = self.prog_update(key, per_cpu[0] if per_cpu else value, flags)
        if err:
            raise MapError(self.name, "update", -err)
        if self.percpu:
            # userspace writes every CPU's copy
            slot = self._get(key, False)
            for cpu in range(self.ncpus):
                slot[cpu][:] = per_cpu[cpu] if per_cpu else value

    def delete(self, key: bytes) -> bool:
        err = self.prog_delete(self._check_key(key))
        if err == -_errno.ENOENT:
            return False
        if err:
            raise MapError(self.name, "delete", -err)
        return True

    def keys(self) -> list[bytes]:
        return [k for k, _ in self._entries()]

    def items(self) -> list[tuple[bytes, object]]:
        return [(k, [bytes(v) for v in s] if self.percpu else bytes(s))
                for k, s in self._entries()]

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        return f"<VmMap {self.name!r} {self.spec.type.name} {len(self)}/{self.max_entries}>"


def _bad_flags(flags: int) -> bool:
    # BPF_F_LOCK (4) needs a spin lock in the value: none here, so EINVAL too
    return flags > BPF_EXIST or flags < 0


class HashMap(VmMap):
    """HASH and PERCPU_HASH: full -> E2BIG for a new key (replacing an
    existing key still works, as with the kernel's spare element)."""

    def __init__(self, spec, ncpus=1):
        super().__init__(spec, ncpus)
        self.data: dict = collections.OrderedDict()

    def _get(self, key, touch):
        return self.data.get(key)

    def _make_room(self) -> int:
        return -_errno.E2BIG

    def prog_update(self, key, value, flags):
        if _bad_flags(flags):
            return -_errno.EINVAL
        old = self.data.get(key)
        if old is not None and flags == BPF_NOEXIST:
            return -_errno.EEXIST
        if old is None and flags == BPF_EXIST:
            return -_errno.ENOENT
        if old is None and len(self.data) >= self.max_entries:
            err = self._make_room()
            if err:
                return err
        if old is not None and self.percpu:
            old[0][:] = value          # per-CPU hash updates in place
            self._touch(key)
        else:
            self.data[key] = self._new_slot(value)
            self._touch(key)
        return 0

    def _touch(self, key):
        pass

    def prog_delete(self, key):
        if self.data.pop(key, None) is None:
            return -_errno.ENOENT
        return 0

    def _entries(self):
        return list(self.data.items())


class LruHashMap(HashMap):
    """LRU_HASH / LRU_PERCPU_HASH with exact LRU order (see module doc)."""

    def _get(self, key, touch):
        slot = self.data.get(key)
        if slot is not None and touch:
            self.data.move_to_end(key)
        return slot

    def _touch(self, key):
        self.data.move_to_end(key)

    def _make_room(self):
        self.data.popitem(last=False)
        return 0


class ArrayMap(VmMap):
    """ARRAY / PERCPU_ARRAY: every index exists and starts zeroed; storage is
    made on first touch so big arrays cost nothing until used."""

    def __init__(self, spec, ncpus=1):
        super().__init__(spec, ncpus)
        self.data: dict[int, object] = {}

    def _index(self, key: bytes) -> int:
        return int.from_bytes(key[:4], "little")

    def _get(self, key, touch):
        i = self._index(key)
        if i >= self.max_entries:
            return None
        slot = self.data.get(i)
        if slot is None:
            slot = self.data[i] = self._new_slot(bytes(self.value_size))
        return slot

    def prog_update(self, key, value, flags):
        if _bad_flags(flags):
            return -_errno.EINVAL
        i = self._index(key)
        if i >= self.max_entries:
            return -_errno.E2BIG
        if flags == BPF_NOEXIST:
            return -_errno.EEXIST      # every element always exists
        slot = self._get(key, False)
        (slot[0] if self.percpu else slot)[:] = value
        return 0

    def prog_delete(self, key):
        return -_errno.EINVAL

    def _entries(self):
        return [(i.to_bytes(4, "little"), self._get(i.to_bytes(4, "little"), False))
                for i in range(self.max_entries)]


class LpmTrieMap(VmMap):
    """LPM_TRIE. Key: u32 prefixlen (host order) + data. An entry is
    identified by (prefixlen, the first prefixlen bits); lookup returns the
    longest stored prefix that covers the key's first prefixlen bits.
    Full -> ENOSPC (not E2BIG: the trie's own error)."""

    def __init__(self, spec, ncpus=1):
        super().__init__(spec, ncpus)
        self.data_bits = 8 * (spec.key_size - 4)
        # (prefixlen, masked data int) -> (stored key bytes, value)
        self.data: dict[tuple[int, int], tuple[bytes, bytearray]] = {}
        self._lengths: dict[int, int] = {}      # prefixlen -> entry count

    def _split(self, key: bytes) -> tuple[int, int]:
        plen = int.from_bytes(key[:4], "little")
        return plen, int.from_bytes(key[4:], "big")

    def _masked(self, value: int, plen: int) -> int:
        return value >> (self.data_bits - plen) if plen else 0

    def _get(self, key, touch):
        plen, value = self._split(key)
        if plen > self.data_bits:
            return None
        for length in sorted(self._lengths, reverse=True):
            if length <= plen:
                hit = self.data.get((length, self._masked(value, length)))
                if hit is not None:
                    return hit[1]
        return None

    def prog_update(self, key, value, flags):
        plen, bits = self._split(key)
        if _bad_flags(flags) or plen > self.data_bits:
            return -_errno.EINVAL
        ident = (plen, self._masked(bits, plen))
        exists = ident in self.data
        if exists and flags == BPF_NOEXIST:
            return -_errno.EEXIST
        if not exists and flags == BPF_EXIST:
            return -_errno.ENOENT
        if not exists and len(self.data) >= self.max_entries:
            return -_errno.ENOSPC
        self.data[ident] = (bytes(key), bytearray(value))
        if not exists:
            self._lengths[plen] = self._lengths.get(plen, 0) + 1
        return 0

    def prog_delete(self, key):
        plen, bits = self._split(key)
        if plen > self.data_bits:
            return -_errno.EINVAL
        ident = (plen, self._masked(bits, plen))
        if self.data.pop(ident, None) is None:
            return -_errno.ENOENT
        self._lengths[plen] -= 1
        if not self._lengths[plen]:
            del self._lengths[plen]
        return 0

    def _entries(self):
        return [(k, v) for k, v in self.data.values()]
