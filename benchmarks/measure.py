"""Measurements the in-process benchmarks share: peak memory, the CPU, a forward pass's rate, timing (their config: rps.config.compose)."""

from __future__ import annotations

import resource
import time

import numpy as np


def peak_gb() -> float:
    """Peak resident memory since the last :func:`reset_peak` (Linux's VmHWM), else of the process."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024**2
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KB on Linux


def reset_peak() -> None:
    """Start a new peak (Linux >= 4.0); elsewhere peaks stay those of the whole process."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def cpu() -> str:
    """The CPU's model name, cores and whether it has AVX-512 (XNNPACK's fastest x86 kernels), as
    the benchmarks print it; read by :mod:`rps.common.machine`, as runs record it."""
    from rps.common import machine

    return f"{machine.cpu_model()}, {machine.cores()} cores, AVX-512 {'yes' if machine.has_avx512() else 'no'}"


def forward_rate(forward, image_size: int, n: int = 64, repeats: int = 3) -> float:
    """Images/s of ``forward`` alone on random images (no reading, decoding or resizing), the
    best of ``repeats``: a ceiling, and this shared machine's speed varies from second to second."""
    images = np.random.default_rng(0).random((n, image_size, image_size, 3), dtype=np.float32)
    forward(images[:8])  # warm-up
    return max(n / timed(lambda: forward(images))[0] for _ in range(repeats))


def timed(fn) -> tuple[float, object]:
    start = time.monotonic()
    out = fn()
    return time.monotonic() - start, out
