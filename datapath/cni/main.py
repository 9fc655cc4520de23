"""`tailor-cni` entry point. Imports only the standard library's json, os and
sys: a CNI plugin runs once per pod event, and pyroute2 or grpc would cost
hundreds of milliseconds per call.

This build answers VERSION; the other commands arrive with the node agent
(ADD/DEL/CHECK/STATUS/GC hand their work to it over a unix socket). Until
then they fail with the CNI error for "not supported here" rather than
pretending to wire a pod."""
from __future__ import annotations

import json
import os
import sys

CNI_VERSION = "1.1.0"
SUPPORTED = ["0.4.0", "1.0.0", "1.1.0"]

# Error codes from the CNI spec.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11


def _error(code: int, msg: str, details: str = "") -> int:
    json.dump({"cniVersion": CNI_VERSION, "code": code, "msg": msg, "details": details}, sys.stdout)
    sys.stdout.write("\n")
    return 1


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        json.dump({"cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    if command in ("ADD", "DEL", "CHECK", "STATUS", "GC"):
        return _error(ERR_TRY_AGAIN, f"CNI {command} needs the tailor node agent, "
                      "which this build does not include yet")
    return _error(ERR_INVALID_ENV, f"CNI_COMMAND={command!r} is not one of "
                  "ADD, DEL, CHECK, STATUS, GC, VERSION")


if __name__ == "__main__":
    sys.exit(main())
