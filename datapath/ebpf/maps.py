"""Map types and map specifications, shared by the kernel loader and the VM.
Pure data."""
from __future__ import annotations

import dataclasses
import enum


class MapType(enum.IntEnum):
    """The kernel's enum bpf_map_type values tailor uses."""
    HASH = 1
    ARRAY = 2
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11


PERCPU_TYPES = frozenset({MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH})

# Map flags (enum in uapi/linux/bpf.h).
F_NO_PREALLOC = 1 << 0
F_NO_COMMON_LRU = 1 << 1

# Update flags.
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2


@dataclasses.dataclass(frozen=True)
class MapSpec:
    """What a program needs of a map. `name` is how instructions refer to it
    (Insn.ref); the kernel keeps at most 15 characters of it."""
    name: str
    type: MapType
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0

    def __post_init__(self):
        if self.type == MapType.LPM_TRIE and not self.flags & F_NO_PREALLOC:
            raise ValueError(f"map {self.name!r}: an LPM trie needs flags F_NO_PREALLOC")
        if self.type in (MapType.ARRAY, MapType.PERCPU_ARRAY) and self.key_size != 4:
            raise ValueError(f"map {self.name!r}: array keys are 4 bytes, not {self.key_size}")
        if self.key_size <= 0 or self.value_size <= 0 or self.max_entries <= 0:
            raise ValueError(f"map {self.name!r}: key_size, value_size and max_entries must be > 0")
