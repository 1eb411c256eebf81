"""Micro-measurements of speed ideas (issue "Speed", item 3): each idea against the current path, arms interleaved
(A, B, A, B, ...) in one process so that load from other work falls on both; median seconds per call.

    python scripts/perf/micro_ideas.py --threads 1 --json results/perf/ideas/micro_ideas.json

Ideas: channels-last memory format for an evaluation network's training step (ConvNet-3 and AlexNet, batch 100
of MNIST-sized images), and the per-channel instance norm of ConvNet-3 as ``F.group_norm`` (current),
``F.instance_norm`` or written out with ``var_mean`` (forward and backward on a [256, 128, 28, 28] activation).
``--more`` measures instead: ``torch.compile`` (inductor) of ConvNet-3's training step against eager (compile time
reported apart); the frozen-feature pass (``features.embed``) on 10,000 images, contiguous against channels_last;
the test pass of ``split_accuracy`` on 10,000 MNIST-sized images in whole batches of 100 against cache-sized row
blocks (``gendistill.nn.blocking``, current); and one
`dsa` evaluation of two networks (random MNIST-sized images, IPC 10, 20 epochs, 100 test images) trained one after
the other (current CPU default) against the vmapped ensemble (``torch.func.stack_module_state``). ``--batching``
measures the batching ideas on one DM iteration's real side (10 classes x 256 MNIST-sized images, 10 synthetic per
class): siamese DSA drawn and applied once per class, as the reference loops over classes, against one draw for all
classes applied to the whole batch (current); the frozen ConvNet-3 embedding per class against one forward of all
2560 images and against cache-sized row blocks (current); and drawing those 2560 images from a 60,000-image split
held normalised in memory (current, under ``CACHE_LIMIT_BYTES``) against converting the drawn uint8 pixels each time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from gendistill.nn.nets import create_network
from gendistill.utils.resources import cpu_info


def interleaved(arms: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each arm, the arms called in turn ``rounds`` times after one warm-up each."""
    for fn in arms.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, fn in arms.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def train_step_arms(model: str) -> dict[str, Callable[[], None]]:
    arms = {}
    for layout in ("contiguous", "channels_last"):
        net = create_network(model, 1, 10, 28, seed=0)
        x = torch.randn(100, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        y = torch.arange(100) % 10
        if layout == "channels_last":
            net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def step(net=net, x=x, y=y, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
        arms[layout] = step
    return arms


def norm_arms() -> dict[str, Callable[[], None]]:
    x = torch.randn(256, 128, 28, 28, generator=torch.Generator().manual_seed(0), requires_grad=True)
    w, b = torch.ones(128, requires_grad=True), torch.zeros(128, requires_grad=True)

    def written_out(x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + 1e-5) * w[:, None, None] + b[:, None, None]

    forms = {"group_norm": lambda x: F.group_norm(x, 128, w, b, 1e-5),
             "instance_norm": lambda x: F.instance_norm(x, weight=w, bias=b, eps=1e-5),
             "var_mean": written_out}
    reference = forms["group_norm"](x)
    for name, f in forms.items():
        if not torch.allclose(f(x), reference, atol=1e-4):
            raise SystemExit(f"{name} does not compute the same normalisation")
    return {name: (lambda f=f: f(x).sum().backward()) for name, f in forms.items()}


def compile_arms() -> tuple[dict[str, Callable[[], None]], float]:
    """ConvNet-3 training step (batch 100, 28 px) eager and under ``torch.compile``; returns the arms and the
    seconds the first compiled call took (compilation)."""
    arms = {}
    compile_s = 0.0
    for mode in ("eager", "compiled"):
        net = create_network("convnet", 1, 10, 28, seed=0)
        x = torch.randn(100, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        y = torch.arange(100) % 10
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        fwd = torch.compile(net) if mode == "compiled" else net

        def step(fwd=fwd, x=x, y=y, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(fwd(x), y).backward()
            opt.step()
        if mode == "compiled":
            start = time.perf_counter()
            step()
            compile_s = time.perf_counter() - start
        arms[mode] = step
    return arms, compile_s


def _random_split(n: int, seed: int, split: str):
    from gendistill.data.datasets import Preprocessing, RealDataset

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return RealDataset(pixels, torch.arange(n) % 10, [str(i) for i in range(10)], Preprocessing((0.1307,), (0.3081,)),
                       "mnist", split)


def test_pass_arms() -> dict[str, Callable[[], None]]:
    """``split_accuracy`` on 10,000 MNIST-sized images at its batch of 100 (channels_last): each batch passed whole
    (``GENDISTILL_CPU_BLOCK_MB`` set huge, the code before blocking) against cache-sized row blocks (current)."""
    import os

    from gendistill.evaluation.trainer import split_accuracy

    test = _random_split(10_000, 1, "test")
    net = create_network("convnet", 1, 10, 28, seed=0)

    def run(block_mb: str | None) -> None:
        saved = os.environ.pop("GENDISTILL_CPU_BLOCK_MB", None)
        if block_mb is not None:
            os.environ["GENDISTILL_CPU_BLOCK_MB"] = block_mb
        try:
            split_accuracy(net, test, batch_size=100)
        finally:
            os.environ.pop("GENDISTILL_CPU_BLOCK_MB", None)
            if saved is not None:
                os.environ["GENDISTILL_CPU_BLOCK_MB"] = saved
    return {"whole_batches": lambda: run("100000"), "row_blocks": lambda: run(None)}


def embed_arms() -> dict[str, Callable[[], None]]:
    """The frozen-feature pass of the set-quality report and the coresets (``features.embed``'s loop) on 10,000
    MNIST-sized images at batch 1000: contiguous against channels_last."""
    net = create_network("convnet", 1, 10, 28, seed=0).eval()
    x = torch.randn(10_000, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def run(fmt: torch.memory_format) -> None:
        net.to(memory_format=fmt)
        with torch.inference_mode():
            for xb in x.split(1000):
                net.embed(xb.contiguous(memory_format=fmt))
    return {"contiguous": lambda: run(torch.contiguous_format), "channels_last": lambda: run(torch.channels_last)}


def ensemble_arms() -> dict[str, Callable[[], None]]:
    from gendistill.evaluation.evaluate import evaluate
    from gendistill.evaluation.protocols import get_protocol
    from gendistill.synset.format import SyntheticSet

    train = _random_split(100, 0, "train")
    test = _random_split(100, 1, "test")
    synset = SyntheticSet(train.images(), train.labels, train.class_names, train.preprocessing,
                          meta={"method": "random"})
    return {mode: (lambda mode=mode: evaluate(synset, test, get_protocol("dsa", epochs=20, runs=2, ensemble=mode),
                                              progress=False))
            for mode in ("sequential", "batched")}


def dsa_batching_arms() -> dict[str, Callable[[], None]]:
    from gendistill.nn.augment import DSA

    dsa = DSA.for_dataset(flip_ok=False)
    g = torch.Generator().manual_seed(0)
    real, syn = torch.randn(2560, 1, 28, 28, generator=g), torch.randn(100, 1, 28, 28, generator=g)

    def per_class() -> None:
        gen = torch.Generator().manual_seed(1)
        for c in range(10):
            draw = dsa.draw(1, 28, gen)
            dsa.apply(real[c * 256:(c + 1) * 256], draw, torch.zeros(256, dtype=torch.long))
            dsa.apply(syn[c * 10:(c + 1) * 10], draw, torch.zeros(10, dtype=torch.long))

    def whole_batch() -> None:
        gen = torch.Generator().manual_seed(1)
        draw = dsa.draw_siamese(10, 28, gen)
        dsa.apply(real, draw, torch.arange(10).repeat_interleave(256))
        dsa.apply(syn, draw, torch.arange(10).repeat_interleave(10))
    return {"per_class": per_class, "whole_batch": whole_batch}


def embed_batching_arms() -> dict[str, Callable[[], None]]:
    from gendistill.nn.blocking import block_rows, forward_in_blocks

    net = create_network("convnet", 1, 10, 28, seed=0).train()  # DM embeds in train mode, weights frozen
    real = torch.randn(2560, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def run(mode: str) -> None:
        with torch.inference_mode():
            if mode == "per_class":
                for xb in real.split(256):
                    net.embed(xb)
            elif mode == "one_forward":
                net.embed(real)
            else:
                forward_in_blocks(net.embed, real, block_rows(net, real))
    return {mode: (lambda mode=mode: run(mode)) for mode in ("per_class", "one_forward", "row_blocks")}


def held_normalised_arms() -> dict[str, Callable[[], None]]:
    train = _random_split(60_000, 0, "train")
    train.images()  # builds the normalised copy (current)
    gen = torch.Generator().manual_seed(0)

    def held() -> None:
        train.images(train.sample_indices(256, gen).reshape(-1))

    def convert() -> None:
        train.preprocessing.apply(train.pixels[train.sample_indices(256, gen).reshape(-1)])
    return {"held_normalised": held, "convert_each_draw": convert}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--more", action="store_true", help="only the second set of ideas (compile, test batch, ensemble)")
    ap.add_argument("--batching", action="store_true",
                    help="only the batching ideas (whole-batch DSA, one forward for all classes, held normalised)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = cpu_info()
    result = {"threads": args.threads, "rounds": args.rounds, "torch": torch.__version__,
              "machine": {"cpu": cpu["model"], "avx512_bf16": "avx512_bf16" in cpu["flags"]}, "ideas": {}}
    if args.batching:
        result["ideas"]["dsa_siamese_dm_batch_s"] = interleaved(dsa_batching_arms(), args.rounds)
        result["ideas"]["embed_2560_s"] = interleaved(embed_batching_arms(), args.rounds)
        result["ideas"]["draw_2560_of_60k_s"] = interleaved(held_normalised_arms(), args.rounds)
    elif args.more:
        arms, compile_s = compile_arms()
        result["ideas"]["train_step_convnet_compile_s"] = {**interleaved(arms, args.rounds),
                                                           "first_compiled_call_s": compile_s}
        result["ideas"]["test_pass_10k_s"] = interleaved(test_pass_arms(), args.rounds)
        result["ideas"]["embed_10k_s"] = interleaved(embed_arms(), args.rounds)
        result["ideas"]["dsa_eval_2nets_20ep_s"] = interleaved(ensemble_arms(), args.rounds)
    else:
        for model in ("convnet", "alexnet"):
            result["ideas"][f"train_step_{model}_batch100_s"] = interleaved(train_step_arms(model), args.rounds)
        result["ideas"]["instance_norm_fwd_bwd_s"] = interleaved(norm_arms(), args.rounds)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
