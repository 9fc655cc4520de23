"""The lab running the shipped artefact: agents (and, with --control
operator, the operator) as containers of tailor's image
(scripts/build-image.sh), started with podman exactly as the chart runs them
— the agent with the chart's capability list instead of privileged, the CNI
executable copied out of the image as the chart's init container copies it
onto a node.

Called by processes (argv) and lab (up, down); `tailor lab up --image IMAGE`.
podman needs runc and explicit ulimits on this kind of machine (crun refuses
its cgroups; the default limits are refused).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

from tailor.datapath.agent import privileges

CNI_IN_IMAGE = "/opt/tailor/cni/tailor.d"   # under the chart's cni.pluginDir
BPFFS = "/sys/fs/bpf"
HOST_PROC_SYS_NET = privileges.PROC_SYS_NET_MOUNT   # the chart mounts it there too


class ImageError(Exception):
    """podman is missing, the image is not there, or a container step failed."""


def check(image: str) -> None:
    if shutil.which("podman") is None:
        raise ImageError("--image runs tailor's image with podman, which is not installed: "
                         "apt-get install podman runc")
    found = subprocess.run(["podman", "image", "exists", image], capture_output=True)
    if found.returncode != 0:
        raise ImageError(f"image {image} is not in podman's store: build it with "
                         f"scripts/build-image.sh (it prints the reference)")


def container_name(data: dict, key: str) -> str:
    return f"tailor-lab-{data['name']}-{key.replace('/', '-')}"


def run_argv(data: dict, key: str, args: list[str], *, netns: str | None,
             agent: bool) -> list[str]:
    """`podman run` of the image with `args` (tailor's own arguments). The
    agent joins the node's network namespace and gets the agent's
    capabilities; the operator runs on the host's network with none."""
    argv = ["podman", "run", "--rm", "--name", container_name(data, key), "--runtime", "runc",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
            "--network", f"ns:/var/run/netns/{netns}" if netns else "host",
            "--cap-drop", "all", "--log-driver", "none",
            # The lab's sockets, kubeconfig and state live in its run dir.
            "--volume", f"{data['run_dir']}:{data['run_dir']}"]
    if agent:
        argv += ["--cap-add", ",".join(privileges.CAPABILITIES),
                 # Pins on the host's bpffs, so programs outlive the container;
                 # the pods' namespaces the lab (the runtime) creates later.
                 "--volume", f"{BPFFS}:{BPFFS}",
                 "--volume", "/var/run/netns:/var/run/netns:rslave",
                 "--volume", f"/proc/sys/net:{HOST_PROC_SYS_NET}"]
    if agent:
        args = [*args, "--proc-sys-net", HOST_PROC_SYS_NET]
    return argv + [data["image"], *args]


def install_cni(data: dict, directory: str, name: str) -> str:
    """Copy the image's CNI plugin folder into `directory` and link
    `directory/name` to its executable, as the chart's install-cni does."""
    os.makedirs(directory, exist_ok=True)
    folder = os.path.join(directory, f"{name}.d")
    target = os.path.join(directory, name)
    created = subprocess.run(["podman", "create", "--runtime", "runc", data["image"]],
                             capture_output=True, text=True)
    if created.returncode != 0:
        raise ImageError(f"podman create {data['image']}: {created.stderr.strip()}")
    cid = created.stdout.strip()
    try:
        shutil.rmtree(folder, ignore_errors=True)
        copied = subprocess.run(["podman", "cp", f"{cid}:{CNI_IN_IMAGE}", folder],
                                capture_output=True, text=True)
        if copied.returncode != 0:
            raise ImageError(f"podman cp {CNI_IN_IMAGE} out of {data['image']}: {copied.stderr.strip()}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target + ".new")
        os.symlink(os.path.join(f"{name}.d", name), target + ".new")
        os.replace(target + ".new", target)
    finally:
        subprocess.run(["podman", "rm", "--force", cid], capture_output=True)
    return target


def remove(data: dict) -> list[str]:
    """Remove the lab's containers still there (a podman client killed before
    its container stopped leaves one); returns their names."""
    if not data.get("image") or shutil.which("podman") is None:
        return []
    names = [container_name(data, key) for key in data.get("processes", {})]
    listed = subprocess.run(["podman", "ps", "--all", "--format", "{{.Names}}"],
                            capture_output=True, text=True).stdout.split()
    left = [n for n in names if n in listed]
    if left:
        subprocess.run(["podman", "rm", "--force", "--time", "0", *left], capture_output=True)
    return left
