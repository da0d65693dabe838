"""Our C++ CPU kernels, compiled once per machine by torch's extension builder and cached.

The build uses `-march=native`, so the cache key holds the CPU's instruction-set flags: a cache
copied to another machine is rebuilt, never run with instructions the CPU lacks.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import platform
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCES = [Path(__file__).with_name(name) for name in ("qgemm.cpp", "attention.cpp", "ops.cpp")]
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_flags() -> list[str]:
    """The instruction-set flags the kernels and the profiles care about (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return [platform.machine()]
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return [f for f in ISA_FLAGS if f in present]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo; else what platform knows)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


BUILD_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"]  # at::parallel_for needs OpenMP


@cache
def kernel_version() -> str:
    """A hash of the kernels' sources, the torch version and this CPU's ISA flags: what the
    compiled code, and so every latency measured with it, depends on (the build cache's key)."""
    h = hashlib.sha256()
    for src in SOURCES:
        h.update(src.read_bytes())
    h.update(" ".join([torch.__version__, platform.machine(), *cpu_flags()]).encode())
    return h.hexdigest()[:16]


@cache
def qgemm():
    """The compiled quantized-linear module (raises if this machine cannot build it)."""
    from torch.utils.cpp_extension import load

    from adaserve.models.sources import cache_root

    key = kernel_version()
    build_dir = cache_root() / "kernels" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    log.info("loading the qgemm kernels (built once per machine, in %s)", build_dir)
    with _build_lock(build_dir):
        return load(
            name=f"adaserve_qgemm_{key}",
            sources=[str(s) for s in SOURCES],
            extra_cflags=BUILD_FLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            verbose=False,
        )


@contextmanager
def _build_lock(build_dir: Path):
    """One builder at a time, by an OS lock that dies with its process. torch's own lock is a
    file that a killed build leaves behind, and the next start waits on it forever; under our
    lock no other build runs, so a torch lock file found here is such a leftover: remove it."""
    with open(build_dir / ".adaserve-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stale = build_dir / "lock"
        if stale.exists():
            log.warning("removing %s, left by a build that was killed", stale)
            stale.unlink()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
