"""The VM's address space: regions (stack frames, the context, the packet,
map values, map handles) and the pointers into them.

Used by the instruction closures (load_store.py) for every load and store,
by state.py and control_flow.py for stack frames, and by the helpers
(helpers.py) to read keys and write bytes.

Pointer model. A register holds a plain unsigned 64-bit int. A pointer is
`region_id << 32 | offset`: the high half picks a region, the low half is the
byte offset inside it. Registers stay plain ints, so ALU on pointers (the
verifier allows add/sub of scalars) costs nothing extra, and a pointer that
wanders out of its region (offset >= size, or a borrow into the neighbouring
id) is caught at the access. Null and scalars (< 2**32) belong to no region.

The VM is not a verifier: it checks each access as it happens, on the path
the program actually takes, and raises Fault for what the kernel would have
rejected at load time or killed at run time. machine.py turns a Fault into a
VmError carrying the pc.
"""
from __future__ import annotations

import struct

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF

STACK, CTX, PACKET, MAP_VALUE, MAP_HANDLE = range(5)
KIND_NAMES = {STACK: "stack", CTX: "ctx", PACKET: "packet", MAP_VALUE: "map_value",
              MAP_HANDLE: "map_ptr"}

# little-endian unsigned loads/stores by size; one Struct each, built once
UNPACK = {1: struct.Struct("<B").unpack_from, 2: struct.Struct("<H").unpack_from,
          4: struct.Struct("<I").unpack_from, 8: struct.Struct("<Q").unpack_from}
PACK = {1: struct.Struct("<B").pack_into, 2: struct.Struct("<H").pack_into,
        4: struct.Struct("<I").pack_into, 8: struct.Struct("<Q").pack_into}
MASK = {1: 0xFF, 2: 0xFFFF, 4: M32, 8: M64}
_ONES = {n: b"\x01" * n for n in (1, 2, 4, 8)}


class Fault(Exception):
    """An access the kernel would not allow. Carries no pc: the interpreter
    adds it."""


class Region:
    """One contiguous object. `init` (stack only) has a byte per stack byte,
    1 once written, so reads of never-written stack fault like the
    verifier's "invalid read from stack"."""
    __slots__ = ("rid", "kind", "buf", "size", "init", "obj")

    def __init__(self, rid: int, kind: int, buf, init=None, obj=None):
        self.rid = rid
        self.kind = kind
        self.buf = buf
        self.size = len(buf)
        self.init = init
        self.obj = obj          # ctx: the skb access table owner; map handle: the map

    @property
    def base(self) -> int:
        return self.rid << 32


class Memory:
    """All regions of one run. Reset between runs by machine.py; region ids
    grow monotonically within a run so a region that was replaced (packet
    after a data-changing helper, map value after a hash update) never
    aliases its successor."""

    def __init__(self):
        self.regions: dict[int, Region] = {}
        self._next = 1
        self._by_buf: dict[int, Region] = {}   # id(bytearray) -> map value region

    def reset(self) -> None:
        self.regions.clear()
        self._by_buf.clear()
        self._next = 1

    def add(self, kind: int, buf, init=None, obj=None) -> Region:
        region = Region(self._next, kind, buf, init, obj)
        self.regions[self._next] = region
        self._next += 1
        return region

    def drop(self, region: Region) -> None:
        self.regions.pop(region.rid, None)

    # --- pointers handed out by helpers and LD_IMM64 ---------------------------

    def value_ptr(self, buf: bytearray) -> int:
        """Pointer to a live map value. The same bytearray gets the same
        region for the whole run, so two lookups of one key compare equal."""
        region = self._by_buf.get(id(buf))
        if region is None or region.buf is not buf:
            region = self.add(MAP_VALUE, buf)
            self._by_buf[id(buf)] = region
        return region.rid << 32

    def map_at(self, addr: int):
        """The map object behind a map handle (helper argument r1)."""
        region = self.regions.get(addr >> 32)
        if region is None or region.kind != MAP_HANDLE or addr & M32:
            raise Fault(f"expected a map pointer, got {describe(self, addr)}")
        return region.obj

    # --- checked access ----------------------------------------------------------

    def region_for(self, addr: int, size: int, write: bool) -> tuple[Region, int]:
        region = self.regions.get(addr >> 32)
        off = addr & M32
        if region is None:
            what = "write to" if write else "read from"
            raise Fault(f"invalid {what} {describe(self, addr)} (size {size})")
        if off + size > region.size:
            raise Fault(f"invalid access to {KIND_NAMES[region.kind]}: off={off} size={size}, "
                        f"region is {region.size} bytes")
        return region, off

    def load(self, addr: int, size: int) -> int:
        region, off = self.region_for(addr, size, False)
        kind = region.kind
        if kind == STACK:
            if region.init.find(0, off, off + size) != -1:
                raise Fault(f"invalid read from stack off={off - region.size} size={size} "
                            f"(never written)")
        elif kind == CTX:
            return region.obj.ctx_load(off, size)
        elif kind == MAP_HANDLE:
            raise Fault("cannot read through a map pointer")
        return UNPACK[size](region.buf, off)[0]

    def store(self, addr: int, size: int, value: int) -> None:
        region, off = self.region_for(addr, size, True)
        kind = region.kind
        if kind == STACK:
            region.init[off:off + size] = _ONES[size]
        elif kind == CTX:
            region.obj.ctx_store(off, size, value)
            return
        elif kind == MAP_HANDLE:
            raise Fault("cannot write through a map pointer")
        PACK[size](region.buf, off, value & MASK[size])

    def read(self, addr: int, n: int) -> bytes:
        """n bytes for a helper argument (key, value, csum buffer)."""
        if n == 0:
            return b""
        region, off = self.region_for(addr, n, False)
        if region.kind == STACK and region.init.find(0, off, off + n) != -1:
            raise Fault(f"invalid indirect read from stack off={off - region.size} size={n} "
                        f"(never written)")
        if region.kind in (CTX, MAP_HANDLE):
            raise Fault(f"helper cannot read memory from {KIND_NAMES[region.kind]}")
        return bytes(region.buf[off:off + n])

    def write(self, addr: int, data: bytes) -> None:
        """Helper output into program memory (skb_load_bytes)."""
        n = len(data)
        region, off = self.region_for(addr, n, True)
        if region.kind in (CTX, MAP_HANDLE):
            raise Fault(f"helper cannot write memory in {KIND_NAMES[region.kind]}")
        if region.kind == STACK:
            region.init[off:off + n] = b"\x01" * n
        region.buf[off:off + n] = data


def describe(memory: Memory, addr: int) -> str:
    if addr == 0:
        return "null pointer"
    if addr >> 32 == 0:
        return f"scalar {addr:#x} (not a pointer)"
    if (addr >> 32) not in memory.regions:
        return f"{addr:#x} (no live object there: out of bounds or invalidated by a helper)"
    region = memory.regions[addr >> 32]
    return f"{KIND_NAMES[region.kind]}+{addr & M32}"
