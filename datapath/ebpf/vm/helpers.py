"""Kernel helper functions, by id, as the VM runs them.

Called by control_flow.py on CALL (src 0). Each helper gets the run state `st`
(state.Run: memory, packet, ctx, maps, clocks, redirect target) and the
argument registers r1..r5 as ints, and returns r0 (negative errnos as
negative ints; the call wraps them to u64). Semantics follow net/core/filter.c
and kernel/bpf/helpers.c as observed on 6.18 with BPF_PROG_TEST_RUN, where
the skb is linear and ip_summed is CHECKSUM_NONE (so the csum helpers only
ever touch the checksum field in the packet, never skb->csum).

Helpers that may change packet data (store_bytes, the csum replacers,
pull_data) invalidate every packet pointer, as the verifier does: the
VM moves the packet to a new region, so a stale pointer faults.
"""
from __future__ import annotations

import errno

from ..helper_ids import Helper, TcAct
from .memory import Fault, M32

BPF_F_RECOMPUTE_CSUM = 1 << 0
BPF_F_INVALIDATE_HASH = 1 << 1
BPF_F_HDR_FIELD_MASK = 0xF
BPF_F_PSEUDO_HDR = 1 << 4
BPF_F_MARK_MANGLED_0 = 1 << 5
BPF_F_MARK_ENFORCE = 1 << 6
BPF_F_IPV6 = 1 << 7          # l4_csum_replace, 6.16+
BPF_F_INGRESS = 1 << 0
CSUM_MANGLED_0 = 0xFFFF
INT_MAX = 0x7FFFFFFF


# --- ones'-complement arithmetic, kernel style ----------------------------------
# All values are in host (little-endian) interpretation of the bytes, exactly
# as the kernel computes on x86: the checksum field and the from/to words are
# read as native integers. Ones'-complement sums commute with byte swapping,
# so this gives the right big-endian checksum.

def csum_add(a: int, b: int) -> int:
    s = (a + b) & M32
    return (s + (s < b)) & M32


def csum_sub(a: int, b: int) -> int:
    return csum_add(a, ~b & M32)


def csum_fold(s: int) -> int:
    """32-bit partial sum -> complemented 16-bit checksum."""
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def csum_from32to16(s: int) -> int:
    s = (s + (((s >> 16) | (s << 16)) & M32)) & M32
    return s >> 16


def csum_partial(data: bytes, seed: int) -> int:
    """Sum of the little-endian 16-bit words of data (length a multiple of
    4 here) added to seed with end-around carry; 32-bit result."""
    total = seed
    for i in range(0, len(data), 4):
        total = csum_add(total, int.from_bytes(data[i:i + 4], "little"))
    return total


def csum_replace4(field: int, old: int, new: int) -> int:
    tmp = csum_sub(~field & M32, old)
    return csum_fold(csum_add(tmp, new))


def csum_replace_by_diff(field: int, diff: int) -> int:
    return csum_fold(csum_add(diff, ~field & M32))


def csum16_add(c: int, addend: int) -> int:
    res = (c + addend) & 0xFFFF
    return (res + (res < addend)) & 0xFFFF


def csum_replace2(field: int, old: int, new: int) -> int:
    return ~csum16_add(csum16_add(~field & 0xFFFF, ~old & 0xFFFF), new) & 0xFFFF


# --- helpers ---------------------------------------------------------------------

def _map_lookup_elem(st, r1, r2, r3, r4, r5):
    m = st.mem.map_at(r1)
    value = m.prog_lookup(st.mem.read(r2, m.key_size))
    return 0 if value is None else st.mem.value_ptr(value)


def _map_update_elem(st, r1, r2, r3, r4, r5):
    m = st.mem.map_at(r1)
    return m.prog_update(st.mem.read(r2, m.key_size), st.mem.read(r3, m.value_size), r4)


def _map_delete_elem(st, r1, r2, r3, r4, r5):
    m = st.mem.map_at(r1)
    return m.prog_delete(st.mem.read(r2, m.key_size))


