"""Helpers shared by the benchmark scripts: matmul peak, FLOP counting, timing, peak memory."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_peak_gflops(device: str = "cpu", n: int = 2048, repeats: int = 10,
                       dtype: torch.dtype = torch.float32) -> float:
    """Measured matmul throughput (GFLOP/s) of this machine in ``dtype``: the best of 3 timed rounds.

    The fp32 figure is the roofline the hot loops are held to.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best / 1e9


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of ``fn`` (FlopCounterMode: matmuls and convolutions, forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def time_calls(fn: Callable[[], object], repeats: int, device: str = "cpu", warmup: int = 1) -> float:
    """Mean seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


