"""Cache blocking for CPU: pass a batch through a network in row blocks whose activations stay in cache.

On a CPU the convolutions of a ConvNet run near the matmul peak, but the memory-bound operations around them
(instance norm, ReLU, pooling and their backward passes) slow to DRAM speed once a batch's activations no
longer fit in the last-level cache. Splitting the batch into blocks of rows keeps them in cache: measured on
the 2-core development machine (32 MiB L3), ConvNet-3 on MNIST runs a 2560-image frozen forward 1.8-2x
faster in blocks of 16 than in blocks of 128 or whole, and a 256-image training step 1.7x faster in blocks
of 16-32 with gradients accumulated over the blocks. ``scripts/bench_baselines.py`` measures the effect on
each method's iteration.

Blocking changes nothing but the summation order, provided each row's output depends on that row alone:
networks normalising with batch statistics (batch norm in training mode) are never blocked. On a GPU whole
batches are faster, so blocking is off there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = ["block_rows", "blocked_mean_backward", "blocked_mean_grads", "forward_in_blocks", "row_blocks",
           "uses_batch_statistics"]

#: bytes of one block's first-layer activation (about a quarter of the 32 MiB L3 measured best); the
#: ``GENDISTILL_CPU_BLOCK_MB`` environment variable overrides it for machines with other caches.
BLOCK_BYTES = 8 * 2**20


def uses_batch_statistics(net: nn.Module) -> bool:
    """Whether a row's output depends on the other rows of its batch (batch norm in training mode)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules())


def block_rows(net: nn.Module, x: torch.Tensor) -> int | None:
    """Rows per block for passing ``x`` through ``net``, or ``None`` to pass the whole batch at once.

    ``None`` on GPUs, for networks without convolutions, and for networks using batch statistics.
    """
    if x.device.type != "cpu" or x.dim() != 4 or uses_batch_statistics(net):
        return None
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        return None
    budget = float(os.environ.get("GENDISTILL_CPU_BLOCK_MB", BLOCK_BYTES / 2**20)) * 2**20
    per_row = conv.out_channels * x.shape[-2] * x.shape[-1] * x.element_size()
    rows = max(1, int(budget // per_row))
    return None if rows >= x.shape[0] else rows


def row_blocks(n: int, rows: int | None) -> Iterator[slice]:
    """Slices covering ``range(n)`` in blocks of ``rows`` (one slice when ``rows`` is None)."""
    step = rows or max(n, 1)
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def forward_in_blocks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows: int | None
                      ) -> torch.Tensor:
    """``fn(x)`` computed block by block and concatenated (``fn`` must act row-wise, e.g. ``net.embed``)."""
    if rows is None:
        return fn(x)
    return torch.cat([fn(x[s]) for s in row_blocks(x.shape[0], rows)])


def _weighted_block_losses(loss_fn: Callable[..., torch.Tensor], forward: Callable[[torch.Tensor], torch.Tensor],
                           x: torch.Tensor, row_args: tuple[torch.Tensor, ...], rows: int | None
                           ) -> Iterator[torch.Tensor]:
    """Each block's row-mean loss weighted by its share of the rows (the weighted losses sum to the batch's)."""
    n = x.shape[0]
    for s in row_blocks(n, rows):
        loss = loss_fn(forward(x[s]), *(a[s] for a in row_args))
        yield loss if rows is None else loss * ((s.stop - s.start) / n)


def blocked_mean_backward(loss_fn: Callable[..., torch.Tensor], forward: Callable[[torch.Tensor], torch.Tensor],
                          x: torch.Tensor, *row_args: torch.Tensor, rows: int | None) -> torch.Tensor:
    """Backpropagate the row-mean loss ``loss_fn(forward(x), *row_args)`` block by block.

    The accumulated gradients equal those of one backward pass over the whole batch. Returns the loss, detached.
    """
    total = torch.zeros((), device=x.device)
    for loss in _weighted_block_losses(loss_fn, forward, x, row_args, rows):
        loss.backward()
        total += loss.detach()
    return total


def blocked_mean_grads(loss_fn: Callable[..., torch.Tensor], forward: Callable[[torch.Tensor], torch.Tensor],
                       x: torch.Tensor, inputs: list[torch.Tensor], *row_args: torch.Tensor, rows: int | None
                       ) -> list[torch.Tensor]:
    """``torch.autograd.grad`` of the row-mean loss ``loss_fn(forward(x), *row_args)`` w.r.t. ``inputs``.

    Computed block by block, without a graph through the result (for constant ``x``, e.g. real images).
    """
    grads: list[torch.Tensor] | None = None
    for loss in _weighted_block_losses(loss_fn, forward, x, row_args, rows):
        block = torch.autograd.grad(loss, inputs)
        grads = list(block) if grads is None else [g.add_(b) for g, b in zip(grads, block, strict=True)]
    assert grads is not None, "empty batch"
    return grads