def _map_lookup_percpu_elem(st, r1, r2, r3, r4, r5):
    m = st.mem.map_at(r1)
    if not m.percpu:
        raise Fault(f"map_lookup_percpu_elem on non-per-CPU map {m.name!r}")
    value = m.prog_lookup(st.mem.read(r2, m.key_size), cpu=r3 & M32)
    return 0 if value is None else st.mem.value_ptr(value)


def _ktime_get_ns(st, *_):
    return st.ktime()


def _get_prandom_u32(st, *_):
    return st.rng.getrandbits(32)


def _get_smp_processor_id(st, *_):
    return 0


def _skb_store_bytes(st, r1, r2, r3, r4, r5):
    offset, n, flags = r2 & M32, r4 & M32, r5
    if flags & ~(BPF_F_RECOMPUTE_CSUM | BPF_F_INVALIDATE_HASH):
        return -errno.EINVAL
    if offset > INT_MAX:
        return -errno.EFAULT
    data = st.mem.read(r3, n)
    if offset + n > len(st.pkt):
        return -errno.EFAULT
    # RECOMPUTE_CSUM only adjusts skb->csum under CHECKSUM_COMPLETE: no
    # visible effect in test_run, where ip_summed is CHECKSUM_NONE.
    st.pkt[offset:offset + n] = data
    if flags & BPF_F_INVALIDATE_HASH:
        st.set_hash(0)
    return 0


def _skb_load_bytes(st, r1, r2, r3, r4, r5):
    offset, n = r2 & M32, r4 & M32
    if offset <= INT_MAX and offset + n <= len(st.pkt):
        st.mem.write(r3, bytes(st.pkt[offset:offset + n]))
        return 0
    st.mem.write(r3, bytes(n))   # the kernel zeroes the buffer on failure
    return -errno.EFAULT


def _csum_field_ptr(st, offset: int) -> int | None:
    if offset > 0xFFFF or offset & 1 or offset + 2 > len(st.pkt):
        return None
    return offset


def _replace(field: int, old: int, new: int, width: int, replace2) -> int | None:
    """The checksum field after replacing `old` by `new` (width 2 or 4 bytes),
    or after adding a csum_diff result (width 0); None for a width the
    helpers refuse."""
    if width == 0:
        return None if old else csum_replace_by_diff(field, new & M32)
    if width == 2:
        return replace2(field, old & 0xFFFF, new & 0xFFFF)
    if width == 4:
        return csum_replace4(field, old & M32, new & M32)
    return None


def _l3_csum_replace(st, r1, r2, r3, r4, r5):
    offset, old, new, flags = r2 & M32, r3, r4, r5
    if flags & ~BPF_F_HDR_FIELD_MASK:
        return -errno.EINVAL
    at = _csum_field_ptr(st, offset)
    if at is None:
        return -errno.EFAULT
    field = st.pkt[at] | st.pkt[at + 1] << 8
    field = _replace(field, old, new, flags & BPF_F_HDR_FIELD_MASK, csum_replace2)
    if field is None:
        return -errno.EINVAL
    st.pkt[at:at + 2] = field.to_bytes(2, "little")
    return 0


def _l4_csum_replace(st, r1, r2, r3, r4, r5):
    offset, old, new, flags = r2 & M32, r3, r4, r5
    if flags & ~(BPF_F_MARK_MANGLED_0 | BPF_F_MARK_ENFORCE | BPF_F_PSEUDO_HDR
                 | BPF_F_HDR_FIELD_MASK | BPF_F_IPV6):
        return -errno.EINVAL
    at = _csum_field_ptr(st, offset)
    if at is None:
        return -errno.EFAULT
    field = st.pkt[at] | st.pkt[at + 1] << 8
    mangled0 = flags & BPF_F_MARK_MANGLED_0
    if mangled0 and not flags & BPF_F_MARK_ENFORCE and field == 0:
        return 0   # UDP "no checksum": leave it alone
    # With CHECKSUM_NONE, inet_proto_csum_replace* is a plain replace whether
    # or not BPF_F_PSEUDO_HDR is set (the flag only matters for skb->csum).
    # inet_proto_csum_replace2 is replace4 on the zero-extended words.
    field = _replace(field, old, new, flags & BPF_F_HDR_FIELD_MASK, csum_replace4)
    if field is None:
        return -errno.EINVAL
    if mangled0 and field == 0:
        field = CSUM_MANGLED_0
    st.pkt[at:at + 2] = field.to_bytes(2, "little")
    return 0


