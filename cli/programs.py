"""`tailor programs`: per pod, the features compiled in, instruction count,
hash and maps — and, with --disasm, the annotated bytecode."""
from __future__ import annotations

import json

from tailor.cli import cluster_input, usage

# The compiler and the disassembler are imported inside the functions that
# use them, so `tailor --help` and the other subcommands never pay for them.


def register(sub) -> None:
    p = sub.add_parser("programs", help="show the program compiled for each pod")
    cluster_input.add_files_option(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--disasm", metavar="POD", help="print the annotated disassembly of one pod "
                                                  "(ns/name or ns/name[Kind])")
    p.add_argument("--generic", action="store_true",
                   help="also show the generic program (every feature, all policy in maps)")
    p.set_defaults(func=_run)


def describe(built) -> dict:
    from tailor.datapath import layout

    programs = built.programs
    maps = {}
    for direction in ("ingress", "egress"):
        for spec in programs.program(direction).maps:
            shared = spec.name in layout.NODE_MAPS
            name = spec.name if shared else f"{direction}/{spec.name}"
            maps[name] = {"type": spec.type.name.lower(), "key_size": spec.key_size,
                          "value_size": spec.value_size, "max_entries": spec.max_entries,
                          "shared": shared}
    return {
        "pod": programs.pod,
        "features": list(programs.features),
        "instructions": programs.instructions,
        "hash": programs.hash,
        "groups": sorted(built.spec.group_ids()),
        "programs": {d: {"instructions": programs.program(d).instructions,
                         "jumps": programs.program(d).jumps} for d in ("ingress", "egress")},
        "maps": maps,
    }


def _run(args) -> int:
    from tailor.datapath.ebpf import disasm
    from tailor.operator.compiler import build, generic

    state = cluster_input.load_state(args.filename)
    built = build.build(state, progress=cluster_input.Progress("compiling pods"))
    if args.disasm:
        want = args.disasm if "[" in args.disasm else f"{args.disasm}[Pod]"
        match = built.get(want) or next((b for ref, b in built.items()
                                         if ref.split("[")[0] == args.disasm), None)
        if match is None:
            raise usage.UsageError(f"--disasm {args.disasm}: no such pod; pods are "
                             + ", ".join(sorted(built)))
        for direction in ("egress", "ingress"):
            program = match.programs.program(direction)
            print(f"# {match.programs.pod} {direction}: {program.instructions} instructions, "
                  f"features {', '.join(sorted(program.features))}")
            for line in disasm.listing(program.insns):
                print(line)
            print()
        return 0
    rows = [describe(b) for b in built.values()]
    generic_size = None
    if args.generic:
        generic_size = {d: generic.compile_generic(d).instructions for d in ("ingress", "egress")}
    if args.format == "json":
        out = {"programs": rows}
        if generic_size:
            out["generic"] = {"instructions": sum(generic_size.values()), "programs": generic_size}
        print(json.dumps(out, indent=2))
        return 0
    width = max([len(r["pod"]) for r in rows] + [3])
    print(f"{'POD':<{width}}  {'INSNS':>6}  {'HASH':<16}  FEATURES")
    for r in rows:
        print(f"{r['pod']:<{width}}  {r['instructions']:>6}  {r['hash']:<16}  {','.join(r['features'])}")
    if generic_size:
        print(f"{'(generic)':<{width}}  {sum(generic_size.values()):>6}  {'':<16}  every feature, policy in maps")
    return 0
