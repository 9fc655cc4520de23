"""`tailor-cni`, installed in the CNI bin dir as `tailor` (netconf `"type": "tailor"`).

The container runtime runs this once per pod event. It implements CNI spec
1.1.0 (and answers 0.4.0 and 1.0.0 configs in their own result shapes): it
validates the environment and the network config, answers VERSION itself, and
hands every other command (a row of protocol.COMMANDS) to the node agent over
its unix socket. The agent does the netlink, IPAM and program work.

Kept thin on purpose: it imports only os, sys, time and `_socket` from the
standard library, and its JSON comes from protocol.py. pyroute2 costs ~350 ms
to import and grpc ~160 ms; a plugin paying that per pod would dominate pod
start-up, and even `json` and `socket` (with the `re`, `enum` and
`selectors` they load) are half of a plain start. install.py installs it to
run as `python3 -IS`, without `site`.

Config keys read here besides the spec's: `agentSocket` (default
/run/tailor/cni.sock) and `timeoutSeconds` (default 30): how long to wait for
the agent, which answers code 11 (try again later) before that runs out.
"""
from __future__ import annotations

import os
import sys
import time

import _socket   # socket.py's own imports (enum, selectors) would double the cost

from tailor.datapath.cni import protocol

# The one command answered here, before stdin is read; every other is a row
# of protocol.COMMANDS.
VERSION = "VERSION"
# The only IPAM tailor speaks is its own, inside the agent; it never delegates.
OWN_IPAM_TYPES = ("", "tailor")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    if command == VERSION:
        _print({"cniVersion": protocol.CNI_VERSION,
                "supportedVersions": list(protocol.SUPPORTED_VERSIONS)})
        return 0
    version = protocol.CNI_VERSION
    try:
        if command not in protocol.COMMANDS:
            raise CniError(protocol.ERR_INVALID_ENV, "invalid CNI_COMMAND",
                           f"CNI_COMMAND={command!r} is not one of {', '.join([*protocol.COMMANDS, VERSION])}")
        config = _read_config(sys.stdin.buffer.read())
        version = config["cniVersion"] if isinstance(config.get("cniVersion"), str) else version
        _validate_config(command, config)
        env = _validate_env(command)
        response = _call_agent(command, env, config)
    except CniError as e:
        return _fail(version, e.code, e.msg, e.details)
    if not response.get("ok"):
        return _fail(version, response.get("code", protocol.ERR_INTERNAL),
                     str(response.get("msg", "agent error")), str(response.get("details", "")))
    if protocol.COMMANDS[command].result:
        _print(protocol.result_for_version(response.get("result") or {}, version))
    return 0   # the others print nothing on success


# -- input ------------------------------------------------------------------

def _read_config(data: bytes) -> dict:
    try:
        config = protocol.loads(data)
    except ValueError as e:
        raise CniError(protocol.ERR_DECODE, "failed to decode the network config on stdin",
                       str(e)) from None
    if not isinstance(config, dict):
        raise CniError(protocol.ERR_DECODE, "the network config on stdin is not a JSON object")
    return config


