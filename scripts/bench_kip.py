"""Benchmark of KIP's kernels (issue 13): the time to compute K_ss and K_ts for a support set of ``--support``
images against a target batch of ``--targets`` real images, and of one full KIP step (kernels, float64 solve,
loss and the gradient w.r.t. the support images), for the infinite-width FC and ConvNet-3 NTKs of
:mod:`gendistill.kernels` (Nguyen et al., ICLR 2021 / NeurIPS 2021).

Images are the first class-balanced real images of ``--dataset`` in its model space (28x28 for MNIST). Each figure
is one timed call after a warm-up on two images (the kernels' cost is deterministic; the first call also pays
allocator warm-up). Peak memory is the process's peak RSS at the end (CPU) or ``max_memory_allocated`` (CUDA).

    python scripts/bench_kip.py [--support 100] [--targets 1000] [--kernels fc,conv] [--step fc] [--out DIR]
    python scripts/bench_kip.py --tiny --out /tmp/bk          # smoke test: seconds

Writes ``OUT/kip_<device>.json`` and ``OUT/kip_<device>.md`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from bench_common import sync

from gendistill.baselines.kip.kernels import KernelSpec, kernel, kip_loss
from gendistill.data.datasets import load_dataset
from gendistill.utils.resources import peak_memory_mb
from gendistill.utils.seeding import make_generator


def _images(dataset: str, data_root: str | None, n: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    train = load_dataset(dataset, data_root).train
    per_class = max(1, n // train.num_classes)
    idx = train.sample_indices(per_class, make_generator(seed)).reshape(-1)[:n]
    x, y = train.images(idx).to(device), train.labels[idx].to(device)
    onehot = torch.nn.functional.one_hot(y, train.num_classes).double() - 1.0 / train.num_classes
    return x, onehot


def _timed(fn, device: str) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--support", type=int, default=100, help="|S| (IPC 10 x 10 classes)")
    ap.add_argument("--targets", type=int, default=1000, help="target batch size")
    ap.add_argument("--kernels", default="fc,conv", help="kernel architectures to time (fc, conv)")
    ap.add_argument("--step", default="fc", help="architectures whose full KIP step (with gradient) is timed too")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--tiny", action="store_true", help="smoke test: |S| 4, 8 targets")
    args = ap.parse_args(argv)
    if args.tiny:
        args.support, args.targets = 4, 8
    if args.threads:
        torch.set_num_threads(args.threads)
    x_s, y_s = _images(args.dataset, args.data_root, args.support, 0, args.device)
    x_t, y_t = _images(args.dataset, args.data_root, args.targets, 1, args.device)
    rows = []
    for arch in [a for a in args.kernels.split(",") if a]:
        k = kernel(KernelSpec(arch=arch))
        k(x_s[:2], x_t[:2])  # warm-up
        t_ss, _ = _timed(lambda k=k: k(x_s), args.device)
        t_ts, _ = _timed(lambda k=k: k(x_t, x_s), args.device)
        row = {"kernel": arch, "support": args.support, "targets": args.targets, "k_ss_s": t_ss, "k_ts_s": t_ts,
               "ms_per_pair": 1e3 * t_ts / (args.support * args.targets)}
        if arch in args.step.split(","):
            support = x_s.clone().requires_grad_(True)

            def step(k=k, support=support) -> torch.Tensor:
                loss = kip_loss(k(x_t, support), k(support), y_s, y_t, 1e-6)[0]
                loss.backward()
                return loss

            row["step_s"], _ = _timed(step, args.device)
        rows.append(row)
        print(json.dumps(row), flush=True)
    peak_mb = peak_memory_mb(args.device)
    record = {"device": args.device, "dataset": args.dataset, "threads": torch.get_num_threads(),
              "dtype": "float64", "peak_memory_mb": peak_mb, "rows": rows, "tiny": args.tiny}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"KIP kernels on {args.dataset} ({args.device}, {record['threads']} threads, float64; peak memory "
             f"{peak_mb:.0f} MB)", "", "| kernel | S | targets | K_ss (s) | K_ts (s) | ms/pair | KIP step (s) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['kernel']} | {r['support']} | {r['targets']} | {r['k_ss_s']:.3g} | {r['k_ts_s']:.3g} | "
              f"{r['ms_per_pair']:.3g} | {r['step_s']:.3g} |" if "step_s" in r else
              f"| {r['kernel']} | {r['support']} | {r['targets']} | {r['k_ss_s']:.3g} | {r['k_ts_s']:.3g} | "
              f"{r['ms_per_pair']:.3g} | not timed |" for r in rows]
    table = "\n".join(lines) + "\n"
    name = args.device.split(":")[0]
    (out / f"kip_{name}.json").write_text(json.dumps(record, indent=2))
    (out / f"kip_{name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
