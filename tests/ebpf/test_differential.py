"""VM versus kernel: the same bytecode, the same packets, the same maps —
return value, output packet and map contents must be identical.

Random ALU/jump/memory programs come from hypothesis; the packet programs
(parsers, rewrites with checksum helpers, hash/LPM/LRU map users) are
hand-written shapes with hypothesis-chosen parameters.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import differential
import packet_programs as pp
import random_programs as rp

pytestmark = [pytest.mark.kernel, pytest.mark.differential]

# Enough examples for >= 500 distinct programs per run; deterministic in CI
# so a failure reproduces.
RANDOM_EXAMPLES = int(os.environ.get("TAILOR_DIFF_EXAMPLES", "500"))
SHAPE_EXAMPLES = max(RANDOM_EXAMPLES // 12, 10)


def examples(n: int):
    return settings(max_examples=n, deadline=None, derandomize=os.environ.get("CI") == "true",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


PACKETS = pp.packet_set()
SHORT_PACKETS = [PACKETS[0], PACKETS[3], PACKETS[7], PACKETS[-1]]


@examples(RANDOM_EXAMPLES)
@given(rp.programs())
def test_random_programs(program):
    insns, _ops = program
    differential.compare(insns, SHORT_PACKETS, [rp.OUT])


ports = st.lists(st.integers(1, 65535), min_size=1, max_size=6, unique=True)


@examples(SHAPE_EXAMPLES)
@given(ports.map(lambda p: p + [80]), st.sampled_from([6, 17, 132]))
def test_port_filter(port_list, protocol):
    insns, specs = pp.port_filter(port_list, protocol)
    outcomes = differential.compare(insns, PACKETS + PACKETS[:4], specs)
    assert {o.retval for o in outcomes} <= {0, 2}


@examples(SHAPE_EXAMPLES)
@given(st.integers(0, 64), st.sampled_from([0, 1, 2, 0x10]), st.integers(0, 0xFFFFFFFF),
       st.booleans())
def test_rewrite_and_redirect(ifindex, flags, mark, peer):
    insns, specs = pp.rewrite(ifindex, flags, mark, peer)
    differential.compare(insns, PACKETS, specs)


@examples(SHAPE_EXAMPLES)
@given(st.integers(0, 80), st.integers(0, 80), st.sampled_from([1, 2, 4, 8, 16, 32]),
       st.integers(0, 0xFFFFFFFF))
def test_load_store_bytes_and_csum_diff(src_off, dst_off, length, seed):
    insns, specs = pp.copy_bytes(src_off, dst_off, length, seed)
    differential.compare(insns, PACKETS, specs)


prefix = st.tuples(st.sampled_from(["10.0.0.0", "10.0.1.0", "10.0.1.5", "192.168.0.0", "0.0.0.0",
                                    "10.9.0.0"]), st.integers(0, 32))


@examples(SHAPE_EXAMPLES)
@given(st.dictionaries(prefix, st.integers(0, 1000), max_size=8))
def test_lpm_lookup(prefixes):
    # 10.0.1.5/8 and 10.0.0.0/8 are one trie entry: give each prefix one spelling.
    insns, specs, initial = pp.lpm_lookup(_canonical(prefixes))
    differential.compare(insns, PACKETS, specs, initial)


def _canonical(prefixes):
    import ipaddress
    out = {}
    for (addr, plen), value in prefixes.items():
        net = ipaddress.IPv4Network(f"{addr}/{plen}", strict=False)
        out[(str(net.network_address), plen)] = value
    return out


@pytest.mark.parametrize("syn_only", [False, True])
def test_conntrack(syn_only):
    insns, specs = pp.conntrack(syn_only)
    differential.compare(insns, PACKETS + PACKETS, specs)
