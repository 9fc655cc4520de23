"""The wire protocol between the `tailor` CNI plugin and the node agent.

Both sides import this module: the plugin (a short-lived executable that must
stay cheap to start) and the agent's CNI server and handler
(datapath/agent/cni/). It therefore imports only `time` and `_json`: its
JSON (`loads`, `dumps`, at the end) drives CPython's C accelerator the way
the `json` package does, without that package's start-up cost. Its COMMANDS
table is the one list of the commands either side knows.

One request per connection over a unix stream socket (default
`/run/tailor/cni.sock`, created mode 0600 by the agent). The plugin writes one
JSON object terminated by a newline; the agent answers with one JSON object
terminated by a newline and closes the connection.

Request::

    {"command": "ADD",              # a key of COMMANDS
     "containerID": "...",          # "" for STATUS and GC
     "netns": "/var/run/netns/x",   # "" when the runtime gave none (DEL may)
     "ifname": "eth0",              # "" for STATUS and GC
     "args": {"K8S_POD_NAMESPACE": "...", "K8S_POD_NAME": "...",
              "K8S_POD_UID": "...", ...},   # every CNI_ARGS pair
     "config": {...}}               # the whole network config from stdin,
                                    # prevResult and cni.dev/valid-attachments included

Response::

    {"ok": true, "result": {...}}   # ADD: a CNI 1.1.0 result; others: {}
    {"ok": false, "code": N, "msg": "...", "details": "..."}

The agent always answers in the 1.1.0 result shape; the plugin converts the
result to the config's cniVersion (`result_for_version`), so the agent never
needs to know which spec version a runtime speaks.
"""
from __future__ import annotations

import time

try:
    import _json
except ImportError:   # pragma: no cover - every CPython has it
    _json = None

DEFAULT_SOCKET = "/run/tailor/cni.sock"
DEFAULT_TIMEOUT_SECONDS = 30.0
MAX_MESSAGE_BYTES = 4 << 20   # a netconf with a prevResult is a few KiB

CNI_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")

# Error codes. 1-99 are the CNI spec's well-known codes; 100 and up are
# tailor's own (the spec leaves them to the plugin).
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_NOT_AVAILABLE = 50            # STATUS: cannot service ADD
ERR_NOT_AVAILABLE_LIMITED = 51    # STATUS: ... and existing pods may be cut off
ERR_INTERNAL = 100                # an unexpected failure in the agent
ERR_IPAM_EXHAUSTED = 101          # no free address in a pod CIDR
ERR_WIRING = 102                  # netlink refused the veth, an address or a route
ERR_ATTACH = 103                  # the pod's program was rejected
ERR_CHECK_FAILED = 104            # CHECK: the pod's networking differs from prevResult


# The CNI commands the plugin hands to the agent: the one table both sides
# read. The plugin checks CNI_COMMAND and the environment against it and the
# agent's CniHandler dispatches by it, so a new command is a row here plus its
# handler method (and its config checks in the plugin's _validate_config, if
# it has any). VERSION is not a row: the plugin answers it alone.
#   env          what the plugin requires to be set (CNI spec 1.1.0, section 2);
#                a command needing CNI_NETNS also needs the namespace to exist
#   method       the datapath.agent.cni.handler.CniHandler method that answers it
#   result       the plugin prints the agent's result on success (else nothing)
#   unreachable  the code the plugin answers when the agent cannot be reached
class Command:
    __slots__ = ("env", "method", "result", "unreachable")

    def __init__(self, env: tuple[str, ...], method: str, result: bool, unreachable: int):
        self.env, self.method, self.result, self.unreachable = env, method, result, unreachable


COMMANDS = {
    "ADD": Command(("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"), "add", True, ERR_TRY_AGAIN),
    # The namespace may already be gone; DEL must clean up without it.
    "DEL": Command(("CNI_CONTAINERID", "CNI_IFNAME"), "delete", False, ERR_TRY_AGAIN),
    "CHECK": Command(("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"), "check", False, ERR_TRY_AGAIN),
    # STATUS asks "can you take an ADD?": an agent that isn't there cannot.
    # It and GC concern the whole network, not one attachment.
    "STATUS": Command((), "status", False, ERR_NOT_AVAILABLE),
    "GC": Command(("CNI_PATH",), "gc", False, ERR_TRY_AGAIN),
}


class ProtocolError(Exception):
    """The peer sent something that is not one newline-terminated JSON object."""


def encode(message: dict) -> bytes:
    return dumps(message, compact=True).encode() + b"\n"


