"""How fast the machine is right now: three fixed workloads, so that speed records taken hours apart can be told
apart by the machine's state rather than by the code.

    python scripts/perf/machine_probe.py --threads 2

- ``conv``: the operator that dominates every ConvNet-3 comparison, a 128 -> 128 channel 3x3 convolution forward on
  a [16, 128, 32, 32] block (cache-resident, as our blocked passes run it), in GFLOP/s;
- ``gemm``: a 1024 x 1024 fp32 matrix product (compute-bound), in GFLOP/s;
- ``copy``: a 256 MiB tensor copy (memory-bound: what neighbours on a shared host take first), in GB/s.

Each is the median of ``--repeats`` timed repetitions after one warm-up. ``compare.py`` runs the probe before and
after each comparison and records both (``probe_before``, ``probe_after``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable


def _median_seconds(fn: Callable[[], object], repeats: int, inner: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def probe(threads: int, repeats: int = 5) -> dict:
    """The three workloads' rates on ``threads`` threads (fixed inputs, seed 0)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 128, 32, 32, generator=gen)
    w = torch.randn(128, 128, 3, 3, generator=gen)
    a, b = torch.randn(1024, 1024, generator=gen), torch.randn(1024, 1024, generator=gen)
    src = torch.randn(64 * 2**20, generator=gen)  # 256 MiB
    dst = torch.empty_like(src)
    with torch.inference_mode():
        conv_s = _median_seconds(lambda: F.conv2d(x, w, padding=1), repeats, 10)
        gemm_s = _median_seconds(lambda: torch.mm(a, b), repeats, 10)
        copy_s = _median_seconds(lambda: dst.copy_(src), repeats, 3)
    conv_flop = 2 * 16 * 128 * 128 * 9 * 32 * 32
    return {"threads": threads, "conv_gflops": conv_flop / conv_s / 1e9, "gemm_gflops": 2 * 1024**3 / gemm_s / 1e9,
            "copy_gbs": 2 * src.numel() * 4 / copy_s / 1e9}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        ap.error("--threads and --repeats take positive counts")
    print("PROBE", json.dumps(probe(args.threads, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
