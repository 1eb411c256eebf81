"""Benchmark of the evaluation protocol: one run at IPC 10 (sequential vs batched ensemble) and the fraction of
the machine's measured matmul throughput that the ConvNet-3 training step reaches.

    python scripts/bench_eval.py --dataset mnist --epochs 30 [--device cuda]

Epoch counts are reduced to keep the benchmark short; seconds per full ``dc`` run (301 passes) are
extrapolated from the measured per-pass time and labelled as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch
import torch.nn.functional as F
from bench_common import count_flops, matmul_peak_gflops, time_calls

from gendistill.data.datasets import load_dataset
from gendistill.evaluation.evaluate import evaluate
from gendistill.evaluation.protocols import get_protocol
from gendistill.nn.nets import create_network
from gendistill.registry import get_method
from gendistill.utils.resources import peak_memory_mb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    splits = load_dataset(args.dataset, args.data_root)
    info = get_method("random")
    synset = info.cls(info.config_cls()).distill(splits.train, args.ipc, seed=0)
    report: dict = {"device": args.device, "torch_threads": torch.get_num_threads(), "ipc": args.ipc,
                    "dataset": args.dataset, "epochs_measured": args.epochs, "runs": args.runs}
    peak = matmul_peak_gflops(args.device)
    report["matmul_peak_gflops"] = peak
    for mode in ("sequential", "batched"):
        proto = get_protocol("dc", ensemble=mode)
        start = time.perf_counter()
        result = evaluate(synset, splits.test, proto, epochs=args.epochs, runs=args.runs, device=args.device,
                          progress=False)
        wall = time.perf_counter() - start
        report[mode] = {"wall_s": wall, "s_per_run": wall / args.runs, "accs": result.accs}
    # Split one run into training and testing to extrapolate a full 300-epoch run.
    c, h, _ = splits.train.image_shape
    net = create_network("convnet", c, splits.train.num_classes, h, seed=0).to(args.device)
    x, y = synset.images.to(args.device), synset.labels.to(args.device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def train_step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step_s = time_calls(train_step, 20, args.device)
    flops = count_flops(train_step)
    test_proto = dataclasses.replace(get_protocol("dc"), epochs=0, runs=1)
    start = time.perf_counter()
    evaluate(synset, splits.test, test_proto, device=args.device, progress=False)
    one_pass_and_test = time.perf_counter() - start
    report["train_step"] = {"batch": len(x), "seconds": step_s, "gflop": flops / 1e9,
                            "gflops_achieved": flops / step_s / 1e9, "fraction_of_matmul_peak": flops / step_s / 1e9
                            / peak}
    report["test_pass_s"] = max(one_pass_and_test - step_s, 0.0)
    report["extrapolated_full_dc_run_s"] = 301 * step_s + report["test_pass_s"]
    report["peak_memory_mb"] = peak_memory_mb(args.device)
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
