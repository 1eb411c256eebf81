"""Peak memory of this process, the one figure every result, benchmark and run record reports."""

from __future__ import annotations

import resource

import torch


def peak_memory_mb(device: str | torch.device = "cpu") -> float:
    """Peak memory in MiB: the CUDA allocator's peak on a GPU, else the process's maximum resident set size."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
