"""`tailor` entry point: builds the argument parser from the subcommand
modules and dispatches. Each subcommand module exposes `register(subparsers)`
and sets `func` on its parser; heavy imports happen inside `func`, so
`tailor --help` stays fast. A subcommand reports bad input by raising
usage.UsageError."""
from __future__ import annotations

import argparse
import sys

from tailor.cli import agent, bpf, connectivity, lab, programs, usage
from tailor.cli import operator as operator_

SUBCOMMANDS = (connectivity, programs, bpf, lab, agent, operator_)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailor",
        description="tailor: a CNI and network-policy datapath that compiles one eBPF program per pod")
    parser.add_argument("--version", action="version", version=f"tailor {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("tailor")
    except metadata.PackageNotFoundError:   # run from a checkout never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except usage.UsageError as e:
        print(f"tailor: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
