"""Benchmark of trajectory matching (MTT): full unrolling vs TESLA, and expert-buffer training throughput.

Part 1 - one MTT iteration (MNIST IPC 10, ConvNet-3, ``batch_syn`` the ``mtt`` preset's: 0 = all 100 images) at
``--steps`` student steps, for ``grad: unroll`` (the reference: the whole unrolled graph stays in memory) and
``grad: exact_sweep`` (exact gradient, one step's graph at a time; :mod:`gendistill.baselines.trajectory.mtt`).
Per setting:

* seconds per iteration: the median of ``--iterations`` timed calls after one warm-up; one iteration is a fresh
  minibatch/DSA plan plus the matching loss and its gradients w.r.t. the images and the student lr. The two SGD
  updates of the method (vectors of the set's size) are left out so every call runs on the same set. The
  expert snapshots are a freshly initialised network (start) and a seeded perturbation of it (target): cost
  does not depend on their values, so no expert buffer is needed for this part.
* saved-tensor memory (every device): the peak, over the iteration, of the bytes held by autograd for backward,
  measured in a separate call with ``torch.autograd.graph.saved_tensors_hooks``: each saved tensor counts
  ``numel * element_size`` from when it is packed until the graph holding it is freed (a tensor saved by two
  operations counts twice; gradients, outputs and other temporaries not saved for backward are not counted).
  This is the part of memory that grows with ``syn_steps`` under unrolling. The CPU process RSS is not used:
  the allocator keeps freed pages, so its deltas are unreliable.
* TESLA also keeps the ``syn_steps + 1`` flat student parameter vectors (``student_params_mb``, computed).
* on CUDA: ``torch.cuda.max_memory_allocated`` during one more call, minus what was allocated before it.
* the largest relative difference between the TESLA and the unrolled image gradient on the same plan (they are
  equal in exact arithmetic; the float64 test is in tests/test_mtt.py).

Part 2 - expert training throughput (images per second): :func:`gendistill.buffers.train_buffers` (cache-blocked
batches on CPU, atomic per-epoch snapshots, checksums) against a plain per-expert loop written here (SGD lr 0.01,
momentum 0, batch 256, non-siamese DSA per batch, one forward/backward per batch, snapshots kept in memory), on
the same class-balanced subset, network and seeds.

    python scripts/bench_trajectory.py [--device cuda] [--steps 10,20,40] [--iterations 3] [--out results/bench]
    python scripts/bench_trajectory.py --tiny --out /tmp/bt        # smoke test: seconds, tiny network

Writes ``OUT/trajectory_<device>.json`` and ``OUT/trajectory_<device>.md`` and prints the markdown.

Cost of the defaults: unrolling holds about 0.6 GB of saved tensors per student step on 100 MNIST images
(ConvNet-3), so ``unroll`` at 40 steps needs ~24 GB; on a CPU (~1.8 s per step on 1 thread) the whole run takes
about half an hour. On a small machine pass ``--steps 10,20`` or ``--batch-syn 25``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_common import sync

from gendistill.baselines.trajectory.buffers import BufferRecipe, flat_parameters, train_buffers
from gendistill.baselines.trajectory.mtt import FlatNetwork, plan_steps, tesla_matching_loss, unrolled_matching_loss
from gendistill.data.datasets import RealDataset, load_dataset
from gendistill.nn.augment import DSA
from gendistill.nn.nets import create_network
from gendistill.presets import resolve_config
from gendistill.utils.seeding import derive_seed, make_generator

MB = 2**20


class _Held:
    """A saved tensor and its byte count; returns the bytes to the meter when autograd releases it."""

    __slots__ = ("meter", "nbytes", "tensor")

    def __init__(self, tensor: torch.Tensor, meter: SavedTensorMeter) -> None:
        self.tensor, self.meter, self.nbytes = tensor, meter, tensor.numel() * tensor.element_size()

    def __del__(self) -> None:
        self.meter.live -= self.nbytes


class SavedTensorMeter:
    """Peak bytes of tensors saved for backward while the context is active (see the module docstring)."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.total = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> _Held:
        held = _Held(tensor, self)
        self.live += held.nbytes
        self.total += held.nbytes
        self.peak = max(self.peak, self.live)
        return held

    @staticmethod
    def _unpack(held: _Held) -> torch.Tensor:
        return held.tensor

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


