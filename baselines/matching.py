"""Matching losses shared by the baselines: DC's layer-wise gradient distance and per-class gradients.

References: Zhao, Mopuri & Bilen, Dataset Condensation with Gradient Matching, ICLR 2021 (``distance_wb``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from gendistill.nn.blocking import block_rows, blocked_mean_grads
from gendistill.nn.compiling import network_forward

__all__ = ["gradient_distance", "per_class_gradients"]


def gradient_distance(g_syn: dict[str, torch.Tensor], g_real: dict[str, torch.Tensor], metric: str = "ours",
                      batch_dims: int = 0) -> torch.Tensor:
    """Distance between two gradient dicts (summed over parameters and over ``batch_dims`` leading dims).

    ``ours`` (DC): per parameter, flatten to (output nodes, rest) - conv weights (out, in*k*k), linear (out, in)
    - and sum ``1 - cos`` over output nodes; 1-D parameters (biases, norm affine) contribute 0.
    ``mse``: squared L2 of the concatenated gradients. ``cos``: ``1 - cos`` of the concatenated gradients.
    """
    if metric == "ours":
        total = 0.0
        for name, gs in g_syn.items():
            shape = gs.shape[batch_dims:]
            if len(shape) <= 1:
                continue
            gs = gs.reshape(*gs.shape[:batch_dims], shape[0], -1)
            gr = g_real[name].reshape(gs.shape)
            cos = (gs * gr).sum(-1) / (gs.norm(dim=-1) * gr.norm(dim=-1) + 1e-6)
            total = total + (1 - cos).sum()
        return torch.as_tensor(total)
    flat_s = torch.cat([g.reshape(*g.shape[:batch_dims], -1) for g in g_syn.values()], -1)
    flat_r = torch.cat([g_real[k].reshape(*g.shape[:batch_dims], -1) for k, g in g_syn.items()], -1)
    if metric == "mse":
        return ((flat_s - flat_r) ** 2).sum()
    if metric == "cos":
        cos = (flat_s * flat_r).sum(-1) / (flat_s.norm(dim=-1) * flat_r.norm(dim=-1) + 1e-6)
        return (1 - cos).sum()
    raise ValueError(f"unknown matching metric {metric!r}; use ours, mse or cos")


def per_class_gradients(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                        loss_fn: Callable = F.cross_entropy, mode: str = "loop") -> dict[str, torch.Tensor]:
    """Gradients of the mean loss of each class w.r.t. ``params``.

    Args:
        net: the network. Gradients are taken w.r.t. ``params``; for constant ``x`` (the real side) through the
            network's own parameters when ``params`` are detached views of them (the same values), so that its
            forward can be the compiled one under ``$GENDISTILL_COMPILE``.
        params: parameter dict (detached).
        x: ``[C, n, ...]`` images grouped by class.
        y: ``[C, n]`` labels.
        loss_fn: loss of (logits, labels).
        mode: ``loop`` (one autograd call per class) or ``vmap`` (one ``vmap(grad)`` call for all classes).
            Measured on 2 CPU cores (scripts/bench_baselines.py): ``vmap`` is ~3x slower than ``loop`` there,
            because per-class weight gradients do not get cheaper by batching on a CPU.

    Returns:
        dict of ``[C, *param.shape]`` gradients. Differentiable w.r.t. ``x`` when ``x`` requires grad.
    """
    if mode == "vmap":

        def class_loss(p, xc, yc):
            return loss_fn(functional_call(net, p, (xc,)), yc)

        return vmap(grad(class_loss), in_dims=(None, 0, 0))(params, x, y)
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    inputs = list(leaves.values())

    def forward(xb: torch.Tensor) -> torch.Tensor:
        return functional_call(net, leaves, (xb,))

    # real side (constant images, cache-blocked on CPU): through the network itself when ``params`` are its own,
    # so that its forward is the compiled one when $GENDISTILL_COMPILE asks
    own = None if x.requires_grad else _own_parameters(net, params)
    real_forward, real_inputs = (network_forward(net), own) if own is not None else (forward, inputs)
    per_class = []
    for c in range(x.shape[0]):
        if x.requires_grad:  # synthetic side: keep the graph for matching
            per_class.append(torch.autograd.grad(loss_fn(forward(x[c]), y[c]), inputs, create_graph=True))
        else:
            per_class.append(blocked_mean_grads(loss_fn, real_forward, x[c], real_inputs, y[c],
                                                rows=block_rows(net, x[c])))
    return {k: torch.stack([g[i] for g in per_class]) for i, k in enumerate(leaves)}


def _own_parameters(net: nn.Module, params: dict[str, torch.Tensor]) -> list[torch.Tensor] | None:
    """The network's parameters in ``params``' order when ``params`` are views of them (same names, storage and
    layout, as DC/DSA pass ``{k: v.detach()}``), else None. Gradients w.r.t. them equal those w.r.t. ``params``,
    and the network's own forward can then be the compiled one (:func:`gendistill.nn.compiling.network_forward`)."""
    own = dict(net.named_parameters())
    if own.keys() != params.keys():
        return None
    for k, v in params.items():
        p = own[k]
        if not p.requires_grad or v.data_ptr() != p.data_ptr() or v.shape != p.shape or v.stride() != p.stride() \
                or v.dtype != p.dtype:
            return None
    return [own[k] for k in params]
