"""An idea measured and not kept: instance norm (``GroupNorm(C, C)``) with a written-out double backward.

Trajectory matching (MTT, DATM) differentiates through the student's gradients (``create_graph=True``). For
``GroupNorm`` autograd then swaps aten's fused backward kernel for
``infinitely_differentiable_native_group_norm_backward``, a composite of activation-sized products and sums that made
up about a third of MTT's profile (``results/perf/avx512_bf16/profile_mtt.txt``). :class:`InstanceNorm` here keeps
aten's fused forward and first-order backward and writes the differentiable backward out for one group per channel:

    x_hat = (x - mean) * rstd,   dx = rstd * w * (dy - mean(dy) - x_hat * mean(dy * x_hat)),
    dw = sum(dy * x_hat),        db = sum(dy).

This script times MTT's inner loop (ConvNet-3 at width 128 as a flat-parameter student, ``--steps`` unrolled SGD
steps on 100 CIFAR-shaped images, then the backward to the images) with ``nn.GroupNorm`` and with
:class:`InstanceNorm`, arms alternating, and prints each arm's min and median seconds with the loss and image-gradient
norm (equal up to rounding). On machine B it did not pay (``results/perf/ideas/instance_norm_double_backward.txt``),
so the package keeps ``nn.GroupNorm``.

    python scripts/perf/instance_norm_double_backward.py --threads 2 --steps 10 --repeats 2 --rounds 2
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InstanceNorm"]


class _InstanceNormFunction(torch.autograd.Function):
    """Affine instance norm over each (sample, channel): aten's fused kernels, except a differentiable backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        n, c = x.shape[:2]
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, math.prod(x.shape[2:]), c, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, mean, rstd = ctx.saved_tensors
        if not torch.is_grad_enabled():  # first order: aten's fused kernel, as nn.GroupNorm
            n, c = x.shape[:2]
            dx, dw, db = torch.ops.aten.native_group_norm_backward(
                dy, x, mean, rstd, weight, n, c, math.prod(x.shape[2:]), c, list(ctx.needs_input_grad[:3]))
            return dx, dw, db, None
        # create_graph: recompute the statistics from x so that the second derivative sees their dependence on it
        dims = tuple(range(2, x.dim()))
        var, mu = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
        inv_std = torch.rsqrt(var + ctx.eps)
        x_hat = (x - mu) * inv_std
        dy_x_hat = dy * x_hat
        dx = None
        if ctx.needs_input_grad[0]:
            scale = inv_std * weight.view(1, -1, *([1] * len(dims)))
            dx = scale * (dy - dy.mean(dims, keepdim=True) - x_hat * dy_x_hat.mean(dims, keepdim=True))
        return dx, dy_x_hat.sum((0, *dims)), dy.sum((0, *dims)), None


class InstanceNorm(nn.GroupNorm):
    """``nn.GroupNorm(channels, channels)`` whose backward is cheaper to differentiate (module docstring)."""

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(channels, channels, eps=eps, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.affine or x.dim() < 3 or not torch.is_grad_enabled() or torch.compiler.is_compiling()
                or torch._C._are_functorch_transforms_active() or torch.is_autocast_enabled(x.device.type)):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return _InstanceNormFunction.apply(x, self.weight, self.bias, self.eps)


def _student(fast: bool) -> tuple:
    from gendistill.baselines.trajectory.mtt import FlatNetwork
    from gendistill.nn.nets import create_network

    net = create_network("convnet", channels=3, num_classes=10, image_size=32, seed=0)
    if fast:
        for module in list(net.modules()):
            for name, child in list(module.named_children()):
                if type(child) is nn.GroupNorm and child.num_groups == child.num_channels:
                    swapped = InstanceNorm(child.num_channels, child.eps)
                    swapped.load_state_dict(child.state_dict())
                    setattr(module, name, swapped)
    return net, FlatNetwork(net)


def time_inner_loop(fast: bool, steps: int, repeats: int) -> dict:
    """MTT's unrolled student steps and the backward to the images, timed ``repeats`` times after one warm-up."""
    import time

    net, student = _student(fast)
    theta0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(100, 3, 32, 32, generator=gen).requires_grad_()
    y = torch.randint(0, 10, (100,), generator=gen)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        theta = theta0.clone().requires_grad_()
        for _ in range(steps):
            g = torch.autograd.grad(F.cross_entropy(student(theta, x), y), theta, create_graph=True)[0]
            theta = theta - 0.01 * g
        loss = (theta - theta0).pow(2).sum()
        (gx,) = torch.autograd.grad(loss, x)
        times.append(time.perf_counter() - start)
    timed = sorted(times[1:])
    return {"arm": "InstanceNorm" if fast else "nn.GroupNorm", "min_s": timed[0], "median_s": timed[len(timed) // 2],
            "loss": float(loss), "image_grad_norm": float(gx.norm())}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for _ in range(args.rounds):
        for fast in (False, True):
            print(json.dumps(time_inner_loop(fast, args.steps, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
