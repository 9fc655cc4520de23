"""`tailor bpf`: the toolkit for engineers — assemble LLVM-syntax text into raw
instruction bytes, disassemble them, and run a program as sched_cls on a
packet in the VM or in the kernel (BPF_PROG_TEST_RUN)."""
from __future__ import annotations

import json
import pathlib
import sys
import time

from tailor.cli import usage

# The toolkit (the assembler, the VM, libbpf through ctypes) is imported inside
# the functions that use it, so `tailor --help` and the other subcommands
# never pay for it.


def register(sub) -> None:
    p = sub.add_parser("bpf", help="assemble, disassemble and run eBPF programs")
    bsub = p.add_subparsers(dest="bpf_command", required=True, metavar="ACTION")

    a = bsub.add_parser("asm", help="assemble LLVM-syntax text into raw instruction bytes")
    a.add_argument("file", help="assembly text (.s)")
    a.add_argument("-o", "--output", required=True, help="output file: 8 bytes per instruction slot")
    a.set_defaults(func=_asm)

    d = bsub.add_parser("disasm", help="disassemble raw instruction bytes")
    d.add_argument("file", help="raw instruction bytes (.bin), as llvm-objcopy -O binary extracts them")
    d.add_argument("--labels", action="store_true", help="print jump targets as labels (re-assemblable)")
    d.set_defaults(func=_disasm)

    r = bsub.add_parser("run", help="run a program as sched_cls on one packet")
    r.add_argument("file", help="program: assembly text (.s) or raw bytes (.bin)")
    r.add_argument("--packet-hex", required=True, help="the packet, Ethernet header first, as hex")
    r.add_argument("--engine", choices=("vm", "kernel"), default="vm")
    r.add_argument("--repeat", type=int, default=1, help="runs to average duration_ns over")
    r.add_argument("--map", action="append", default=[], metavar="NAME=TYPE,KEY,VALUE,ENTRIES",
                   help="create a map the program names, e.g. counters=array,4,8,16 "
                        "(types: hash, array, lru_hash, lpm_trie, percpu_hash, percpu_array)")
    r.add_argument("--format", choices=("table", "json"), default="table")
    r.set_defaults(func=_run)


def _read_program(path: str):
    from tailor.datapath.ebpf import asm, isa
    from tailor.datapath.ebpf.errors import AssemblyError

    file = pathlib.Path(path)
    try:
        data = file.read_bytes()
    except OSError as e:
        raise usage.UsageError(f"cannot read program {path}: {e.strerror}") from None
    if file.suffix == ".bin":
        try:
            return isa.decode(data)
        except ValueError as e:
            raise usage.UsageError(f"{path}: {e}") from None
    try:
        return asm.assemble(data.decode())
    except (AssemblyError, UnicodeDecodeError) as e:
        raise usage.UsageError(f"{path}: {e}") from None


def _asm(args) -> int:
    from tailor.datapath.ebpf import isa

    insns = _read_program(args.file)
    unresolved = isa.map_refs(insns)
    if unresolved:
        # Raw bytes have no relocation table: a map name would be silently lost.
        raise usage.UsageError(f"{args.file}: names maps {', '.join(unresolved)}; raw bytes cannot carry "
                     "map references — use `tailor bpf run --map` on the .s file instead")
    pathlib.Path(args.output).write_bytes(isa.encode(insns))
    print(f"{args.output}: {isa.slot_count(insns)} slots", file=sys.stderr)
    return 0


def _disasm(args) -> int:
    from tailor.datapath.ebpf import disasm

    insns = _read_program(args.file)
    for line in disasm.disassemble(insns, labels=args.labels):
        print(line)
    return 0


_MAP_TYPES = ("hash", "array", "lru_hash", "lpm_trie", "percpu_hash", "percpu_array")


def parse_map_option(text: str):
    """NAME=TYPE,KEY,VALUE,ENTRIES -> MapSpec, with errors naming the part."""
    from tailor.datapath.ebpf import maps

    name, sep, rest = text.partition("=")
    parts = rest.split(",")
    if not sep or not name or len(parts) != 4:
        raise usage.UsageError(f"--map {text!r}: expected NAME=TYPE,KEY,VALUE,ENTRIES, "
                               "e.g. counters=array,4,8,16")
    kind, *sizes = parts
    if kind not in _MAP_TYPES:
        raise usage.UsageError(f"--map {text!r}: type {kind!r} is not one of {', '.join(_MAP_TYPES)}")
    try:
        key, value, entries = (int(s) for s in sizes)
    except ValueError:
        raise usage.UsageError(f"--map {text!r}: KEY, VALUE and ENTRIES must be whole numbers") from None
    mtype = maps.MapType[kind.upper()]
    flags = maps.F_NO_PREALLOC if mtype == maps.MapType.LPM_TRIE else 0
    try:
        return maps.MapSpec(name, mtype, key, value, entries, flags)
    except ValueError as e:
        raise usage.UsageError(f"--map {text!r}: {e}") from None


def _run(args) -> int:
    from tailor.datapath.ebpf import isa
    from tailor.datapath.ebpf.errors import BpfError

    insns = _read_program(args.file)
    try:
        packet = bytes.fromhex(args.packet_hex)
    except ValueError:
        raise usage.UsageError("--packet-hex is not an even-length hex string") from None
    if args.repeat < 1:
        raise usage.UsageError("--repeat must be at least 1")
    specs = {s.name: s for s in (parse_map_option(m) for m in args.map)}
    missing = [r for r in isa.map_refs(insns) if r not in specs]
    if missing:
        raise usage.UsageError(f"{args.file} names maps {', '.join(missing)}: declare each with "
                     "--map NAME=TYPE,KEY,VALUE,ENTRIES")
    try:
        if args.engine == "kernel":
            retval, out, duration = _run_kernel(insns, packet, specs, args.repeat)
        else:
            retval, out, duration = _run_vm(insns, packet, specs, args.repeat)
    except BpfError as e:
        print(f"tailor: {args.engine}: {e}", file=sys.stderr)
        return 1
    result = {"retval": retval, "packet_hex": out.hex(), "duration_ns": duration}
    if args.format == "json":
        print(json.dumps(result))
    else:
        print(f"retval       {retval}")
        print(f"duration_ns  {duration}  (mean of {args.repeat}, {args.engine})")
        print(f"packet       {'unchanged' if out == packet else 'changed'} ({len(out)} bytes)")
        print(f"packet_hex   {out.hex()}")
    return 0


def _run_kernel(insns, packet, specs, repeat):
    from tailor.datapath.ebpf import kernel

    maps = {name: kernel.KernelMap.create(spec) for name, spec in specs.items()}
    try:
        with kernel.KernelProgram.load(insns, maps, name="tailor_cli") as prog:
            run = prog.test_run(packet, repeat=repeat)
            return run.retval, run.data, run.duration_ns
    finally:
        for m in maps.values():
            m.close()


def _run_vm(insns, packet, specs, repeat):
    from tailor.datapath.ebpf import vm

    maps = {name: vm.VmMap.create(spec) for name, spec in specs.items()}
    program = vm.Program(insns, maps)          # compiled once; only runs are timed
    start = time.perf_counter_ns()
    for _ in range(repeat):
        result = program.run(packet)
    duration = (time.perf_counter_ns() - start) // repeat
    return result.retval, result.packet, duration