def _validate_config(command: str, config: dict) -> None:
    version = config.get("cniVersion")
    # A config without a version is not one this plugin can read.
    if not isinstance(version, str) or not version:
        raise CniError(protocol.ERR_INVALID_CONFIG, "network config has no cniVersion")
    # A version the plugin doesn't implement is the spec's code 1.
    if version not in protocol.SUPPORTED_VERSIONS:
        raise CniError(protocol.ERR_INCOMPATIBLE_VERSION, "incompatible CNI version",
                       f"config cniVersion {version}; supported: {', '.join(protocol.SUPPORTED_VERSIONS)}")
    for key in ("name", "type"):
        if not isinstance(config.get(key), str) or not config[key]:
            raise CniError(protocol.ERR_INVALID_CONFIG, f"network config needs a string {key!r}")
    if not _valid_identifier(config["name"]):
        raise CniError(protocol.ERR_INVALID_CONFIG, "invalid network name",
                       "name must start with a letter or digit, then letters, digits, _ . -")
    sock = config.get("agentSocket", protocol.DEFAULT_SOCKET)
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise CniError(protocol.ERR_INVALID_CONFIG, "agentSocket must be an absolute path")
    timeout = config.get("timeoutSeconds", protocol.DEFAULT_TIMEOUT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise CniError(protocol.ERR_INVALID_CONFIG, "timeoutSeconds must be a positive number")
    ipam = config.get("ipam", {})
    if not isinstance(ipam, dict):
        raise CniError(protocol.ERR_INVALID_CONFIG, "ipam must be an object")
    # tailor allocates in the agent; a delegated IPAM plugin is not supported.
    if ipam.get("type", "") not in OWN_IPAM_TYPES:
        raise CniError(protocol.ERR_UNSUPPORTED_FIELD, "unsupported field ipam.type",
                       f"ipam.type {ipam.get('type')!r}: tailor allocates addresses itself; "
                       "leave ipam.type out or set it to \"tailor\"")
    ranges = ipam.get("ranges", [])
    if not isinstance(ranges, list) or not all(
            isinstance(rs, list) and rs and all(isinstance(r, dict) and isinstance(r.get("subnet"), str)
                                                for r in rs) for rs in ranges):
        raise CniError(protocol.ERR_INVALID_CONFIG, "ipam.ranges must be a list of lists of {\"subnet\": CIDR}")
    # tailor creates the pod's interface, so it is the first plugin of a chain.
    if command == "ADD" and "prevResult" in config:
        raise CniError(protocol.ERR_UNSUPPORTED_FIELD, "unsupported field prevResult in ADD",
                       "tailor creates the pod interface and must be the first plugin in the list")
    if command == "CHECK" and not isinstance(config.get("prevResult"), dict):
        raise CniError(protocol.ERR_INVALID_CONFIG, "CHECK needs prevResult in the network config")
    if command == "GC":
        # Required: without it "nothing is valid" would tear down every pod.
        valid = config.get("cni.dev/valid-attachments")
        if not isinstance(valid, list) or not all(
                isinstance(a, dict) and isinstance(a.get("containerID"), str)
                and isinstance(a.get("ifname"), str) for a in valid):
            raise CniError(protocol.ERR_INVALID_CONFIG, "cni.dev/valid-attachments must be a list of "
                           "{\"containerID\": ..., \"ifname\": ...}")


def _validate_env(command: str) -> dict:
    env = {k: os.environ.get(k, "") for k in
           ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")}
    required = protocol.COMMANDS[command].env
    missing = [k for k in required if not env[k]]
    if missing:
        raise CniError(protocol.ERR_INVALID_ENV, "missing environment variables",
                       f"{command} needs {', '.join(missing)}")
    if env["CNI_CONTAINERID"] and not _valid_identifier(env["CNI_CONTAINERID"]):
        raise CniError(protocol.ERR_INVALID_ENV, "invalid CNI_CONTAINERID",
                       "must start with a letter or digit, then letters, digits, _ . -")
    if env["CNI_IFNAME"] and not _valid_ifname(env["CNI_IFNAME"]):
        raise CniError(protocol.ERR_INVALID_ENV, "invalid CNI_IFNAME",
                       "an interface name is 1-15 characters, not . or .., without / : or whitespace")
    # A command that requires the namespace works inside it; DEL, which must
    # clean up after the namespace is gone, does not require one.
    if "CNI_NETNS" in required and not os.path.exists(env["CNI_NETNS"]):
        raise CniError(protocol.ERR_INVALID_ENV, "invalid CNI_NETNS",
                       f"network namespace {env['CNI_NETNS']} does not exist")
    env["args"] = _parse_cni_args(env["CNI_ARGS"])
    return env


def _parse_cni_args(text: str) -> dict:
    """CNI_ARGS: `K=V` pairs separated by semicolons."""
    args = {}
    for pair in filter(None, text.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(protocol.ERR_INVALID_ENV, "invalid CNI_ARGS",
                           f"{pair!r} is not KEY=VALUE")
        args[key] = value
    return args


def _valid_identifier(text: str) -> bool:
    return text[:1].isascii() and text[:1].isalnum() and all(
        c.isascii() and (c.isalnum() or c in "_.-") for c in text)


def _valid_ifname(name: str) -> bool:
    return (0 < len(name) < 16 and name not in (".", "..")
            and not any(c in "/:" or c.isspace() for c in name))


# -- the agent ----------------------------------------------------------------

def _call_agent(command: str, env: dict, config: dict) -> dict:
    path = config.get("agentSocket", protocol.DEFAULT_SOCKET)
    timeout = float(config.get("timeoutSeconds", protocol.DEFAULT_TIMEOUT_SECONDS))
    deadline = time.monotonic() + timeout
    message = protocol.request(command, env["CNI_CONTAINERID"], env["CNI_NETNS"],
                               env["CNI_IFNAME"], env["args"], config)
    unreachable = protocol.COMMANDS[command].unreachable
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as e:
            raise CniError(unreachable, "tailor agent unreachable", f"{path}: {e}") from None
        try:
            sock.sendall(protocol.encode(message))
            return protocol.read_message(sock, deadline)
        except TimeoutError:
            raise CniError(unreachable, "tailor agent did not answer in time",
                           f"no answer from {path} within {timeout:g}s") from None
        except (OSError, protocol.ProtocolError) as e:
            raise CniError(unreachable, "tailor agent connection failed", f"{path}: {e}") from None
    finally:
        sock.close()


# -- output -------------------------------------------------------------------

def _print(obj: dict) -> None:
    sys.stdout.write(protocol.dumps(obj) + "\n")
    sys.stdout.flush()


def _fail(version: str, code: int, msg: str, details: str = "") -> int:
    if version not in protocol.SUPPORTED_VERSIONS:
        version = protocol.CNI_VERSION
    _print({"cniVersion": version, "code": code, "msg": msg, "details": details})
    return 1


if __name__ == "__main__":
    sys.exit(main())