# ------------------------------------------------------------------------------------------ part 1: MTT
class MatchingProblem:
    """The synthetic set, the functional student and one start/target pair of an MTT iteration."""

    def __init__(self, train: RealDataset, ipc: int, model: str, batch_syn: int, dsa_strategy: str, lr: float,
                 device: str, seed: int = 0) -> None:
        self.device, self.batch_syn = device, batch_syn
        gen = make_generator(seed)
        c, h, _ = train.image_shape
        idx = train.sample_indices(ipc, gen).reshape(-1)
        self.images = train.images(idx).clone().to(device).requires_grad_(True)
        self.targets = torch.arange(train.num_classes, device=device).repeat_interleave(ipc)
        self.lr = torch.tensor(float(lr), device=device, requires_grad=True)
        net = create_network(model, c, train.num_classes, h, seed=seed).to(device)
        net.train()
        self.student = FlatNetwork(net)
        self.start = flat_parameters(net).to(device)
        noise = torch.randn(self.start.shape, generator=make_generator(derive_seed(seed, "target")))
        self.target = self.start + 0.01 * noise.to(device)
        self.dsa = DSA.for_dataset(train.flip_ok, dsa_strategy)
        self.image_size = h
        self.gen = make_generator(derive_seed(seed, "plans"))

    def plan(self, steps: int) -> list:
        return plan_steps(self.images.shape[0], steps, self.batch_syn, self.image_size, self.dsa, self.gen)

    def gradients(self, grad: str, plan: list) -> torch.Tensor:
        """The matching loss; its gradients land in ``images.grad`` and ``lr.grad``."""
        self.images.grad = None
        self.lr.grad = None
        args = (self.student, F.cross_entropy, self.images, self.targets, self.lr, plan, self.dsa, self.start,
                self.target)
        if grad == "unroll":
            loss = unrolled_matching_loss(*args)
            loss.backward()
            return loss.detach()
        return tesla_matching_loss(*args, exact=grad == "exact_sweep")

    def iteration(self, grad: str, steps: int) -> torch.Tensor:
        return self.gradients(grad, self.plan(steps))


def bench_matching(problem: MatchingProblem, grad: str, steps: int, iterations: int, device: str) -> dict:
    row: dict[str, Any] = {"grad": grad, "syn_steps": steps}
    with SavedTensorMeter() as meter:  # also the warm-up call
        problem.iteration(grad, steps)
    row["saved_tensors_peak_mb"] = meter.peak / MB
    row["saved_tensors_total_mb"] = meter.total / MB
    row["student_params_mb"] = ((steps + 1) if grad != "unroll" else 0) * problem.start.numel() * 4 / MB
    if device.startswith("cuda"):
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        problem.iteration(grad, steps)
        sync(device)
        row["cuda_peak_mb"] = (torch.cuda.max_memory_allocated() - base) / MB
    times = []
    for _ in range(iterations):
        sync(device)
        start = time.perf_counter()
        problem.iteration(grad, steps)
        sync(device)
        times.append(time.perf_counter() - start)
    row["s_per_iteration"] = statistics.median(times)
    row["s_per_iteration_all"] = times
    return row