def _csum_diff(st, r1, r2, r3, r4, r5):
    from_size, to_size, seed = r2 & M32, r4 & M32, r5 & M32
    if (from_size | to_size) & 3 or from_size + to_size > 512:
        return -errno.EINVAL
    old = st.mem.read(r1, from_size)
    new = st.mem.read(r3, to_size)
    # 6.12+ (bpf_csum_diff "homogenized for all archs"): a 16-bit result
    if from_size and to_size:
        return csum_from32to16(csum_sub(csum_partial(new, seed), csum_partial(old, 0)))
    if to_size:
        return csum_from32to16(csum_partial(new, seed))
    if from_size:
        return csum_from32to16(~csum_partial(old, ~seed & M32) & M32)
    return csum_from32to16(seed)      # observed: even the empty diff is folded


def _redirect(st, r1, r2, r3, r4, r5):
    if r2 & ~BPF_F_INGRESS:
        return TcAct.SHOT
    st.redirect = (r1 & M32, r2, False)
    return TcAct.REDIRECT


def _redirect_peer(st, r1, r2, r3, r4, r5):
    if r2:
        return TcAct.SHOT
    st.redirect = (r1 & M32, 0, True)
    return TcAct.REDIRECT


def _skb_pull_data(st, r1, r2, r3, r4, r5):
    # the test_run skb is linear: pulling succeeds up to its length
    return 0 if (r2 & M32) <= len(st.pkt) else -errno.ENOMEM


def _unimplemented(name):
    def fail(st, *_):
        raise Fault(f"helper {name} is not modelled by the VM")
    return fail


# id -> (name, number of arguments read, function, changes packet data)
HELPERS = {
    Helper.map_lookup_elem: ("map_lookup_elem", 2, _map_lookup_elem, False),
    Helper.map_update_elem: ("map_update_elem", 4, _map_update_elem, False),
    Helper.map_delete_elem: ("map_delete_elem", 2, _map_delete_elem, False),
    Helper.ktime_get_ns: ("ktime_get_ns", 0, _ktime_get_ns, False),
    Helper.get_prandom_u32: ("get_prandom_u32", 0, _get_prandom_u32, False),
    Helper.get_smp_processor_id: ("get_smp_processor_id", 0, _get_smp_processor_id, False),
    Helper.skb_store_bytes: ("skb_store_bytes", 5, _skb_store_bytes, True),
    Helper.l3_csum_replace: ("l3_csum_replace", 5, _l3_csum_replace, True),
    Helper.l4_csum_replace: ("l4_csum_replace", 5, _l4_csum_replace, True),
    Helper.tail_call: ("tail_call", 3, _unimplemented("tail_call"), False),
    Helper.redirect: ("redirect", 2, _redirect, False),
    Helper.skb_load_bytes: ("skb_load_bytes", 4, _skb_load_bytes, False),
    Helper.csum_diff: ("csum_diff", 5, _csum_diff, False),
    39: ("skb_pull_data", 2, _skb_pull_data, True),
    Helper.ktime_get_boot_ns: ("ktime_get_boot_ns", 0, _ktime_get_ns, False),
    Helper.redirect_peer: ("redirect_peer", 2, _redirect_peer, False),
    195: ("map_lookup_percpu_elem", 3, _map_lookup_percpu_elem, False),
}
