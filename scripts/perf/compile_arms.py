"""``torch.compile`` (inductor) against eager for ConvNet-3 on MNIST-sized inputs, with and without row blocks.

Arms run interleaved in one process (median of ``--rounds``), after two warm-up calls each (which compile):
- a training step on 100 images (cross-entropy, SGD) in row blocks of 16, whole, and (compiled) in blocks of 50;
- a 10,000-image test pass in batches of 100: eager channels-last in blocks of 16 (the evaluation's default), and
  compiled in blocks of 16 or whole batches, channels-last or contiguous;
- DC/DSA's real-side gradients (``baselines.matching.per_class_gradients``: 10 classes x 256 constant images, one
  gradient per class) with ``$GENDISTILL_COMPILE`` off and on.

One compiled function takes the network as an argument, as ``gendistill.nn.compiling`` does.

    python scripts/perf/compile_arms.py --threads 2 --json results/perf/ideas/compile.json
    python scripts/perf/compile_arms.py --sections real_side --json results/perf/ideas/compile_real_side.json
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from micro_ideas import interleaved

from gendistill.nn.compiling import RECOMPILE_LIMIT
from gendistill.nn.nets import create_network

SECTIONS = ("train", "test", "real_side")


def _median_times(arms: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    for arm in arms.values():  # a first call each (compiles), then micro_ideas' warm-up and interleaved rounds
        arm()
    return interleaved(arms, rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
    compiled = torch.compile(lambda net, x: net(x), dynamic=False)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 1, 28, 28, generator=g), torch.arange(100) % 10
    x_test = torch.randn(10000, 1, 28, 28, generator=g)
    net = create_network("convnet", 1, 10, 28, seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step(forward: Callable[[torch.Tensor], torch.Tensor], rows: int) -> None:
        for s in range(0, 100, rows):
            block = slice(s, min(s + rows, 100))
            (F.cross_entropy(forward(x[block]), y[block]) * ((block.stop - block.start) / 100)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def comp(t: torch.Tensor) -> torch.Tensor:
        return compiled(net, t)

    record: dict = {"threads": args.threads, "rounds": args.rounds, "torch": torch.__version__}
    if "train" in args.sections:
        record["train_step_100_s"] = train = _median_times({
            "eager_blocks16": lambda: step(net, 16), "eager_whole": lambda: step(net, 100),
            "compiled_blocks16": lambda: step(comp, 16), "compiled_whole": lambda: step(comp, 100),
            "compiled_blocks50": lambda: step(comp, 50)}, args.rounds)
        print("train step (s)", {k: round(v, 4) for k, v in train.items()}, flush=True)
    if "real_side" in args.sections:
        record["dc_real_side_10x256_s"] = real = _median_times(_real_side_arms(net, g), args.rounds)
        print("real-side gradients, 10 x 256 (s)", {k: round(v, 3) for k, v in real.items()}, flush=True)
    if "test" in args.sections:
        record["test_pass_10k_s"] = _test_pass(net, comp, x_test, args.rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


def _real_side_arms(net: torch.nn.Module, g: torch.Generator) -> dict[str, Callable[[], None]]:
    """DC's real side: ``per_class_gradients`` on 10 classes x 256 constant images, uncompiled and compiled."""
    from gendistill.baselines.matching import per_class_gradients

    params = {k: v.detach() for k, v in net.named_parameters()}
    x = torch.randn(10, 256, 1, 28, 28, generator=g)
    y = torch.arange(10).repeat_interleave(256).view(10, 256)

    def run(backend: str) -> Callable[[], None]:
        def arm() -> None:
            os.environ["GENDISTILL_COMPILE"] = backend
            try:
                per_class_gradients(net, params, x, y)
            finally:
                os.environ.pop("GENDISTILL_COMPILE", None)
        return arm

    return {"eager": run("0"), "compiled": run("inductor")}


def _test_pass(net: torch.nn.Module, comp: Callable[[torch.Tensor], torch.Tensor], x_test: torch.Tensor,
               rounds: int) -> dict[str, float]:
    net.eval()

    def test(forward: Callable[[torch.Tensor], torch.Tensor], rows: int, fmt: torch.memory_format) -> None:
        net.to(memory_format=fmt)
        with torch.inference_mode():
            xs = x_test.contiguous(memory_format=fmt)
            for s in range(0, 10000, 100):
                batch = xs[s : s + 100]
                torch.cat([forward(batch[i : i + rows]) for i in range(0, 100, rows)])

    cl, cont = torch.channels_last, torch.contiguous_format
    tests = _median_times({"eager_cl_blocks16": lambda: test(net, 16, cl),
                           "compiled_cl_blocks16": lambda: test(comp, 16, cl),
                           "compiled_cl_whole": lambda: test(comp, 100, cl),
                           "compiled_contiguous_whole": lambda: test(comp, 100, cont),
                           "compiled_contiguous_blocks16": lambda: test(comp, 16, cont)}, max(rounds // 2, 1))
    print("test pass 10k (s)", {k: round(v, 3) for k, v in tests.items()}, flush=True)
    return tests


if __name__ == "__main__":
    main()
