"""The error a subcommand raises for bad input from the user.

Raised by the subcommand modules (and cluster_input); caught once, by
main.main, which prints it as `tailor: error: ...` and exits 2. It lives here,
not in main, so that the subcommands import it at module top while main
imports the subcommands."""
from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: printed as `tailor: error: ...`, exit code 2."""
