"""Benchmark of the pixel-optimisation baselines at their published settings (MNIST, IPC 10 by default).

For each method: seconds per outer iteration, FLOPs per iteration (``FlopCounterMode``), the fraction of the
machine's measured matmul throughput reached, and peak memory. DM is also timed against the straightforward
per-class loop of the reference implementation (kept here, not in the package) to give the speed-up.

    python scripts/bench_baselines.py --methods dm,dd,dc,dsa,cafe [--device cuda] [--json out.json]

One DC/DSA iteration at the published loops (10 matching steps, 50 inner epochs) takes minutes on a 2-core CPU;
``--iterations`` sets how many are measured per method (the median is reported). ``--set amp_real=true`` times
the bfloat16 real side; the report also gives the bf16 matmul peak for it. Run one method per process when
comparing peak memory (the CPU figure is the process's max RSS).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from bench_common import count_flops, matmul_peak_gflops, sync

from gendistill.data.datasets import load_dataset
from gendistill.presets import resolve_config
from gendistill.registry import get_method
from gendistill.utils.resources import peak_memory_mb
from gendistill.utils.seeding import derive_seed, make_generator


def dm_per_class_reference_step(distiller, state, train, generator, seed, it):
    """The straightforward DM iteration: one forward per class and side, no inference mode, no chunking."""
    cfg = distiller.config
    images = state["images"]
    c = train.num_classes
    ipc = images.shape[0] // c
    net = distiller.fresh_network(train, seed, it)
    for p in net.parameters():
        p.requires_grad_(False)
    dsa = distiller.dsa_for(train)
    loss = torch.zeros((), device=distiller.device)
    for k in range(c):
        real = train.sample_class(k, cfg.batch_real, generator).to(distiller.device)
        draw = dsa.draw(1, train.image_shape[-1], make_generator(derive_seed(seed, it, k)))
        real_emb = net.embed(dsa.apply(real, draw, torch.zeros(len(real), dtype=torch.long)))
        syn_emb = net.embed(dsa.apply(images[k * ipc:(k + 1) * ipc], draw, torch.zeros(ipc, dtype=torch.long)))
        loss = loss + ((real_emb.mean(0) - syn_emb.mean(0)) ** 2).sum()
    distiller.update_images(state, loss)
    return {"loss": loss.detach()}


def measure(step, iterations: int, device: str) -> tuple[float, float]:
    """(median seconds per iteration, FLOPs per iteration): one counted call, then ``iterations`` timed calls.

    FLOPs are counted in a separate call so that the counter's dispatch overhead stays out of the timings.
    """
    flops = count_flops(lambda: step(0))
    times = []
    for i in range(iterations):
        sync(device)
        start = time.perf_counter()
        step(i + 1)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), flops


def bench_method(name: str, splits, args, peak: float) -> dict:
    """Time one method's iterations at the preset's settings (plus DM's per-class reference loop)."""
    info = get_method(name)
    cfg = resolve_config(name, args.dataset, args.ipc, overrides=[*args.set, f"device={args.device}"])
    distiller = info.cls(cfg)
    gen = make_generator(0)
    state = distiller.init_state(splits.train, args.ipc, gen, 0)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    s_it, flops = measure(lambda i: distiller.step(i, state, splits.train, gen, 0), args.iterations, args.device)
    row = {"method": name, "s_per_iteration": s_it, "gflop_per_iteration": flops / 1e9,
           "fraction_of_matmul_peak": flops / s_it / 1e9 / peak, "peak_memory_mb": peak_memory_mb(args.device),
           "overrides": args.set}
    if name == "dm":
        ref_s, ref_flops = measure(lambda i: dm_per_class_reference_step(distiller, state, splits.train, gen, 0, i),
                                   args.iterations, args.device)
        row.update(per_class_loop_s=ref_s, per_class_loop_fraction=ref_flops / ref_s / 1e9 / peak,
                   speedup_over_per_class_loop=ref_s / s_it)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="dm,dd,cafe,dc,dsa")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--set", action="append", default=[], help="override applied to every method (reduced run)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    splits = load_dataset(args.dataset, args.data_root)
    peak = matmul_peak_gflops(args.device)
    rows = []
    for name in args.methods.split(","):
        row = bench_method(name, splits, args, peak)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"device": args.device, "dataset": args.dataset, "ipc": args.ipc, "matmul_peak_gflops": peak,
              "bf16_matmul_peak_gflops": matmul_peak_gflops(args.device, dtype=torch.bfloat16),
              "threads": torch.get_num_threads(), "methods": rows}
    print("| method | s/iteration | GFLOP/iteration | fraction of matmul peak | peak memory (MB) | speed-up vs "
          "per-class loop |\n|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['speedup_over_per_class_loop']:.2f}x" if "speedup_over_per_class_loop" in r else "-"
        print(f"| {r['method']} | {r['s_per_iteration']:.2f} | {r['gflop_per_iteration']:.1f} | "
              f"{r['fraction_of_matmul_peak']:.0%} | {r['peak_memory_mb']:.0f} | {speed} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