def exact_sweep_agreement(problem: MatchingProblem, steps: int) -> float:
    """max |g_exact_sweep - g_unroll| / max |g_unroll| of the image gradient on one plan."""
    plan = problem.plan(steps)
    problem.gradients("unroll", plan)
    ref = problem.images.grad.clone()
    problem.gradients("exact_sweep", plan)
    return float((problem.images.grad - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


# ------------------------------------------------------------------------------- part 2: expert training
def plain_expert_loop(train: RealDataset, experts: int, recipe: BufferRecipe, seed: int, device: str) -> list:
    """The straightforward expert loop (reference ``buffer.py``): no cache blocking, no files."""
    c, h, _ = train.image_shape
    x_all, y_all = train.images().to(device), train.labels.to(device)
    dsa = DSA.for_dataset(train.flip_ok, recipe.dsa_strategy)
    trajectories = []
    for i in range(experts):
        net = create_network(recipe.model, c, train.num_classes, h, seed=derive_seed(seed, "expert", i, "init"))
        net = net.to(device)
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                              weight_decay=recipe.weight_decay)
        snaps = [flat_parameters(net)]
        for e in range(recipe.epochs):
            gen = make_generator(derive_seed(seed, "expert", i, "epoch", e))
            perm = torch.randperm(len(y_all), generator=gen)
            for s in range(0, len(perm), recipe.batch_size):
                idx = perm[s:s + recipe.batch_size].to(device)
                loss = F.cross_entropy(net(dsa(x_all[idx], gen)), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            snaps.append(flat_parameters(net))
        trajectories.append(torch.stack(snaps))
    return trajectories


def bench_buffers(train: RealDataset, experts: int, epochs: int, per_class: int, model: str, device: str,
                  seed: int = 0) -> dict:
    idx = train.sample_indices(per_class, make_generator(derive_seed(seed, "bench-subset"))).reshape(-1)
    sub = train.subset(idx.sort().values)
    recipe = BufferRecipe(model=model, epochs=epochs)
    images = experts * epochs * len(sub)
    row: dict[str, Any] = {"experts": experts, "epochs": epochs, "train_images": len(sub), "model": model,
                           "batch": recipe.batch_size, "image_passes": images}
    with tempfile.TemporaryDirectory(prefix="gendistill-bench-buffer-") as tmp:
        sync(device)
        start = time.perf_counter()
        train_buffers(sub, Path(tmp) / "buffer", experts, recipe=recipe, seed=seed, device=device,
                      test_accuracy=False, progress=False)
        sync(device)
        row["train_buffers_s"] = time.perf_counter() - start
    sync(device)
    start = time.perf_counter()
    plain_expert_loop(sub, experts, recipe, seed, device)
    sync(device)
    row["plain_loop_s"] = time.perf_counter() - start
    row["train_buffers_images_per_s"] = images / row["train_buffers_s"]
    row["plain_loop_images_per_s"] = images / row["plain_loop_s"]
    return row


# ---------------------------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    lines = [f"MTT, {report['dataset']} IPC {report['ipc']}, {report['model']}, batch_syn {report['batch_syn']} "
             f"({report['device']}, {report['threads']} threads)", "",
             "| grad | syn_steps | s/iteration | saved-tensor peak (MB) | student params kept (MB) | CUDA peak (MB) | "
             "TESLA vs unroll (rel. diff) |", "|---|---|---|---|---|---|---|"]
    for r in report["matching"]:
        cuda = f"{r['cuda_peak_mb']:.0f}" if "cuda_peak_mb" in r else "-"
        agree = report["exact_sweep_agreement"].get(str(r["syn_steps"])) if r["grad"] == "exact_sweep" else None
        lines.append(f"| {r['grad']} | {r['syn_steps']} | {r['s_per_iteration']:.3f} | "
                     f"{r['saved_tensors_peak_mb']:.1f} | {r['student_params_mb']:.1f} | {cuda} | "
                     f"{'-' if agree is None else f'{agree:.1e}'} |")
    b = report.get("buffers")
    if b:
        lines += ["", f"Expert training: {b['experts']} experts x {b['epochs']} epochs on {b['train_images']} images "
                  f"({b['model']}, batch {b['batch']})", "",
                  "| trainer | seconds | images/s |", "|---|---|---|",
                  f"| train_buffers | {b['train_buffers_s']:.1f} | {b['train_buffers_images_per_s']:.0f} |",
                  f"| plain per-expert loop | {b['plain_loop_s']:.1f} | {b['plain_loop_images_per_s']:.0f} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--steps", default="10,20,40", help="syn_steps values, comma-separated")
    ap.add_argument("--grads", default="unroll,exact_sweep",
                    help="gradient modes (unroll, exact_sweep, tesla: the published detached gradient)")
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per setting (median reported)")
    ap.add_argument("--batch-syn", type=int, default=None, help="default: the mtt preset's (0 = all images)")
    ap.add_argument("--model", default=None, help="default: the mtt preset's (convnet)")
    ap.add_argument("--experts", type=int, default=2, help="experts per trainer in part 2 (0 skips it)")
    ap.add_argument("--expert-epochs", type=int, default=2)
    ap.add_argument("--expert-images-per-class", type=int, default=300)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--tiny", action="store_true", help="smoke test: IPC 2, width-8 ConvNet, one tiny expert")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        args.ipc, args.model, args.iterations = 2, args.model or "convnet_w8", 1
        args.experts, args.expert_epochs, args.expert_images_per_class = min(args.experts, 1), 1, 4
    cfg = resolve_config("mtt", args.dataset, args.ipc)
    model = args.model or cfg.model
    batch_syn = cfg.batch_syn if args.batch_syn is None else args.batch_syn
    splits = load_dataset(args.dataset, args.data_root)
    train = splits.train
    steps = [int(s) for s in args.steps.split(",")]
    problem = MatchingProblem(train, args.ipc, model, batch_syn, cfg.dsa_strategy, cfg.lr_teacher, args.device)
    report: dict[str, Any] = {
        "device": args.device, "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else
        "cpu", "threads": torch.get_num_threads(), "dataset": args.dataset, "ipc": args.ipc, "model": model,
        "num_params": problem.start.numel(), "batch_syn": batch_syn or args.ipc * train.num_classes,
        "tiny": args.tiny, "memory_measure": "peak bytes of tensors saved for backward (saved_tensors_hooks, "
        "numel * element_size while held); cuda_peak_mb: max_memory_allocated minus the allocation before",
        "matching": [], "exact_sweep_agreement": {}}
    for n in steps:
        for grad in args.grads.split(","):
            row = bench_matching(problem, grad, n, args.iterations, args.device)
            report["matching"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "s_per_iteration_all"}), flush=True)
        report["exact_sweep_agreement"][str(n)] = exact_sweep_agreement(problem, n)
    if args.experts:
        report["buffers"] = bench_buffers(train, args.experts, args.expert_epochs, args.expert_images_per_class,
                                          model, args.device)
        print(json.dumps(report["buffers"]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if args.device.startswith("cuda") else "cpu"
    (out / f"trajectory_{tag}.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (out / f"trajectory_{tag}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
