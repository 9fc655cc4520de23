"""The lab running the shipped artefact: agents (and the operator) as
containers of the image, the agents with the chart's capability list
instead of privileged, pods wired by the image's standalone CNI executable.
The probe check that passes from the checkout passes the same way."""
from __future__ import annotations

import os
import subprocess

import pytest

from tailor.lab import lab
from tailor.lab import state as state_
from tailor.lab.probing import probe

from imagetools import ROOT

pytestmark = pytest.mark.kernel
CASES = {"lab-control": ("examples/01-namespaces-and-ports", "lab"),
         "operator": ("examples/04-services-and-dns", "operator")}


@pytest.fixture(scope="module", params=list(CASES))
def up(request, image):
    example, control = CASES[request.param]
    name = "timg" + str(list(CASES).index(request.param))
    if state_.exists(name):
        lab.down(name, echo=lambda _: None)
    data = lab.up([os.path.join(ROOT, example)], backend="kernel", name=name, control=control,
                  image=image, echo=lambda _: None)
    yield data
    lab.down(name, echo=lambda _: None)
    assert lab.leftovers(data) == []
    assert _containers(name) == []


def _containers(name: str) -> list[str]:
    out = subprocess.run(["podman", "ps", "--all", "--format", "{{.Names}}"],
                         capture_output=True, text=True, check=True).stdout.split()
    return [c for c in out if c.startswith(f"tailor-lab-{name}-")]


def test_the_lab_from_the_image_passes_the_probe_check(up):
    got = lab.probe(up["name"])
    assert probe.check(up, got) == []
    assert got["connections"], "nothing connected: the check compared nothing"
    expected = {f"agent-{n['name']}" for n in up["nodes"]} | ({"operator"} if up["control"] == "operator" else set())
    assert {c.removeprefix(f"tailor-lab-{up['name']}-") for c in _containers(up["name"])} == expected


def test_the_agents_run_unprivileged_with_the_listed_capabilities(up):
    from tailor.datapath.agent import privileges

    name = f"tailor-lab-{up['name']}-agent-{up['nodes'][0]['name']}"
    got = subprocess.run(["podman", "inspect", "--format",
                          "{{.HostConfig.Privileged}} {{.EffectiveCaps}}", name],
                         capture_output=True, text=True, check=True).stdout
    privileged, caps = got.split(" ", 1)
    assert privileged == "false"
    assert sorted(c.removeprefix("CAP_") for c in caps.strip("[]\n").split()) == sorted(privileges.CAPABILITIES)


def test_pods_are_wired_by_the_images_cni_executable(up):
    exe = os.path.join(up["run_dir"], "cni-bin", "tailor")
    assert os.path.realpath(exe) == os.path.join(up["run_dir"], "cni-bin", "tailor.d", "tailor")
    with open(exe, "rb") as f:
        assert f.read(4) == b"\x7fELF", "the lab's plugin is not the image's standalone executable"
