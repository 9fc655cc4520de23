"""compile: what it costs to make a pod's programs — tailor's generator
(resolve + compile, Python straight to bytecode) and the kernel load of
its result — beside clang compiling equivalent C for the same pods.

Over a cluster of mixed shapes (clusters.mixed) every pod is generated
and loaded, one at a time, timed per pod: p50 and p99 — as the operator
generates them: the first pod of a shape compiles a template, later ones
are patched copies (their figures are also given apart). clang is slow, so
it compiles a sample: every distinct shape first (features and sizes), then
other pods, up to CLANG_SAMPLES; `clang -O2 -target bpf -c` on the C that
cgen.py writes for the pod. The ratio is clang's p50 over the generator's.
"""
from __future__ import annotations

import os
import struct
import subprocess
import tempfile
import time

from benchmarks import adapters, cgen, clusters
from benchmarks.common import Skip, ms, need_tool, percentile, pick, ratio

PODS = {"full": 1000, "quick": 200, "smoke": 20}
CLANG_SAMPLES = {"full": 20, "quick": 20, "smoke": 2}
RECYCLE = 100          # pods per kernel node before it is closed: bounds open fds and memory


def run(mode: str, say) -> dict:
    reason = adapters.kernel_unavailable()
    if reason:
        raise Skip(f"the kernel load {reason}")
    clang = need_tool("clang", "clang")
    n = pick(mode, PODS)
    state = adapters.state_of(clusters.mixed(n))
    refs = adapters.pod_refs(state)
    generate, load, made, new_shape = [], [], {}, []
    generator = adapters.Generator(state)
    node = adapters.KernelNode(state)
    try:
        for i, ref in enumerate(refs, 1):
            t0 = time.perf_counter()
            spec, programs = generator(ref)
            t1 = time.perf_counter()
            node.add(spec, programs)
            t2 = time.perf_counter()
            generate.append(t1 - t0)
            load.append(t2 - t1)
            new_shape.append(generator.new_shape)
            made[ref] = (spec, programs, t1 - t0)
            if node.size >= RECYCLE:
                node.close()
                node = adapters.KernelNode(state)
            say.every("tailor generate + load", i, len(refs))
    finally:
        node.close()
    samples = _sample(made, pick(mode, CLANG_SAMPLES))
    clang_times, by_pod = [], []
    with tempfile.TemporaryDirectory(prefix="tailor-bench-cc-") as tmp:
        for i, ref in enumerate(samples, 1):
            say("clang -O2 -target bpf -c", i, len(samples))
            spec, programs, gen_s = made[ref]
            seconds, insns = _clang(clang, tmp, cgen.source(adapters.shape(spec), ref))
            clang_times.append(seconds)
            by_pod.append({"pod": ref, "features": adapters.features(programs),
                           "tailor_generate_ms": ms(gen_s, 3), "clang_ms": ms(seconds),
                           "tailor_insns": adapters.instructions(programs, "ingress")
                           + adapters.instructions(programs, "egress"),
                           "clang_insns": insns})
    rows = [_row("tailor generate", generate), _row("tailor load", load), _row("clang compile", clang_times)]
    # A pod whose shape is new compiles a template; the others are patched copies.
    first = _row("tailor generate, new shape", [s for s, new in zip(generate, new_shape) if new])
    return {"pods": len(refs), "shapes": len({adapters.shape_key(m[1]) for m in made.values()}),
            "clang_samples": len(samples), "clang": _version(clang), "rows": rows,
            "generate_new_shape": first,
            "clang/generate": {"p50": ratio(rows[2]["p50_ms"], rows[0]["p50_ms"], 1),
                               "p99": ratio(rows[2]["p99_ms"], rows[0]["p99_ms"], 1)},
            "clang/generate_new_shape": {"p50": ratio(rows[2]["p50_ms"], first["p50_ms"], 1)},
            "samples": by_pod}


def _row(step: str, seconds: list[float]) -> dict:
    if not seconds:
        return {"step": step, "samples": 0, "p50_ms": None, "p99_ms": None}
    return {"step": step, "samples": len(seconds), "p50_ms": ms(percentile(seconds, 50), 3),
            "p99_ms": ms(percentile(seconds, 99), 3)}


def _sample(made: dict, k: int) -> list[str]:
    """One pod of each distinct shape first, then others, k in all, spread over the cluster."""
    first: dict[tuple, str] = {}
    for ref, (_, programs, _) in made.items():
        first.setdefault(adapters.shape_key(programs), ref)
    chosen = list(first.values())[:k]
    rest = [r for r in made if r not in chosen]
    step = max(1, len(rest) // max(1, k - len(chosen)))
    chosen += rest[::step][:k - len(chosen)]
    return chosen


def _clang(clang: str, tmp: str, text: str) -> tuple[float, int | None]:
    src, obj = os.path.join(tmp, "pod.c"), os.path.join(tmp, "pod.o")
    with open(src, "w") as f:
        f.write(text)
    started = time.perf_counter()
    done = subprocess.run([clang, "-O2", "-target", "bpf", "-c", src, "-o", obj],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"clang refused the generated C: {done.stderr.strip()[-800:]}")
    return seconds, _tc_insns(obj)


def _tc_insns(path: str) -> int | None:
    """Instructions in the object's `tc` sections (ELF64 little-endian; 8 bytes each)."""
    with open(path, "rb") as f:
        elf = f.read()
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return None
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    total = 0
    for name, _type, _flags, _addr, _offset, size in headers:
        end = elf.index(b"\0", names_at + name)
        if elf[names_at + name:end] == b"tc":
            total += size // 8
    return total


def _version(clang: str) -> str:
    out = subprocess.run([clang, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else ""
