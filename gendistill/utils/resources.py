"""Peak memory of this process (the one figure every result, benchmark and run record reports) and this machine's
CPU facts (what the speed records and the bfloat16 check read)."""

from __future__ import annotations

import functools
import platform
import resource
from pathlib import Path

import torch


def peak_memory_mb(device: str | torch.device = "cpu") -> float:
    """Peak memory in MiB: the CUDA allocator's peak on a GPU, else the process's maximum resident set size."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@functools.cache
def cpu_info() -> dict[str, object]:
    """This machine's CPU as ``/proc/cpuinfo`` describes its first processor: ``model`` (model name), ``family``
    (cpu family) and ``flags`` (a frozenset); the model falls back to ``platform.processor()`` and the rest to empty
    values where the file is absent."""
    info = Path("/proc/cpuinfo")
    fields: dict[str, str] = {}
    for line in (info.read_text().splitlines() if info.is_file() else []):
        if not line.strip():
            break  # the first processor only
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return {"model": fields.get("model name") or platform.processor(), "family": fields.get("cpu family", ""),
            "flags": frozenset(fields.get("flags", "").split())}
