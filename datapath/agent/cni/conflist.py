"""The node's CNI network configuration, owned by the agent: written once
the agent serves its CNI socket, removed when it stops (unless told to keep
it), so the kubelet reports the node's network ready exactly while an agent
can wire pods, and uninstalling tailor leaves no configuration that names
a plugin nobody answers for.

Called by the daemon (`tailor agent --cni-conf FILE --cni-conf-dir DIR`);
the chart mounts the rendered conflist as FILE and the host's
/etc/cni/net.d as DIR.
"""
from __future__ import annotations

import json
import os


class ConflistError(Exception):
    """The conflist to install is unreadable or not a CNI network list."""


def install(source: str, directory: str) -> str:
    """Copy `source` into `directory` under its own name, by rename (the
    runtime never reads half a file). Returns the installed path."""
    try:
        with open(source) as f:
            text = f.read()
        conf = json.loads(text)
    except (OSError, ValueError) as e:
        raise ConflistError(f"CNI config {source}: {e}") from None
    if not isinstance(conf, dict) or not conf.get("name") or not isinstance(conf.get("plugins"), list):
        raise ConflistError(f"CNI config {source}: not a network list (needs name and plugins)")
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, os.path.basename(source))
    tmp = os.path.join(directory, f".{os.path.basename(source)}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


def remove(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
