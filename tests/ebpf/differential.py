"""Runs one program on the same packets in the VM and in the kernel
(BPF_PROG_TEST_RUN) and compares return value, output packet and every map's
contents after each packet. Maps persist across the packets of one program,
so stateful programs are compared on their accumulated state.

Counts what it compared; conftest prints the totals at the end of the run.
"""
from __future__ import annotations

import dataclasses

from tailor.datapath.ebpf import disasm, kernel, vm
from tailor.datapath.ebpf.maps import MapSpec

TOTALS = {"programs": 0, "runs": 0, "mismatches": 0}


@dataclasses.dataclass
class Outcome:
    retval: int
    packet: bytes
    maps: dict[str, dict[bytes, bytes]]


def _listing(insns) -> str:
    return "\n".join(disasm.listing(insns))


def compare(insns, packets, specs: list[MapSpec] = (), initial: dict[str, dict] | None = None,
            *, ctx: dict | None = None) -> list[Outcome]:
    """Run `insns` on each packet in both engines; raise AssertionError with
    the program listing and both outcomes on the first difference."""
    initial = initial or {}
    kmaps = {s.name: kernel.KernelMap.create(s) for s in specs}
    vmaps = {s.name: vm.VmMap.create(s) for s in specs}
    outcomes = []
    try:
        for name, entries in initial.items():
            for k, v in entries.items():
                kmaps[name].update(k, v)
                vmaps[name].update(k, v)
        TOTALS["programs"] += 1
        with kernel.KernelProgram.load(insns, kmaps, name="tailor_diff") as prog:
            for i, pkt in enumerate(packets):
                k_run = prog.test_run(pkt)
                v_run = vm.run(insns, pkt, maps=vmaps)
                kern = Outcome(k_run.retval, k_run.data,
                               {n: dict(m.items()) for n, m in kmaps.items()})
                emu = Outcome(v_run.retval, v_run.packet,
                              {n: dict(m.items()) for n, m in vmaps.items()})
                TOTALS["runs"] += 1
                if kern != emu:
                    TOTALS["mismatches"] += 1
                    raise AssertionError(
                        f"VM and kernel differ on packet {i} ({pkt.hex()}):\n"
                        f"  kernel: {_describe(kern)}\n  vm:     {_describe(emu)}\n"
                        f"program:\n{_listing(insns)}")
                outcomes.append(kern)
    finally:
        for m in kmaps.values():
            m.close()
    return outcomes


def _describe(o: Outcome) -> str:
    maps = {n: {k.hex(): v.hex() for k, v in sorted(m.items())} for n, m in o.maps.items()}
    return f"retval={o.retval} packet={o.packet.hex()} maps={maps}"
