"""Compile every pod of a cluster state: resolve each pod's spec, compile it.
Called by `tailor programs`, `tailor connectivity`, the lab and tests. Pure.
"""
from __future__ import annotations

import dataclasses

from tailor.operator.cluster.state import ClusterState
from tailor.operator.compiler import program, resolve, template
from tailor.operator.compiler.spec import ProgramSpec


@dataclasses.dataclass(frozen=True)
class Built:
    spec: ProgramSpec
    programs: program.PodPrograms


def build(state: ClusterState, *, progress=None) -> dict[str, Built]:
    """{pod ref: Built} for every pod with an address, in name order.
    `progress(done, total)` is called after each pod when given."""
    pods = [p for p in state.sorted_pods() if p.ips]
    out: dict[str, Built] = {}
    templates, resolver = template.Templates(), resolve.Resolver(state)
    for i, pod in enumerate(pods, 1):
        spec = resolver.resolve(pod)
        out[pod.ref] = Built(spec, templates.compile(spec))
        if progress:
            progress(i, len(pods))
    return out