def decode(line: bytes) -> dict:
    try:
        message = loads(line)
    except ValueError as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    return message


def read_message(sock, deadline: float | None = None) -> dict:
    """Read one newline-terminated JSON object from a connected stream
    socket. With `deadline` (a `time.monotonic()` value) no recv waits past
    it; `TimeoutError` escapes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed")
            sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise ProtocolError("connection closed before a complete message")
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk:
            break
        if size > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
    data = b"".join(chunks)
    return decode(data[:data.index(b"\n")])


def request(command: str, container_id: str, netns: str, ifname: str,
            args: dict, config: dict) -> dict:
    return {"command": command, "containerID": container_id, "netns": netns,
            "ifname": ifname, "args": args, "config": config}


def ok(result: dict | None = None) -> dict:
    return {"ok": True, "result": result or {}}


def error(code: int, msg: str, details: str = "") -> dict:
    return {"ok": False, "code": int(code), "msg": msg, "details": details}


def result_for_version(result: dict, version: str) -> dict:
    """Convert a 1.1.0 result to the shape `version` defines.

    1.1.0 added `mtu`, `socketPath`, `pciID` to interfaces and `mtu`,
    `advmss`, `priority`, `table`, `scope` to routes; 1.0.0 removed the
    `version` ("4"/"6") field that 0.4.0's ip entries carry."""
    out = dict(result, cniVersion=version)
    if version == CNI_VERSION:
        return out
    out["interfaces"] = [{k: v for k, v in i.items() if k in ("name", "mac", "sandbox")}
                         for i in result.get("interfaces", [])]
    out["routes"] = [{k: v for k, v in r.items() if k in ("dst", "gw")}
                     for r in result.get("routes", [])]
    ips = [dict(ip) for ip in result.get("ips", [])]
    if version == "0.4.0":
        for ip in ips:
            ip["version"] = "6" if ":" in ip["address"] else "4"
    out["ips"] = ips
    return out


# -- JSON without the json package --------------------------------------------
#
# The plugin runs once per pod event, and `import json` costs 7 ms of its 16 ms
# start (json loads `re`, which loads `enum`, and compiles its patterns at
# import) while the work is done by CPython's `_json` either way. loads and
# dumps drive `_json` as json.loads and json.dumps do for plain input
# (json/decoder.py JSONDecoder.decode; json/encoder.py JSONEncoder.iterencode
# with the C encoder): the same values and the same text; bad input is handed
# to json.loads, which raises its JSONDecodeError (a ValueError). Bytes are
# read as UTF-8 (a leading BOM allowed), as CNI's netconf is; json.loads would
# also guess UTF-16 and UTF-32. Without `_json` (not CPython) they are the json
# package's own.

_WHITESPACE = " \t\n\r"   # json.decoder.WHITESPACE
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _DecoderDefaults:
    """What `_json.make_scanner` reads from a JSONDecoder, at json.loads' defaults."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


def _not_serializable(o):
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


if _json is not None:
    _scan = _json.make_scanner(_DecoderDefaults())

    def loads(data: bytes | str):
        """json.loads, for UTF-8 bytes or str."""
        if isinstance(data, (bytes, bytearray)):
            # Not the "utf-8-sig" codec: it is one more module to import.
            text = (data[3:] if data[:3] == b"\xef\xbb\xbf" else data).decode("utf-8")
        else:
            text = data
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            value, end = _scan(text, start)
        except (StopIteration, SystemError):
            # Bad input. The scanner raises json.decoder's JSONDecodeError,
            # which it finds only once json is imported (SystemError before):
            # json itself says what is wrong.
            return _json_loads(text)
        if text[end:].lstrip(_WHITESPACE):
            return _json_loads(text)   # "Extra data"
        return value

    def dumps(value, compact: bool = False) -> str:
        """json.dumps(value), or with separators=(",", ":") when `compact`."""
        if isinstance(value, str):
            return _json.encode_basestring_ascii(value)
        encode = _json.make_encoder({}, _not_serializable, _json.encode_basestring_ascii, None,
                                    ":" if compact else ": ", "," if compact else ", ",
                                    False, False, True)
        return "".join(encode(value, 0))

    def _json_loads(text: str):
        import json   # the error path alone pays json's import
        return json.loads(text)
else:   # pragma: no cover
    import json as _json_package

    def loads(data: bytes | str):
        return _json_package.loads(data)

    def dumps(value, compact: bool = False) -> str:
        return _json_package.dumps(value, separators=(",", ":") if compact else None)
