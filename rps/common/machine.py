"""The machine a process runs on, as far as it changes numbers: the CPU model, its vector units
and the cores this process may use. Results are deterministic per machine, not bit-exact across
CPUs (float reductions and XNNPACK's kernels depend on them), and speed is only comparable on one."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    """``lscpu``'s "Model name" (e.g. ``AMD EPYC 9R14``), else what the platform says."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


def has_avx512() -> bool:
    return "avx512f" in _cpuinfo().get("flags", "").split()


def cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def describe() -> str:
    """One line for tables and logs: ``AMD EPYC 9R14, AVX-512 yes, 2 cores``."""
    return f"{cpu_model()}, AVX-512 {'yes' if has_avx512() else 'no'}, {cores()} cores"
