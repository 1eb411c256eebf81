"""Infinite-width NNGP / NTK kernels in PyTorch (no JAX), kernel ridge regression, and the empirical NTK.

Used by KIP (Nguyen, Chen & Lee, ICLR 2021; Nguyen, Novak, Xiao & Lee, NeurIPS 2021) and its ``krr`` evaluation.
Everything runs in float64 (``conv_kernel`` optionally in float32). NTK parameterisation as neural_tangents'
``stax`` (reference details §5): a layer computes ``z = sigma_w / sqrt(fan_in) * W x + sigma_b * b`` with standard
normal ``W, b``; defaults ``sigma_w^2 = 2``, ``sigma_b^2 = 0.01`` (``W_std = sqrt 2``, ``b_std = 0.1``, the KIP
colab).

* :func:`fc_kernel` - ReLU MLP, closed form (arc-cosine recursions): input ``K = <x, x'> / d``; per hidden layer
  ``S = s_w K + s_b``, ``Theta = S + s_w Theta``, then ReLU ``K = sqrt(q q') J1(c)``, ``Theta = Theta J0(c)``
  with ``c = S / sqrt(q q')``, ``J1(c) = (sin t + (pi - t) cos t) / 2 pi``, ``J0(c) = (pi - t) / 2 pi``,
  ``t = arccos c``; a dense readout closes it.
* :func:`conv_kernel` - the ConvNet of KIP-ConvNet without normalisation layers (``depth`` blocks of conv 3x3
  "same" / ReLU / average-pool 2x2, then a dense readout; ``pre_conv`` adds the leading conv/ReLU of their
  4-layer "ConvNet"). The covariances are kept per pixel pair ``[i, j]`` (Arora et al. 2019, Novak et al. 2019):
  input ``<x_i, x'_j> / C``; conv: ``mean_delta K[i + delta, j + delta]`` (same shift on both indices, zero
  padding, divisor 9); ReLU as above with the per-pixel variances ``q_i, q'_j`` of each image with itself; pooling
  averages over both windows; the readout needs only the diagonal ``mean_i K[i, i]``. Computed banded: conv
  (same shift of both pixels) and ReLU (elementwise) keep the pixel offsets ``d = j - i`` and only a pooling widens
  them (``r_in = 2 r_out + 1``), so each stage keeps ``K[i, i + d]``, ``|d| <= r``, as ``[pairs, H, W, 2r + 1,
  2r + 1]``, where the conv is a 3x3 box filter over ``i`` (ConvNet-3 at 28x28: ``r = 7, 3, 1``, 29% / 25% / 18%
  of the dense pixel-pair tensors). Pairs are processed in chunks bounded by ``memory_mb`` (with gradient
  checkpointing when gradients are needed), in cache-sized tiles. ~3 ms per image pair at 28x28 on one core in
  float64 (the dense recursion: ~100 ms); ``tests/test_kip.py`` checks it against the plain dense recursion.
* :func:`empirical_ntk` - ``J(x1) J(x2)^T`` of a finite network via ``torch.func`` (``jacrev`` + ``vmap``), with
  :func:`fc_network` / :func:`conv_network`, the finite networks in the NTK parameterisation whose kernels converge
  to the two above as the width grows (checked in ``tests/test_kip.py``).
* :func:`krr_predict`, :func:`kip_loss`, :func:`label_solve` - kernel ridge regression with KIP's regulariser
  ``lambda = reg * trace(K_ss) / |S|``.

The ReLU functions have custom gradients: ``dJ1/dc = J0(c)`` exactly, and the (divergent) ``dJ0/dc`` is set to 0
where ``|c| = 1`` - there ``c`` is identically 1 (a pixel of an image paired with itself), so its true derivative
with respect to the images is 0 and the chain rule would otherwise give ``0 * inf``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["KernelSpec", "conv_kernel", "conv_network", "empirical_ntk", "fc_kernel", "fc_network", "kernel",
           "kip_loss", "krr_predict", "krr_weights", "label_solve"]

Get = Literal["ntk", "nngp"]
_TWO_PI = 2 * math.pi
_TILE_BYTES = 3 << 19  # conv kernel: size of one band tensor of a tile of image pairs (cache-sized; measured)


# ------------------------------------------------------------------------------------------ ReLU functions
class _ArcCos(torch.autograd.Function):
    """``(J1(c), J0(c))`` from one ``arccos``; ``dJ1/dc = J0(c)`` exactly, ``dJ0/dc = 1 / (2 pi sqrt(1 - c^2))``
    set to 0 where ``|c| = 1``."""

    @staticmethod
    def forward(ctx: Any, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        j0 = torch.arccos(c).mul_(-1 / _TWO_PI).add_(0.5)
        j1 = torch.addcmul(c.new_ones(()), c, c, value=-1).clamp_min_(0).sqrt_().div_(_TWO_PI).addcmul_(j0, c)
        ctx.save_for_backward(c, j0)
        return j1, j0

    @staticmethod
    def backward(ctx: Any, g1: torch.Tensor, g0: torch.Tensor) -> torch.Tensor:
        c, j0 = ctx.saved_tensors
        grad = g1 * j0
        if g0 is not None:
            gap = (c * c).neg_().add_(1)
            safe = gap > 1e-12
            grad = grad + torch.where(safe, g0 / (_TWO_PI * torch.sqrt(torch.where(safe, gap, 1.0))), 0.0)
        return grad


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _relu(s: torch.Tensor, norm: torch.Tensor, t: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ReLU recursion: covariance ``s`` with ``norm = sqrt(q q')``, tangent kernel ``t`` (None: NNGP only)."""
    c = torch.div(s, norm).clamp_(-1.0, 1.0)
    j1, j0 = _ArcCos.apply(c)
    k = norm * j1 if _needs_grad(s, norm) else j1.mul_(norm)
    return k, (t * j0 if t is not None else None)


def _dense(k: torch.Tensor, t: torch.Tensor | None, w_var: float, b_var: float, ntk: bool
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A dense (or readout) layer: ``S = s_w K + s_b``, ``Theta = S + s_w Theta`` (Theta = S on the inputs)."""
    s = w_var * k + b_var
    if not ntk:
        return s, None
    return s, (s if t is None else s + w_var * t)


# ----------------------------------------------------------------------------------------------- FC kernel
def fc_kernel(x1: torch.Tensor, x2: torch.Tensor | None = None, *, depth: int = 1, w_var: float = 2.0,
              b_var: float = 0.01, get: Get = "ntk") -> torch.Tensor:
    """Infinite-width kernel ``[N1, N2]`` of a ReLU MLP with ``depth`` hidden layers (closed form, float64).

    Args:
        x1: ``[N1, ...]`` inputs (flattened).
        x2: ``[N2, ...]`` inputs; None for ``x1`` itself.
        depth: hidden layers (the KIP colab's FC default is 1).
        w_var: ``sigma_w^2``.
        b_var: ``sigma_b^2``.
        get: ``ntk`` or ``nngp``.
    """
    a = x1.reshape(x1.shape[0], -1).double()
    b = a if x2 is None else x2.reshape(x2.shape[0], -1).double()
    d = a.shape[1]
    k = a @ b.T / d
    qa, qb = (a * a).sum(1) / d, (b * b).sum(1) / d
    ntk = get == "ntk"
    t: torch.Tensor | None = None
    for _ in range(depth):
        k, t = _dense(k, t, w_var, b_var, ntk)
        qa, qb = w_var * qa + b_var, w_var * qb + b_var
        k, t = _relu(k, torch.sqrt(qa[:, None] * qb[None, :]), t)
        qa, qb = qa / 2, qb / 2  # ReLU of a centred Gaussian: E[relu(z)^2] = q / 2
    s, t = _dense(k, t, w_var, b_var, ntk)
    return t if ntk else s


# --------------------------------------------------------------------------------------------- conv kernel
def _conv_ops(depth: int, pre_conv: bool) -> list[str]:
    return (["conv", "relu"] if pre_conv else []) + ["conv", "relu", "pool"] * depth


_Stage = tuple[int, int, int, int]  # (H, W, r_h, r_w): image size and band radii of the covariances at one stage


def _stages(ops: list[str], h: int, w: int) -> list[_Stage]:
    """Geometry of the banded recursion: ``(H, W, r_h, r_w)`` entering each op, and after the last one.

    Only pixel pairs with offsets ``|j - i| <= r`` (per spatial dim) are needed: the readout takes the diagonal
    (``r = 0``), conv (same shift of both pixels) and ReLU (elementwise) keep the offsets, and a 2x2 pool reads the
    offsets ``2 delta + u' - u`` (``r_in = 2 r_out + 1``); a radius never exceeds ``size - 1``.
    """
    sizes = [(h, w)]
    for op in ops:
        if op == "pool":
            h, w = h // 2, w // 2
            if h == 0 or w == 0:
                raise ValueError(f"images of {sizes[0][0]}x{sizes[0][1]} are too small for {ops.count('pool')} "
                                 "2x2 poolings")
        sizes.append((h, w))
    radii = [(0, 0)]
    for op, (hi, wi) in zip(reversed(ops), reversed(sizes[:-1]), strict=True):
        rh, rw = radii[-1]
        if op == "pool":
            rh, rw = min(2 * rh + 1, hi - 1), min(2 * rw + 1, wi - 1)
        radii.append((rh, rw))
    radii.reverse()
    return [(hh, ww, rh, rw) for (hh, ww), (rh, rw) in zip(sizes, radii, strict=True)]


def _windows(x: torch.Tensor, rh: int, rw: int, value: float = 0.0) -> torch.Tensor:
    """``[..., H, W] -> [..., H, W, 2 rh + 1, 2 rw + 1]``: ``out[..., i1, i2, d1, d2] = x[..., i1 + d1 - rh,
    i2 + d2 - rw]`` (``value`` outside the image); a strided view of the padded ``x``."""
    p = F.pad(x, (rw, rw, rh, rh), value=value)
    return p.unfold(-2, 2 * rh + 1, 1).unfold(-2, 2 * rw + 1, 1)


def _band_input(xa: torch.Tensor, xb: torch.Tensor, rh: int, rw: int, self_pairs: bool) -> torch.Tensor:
    """Input covariances ``<xa_i, xb_(i + d)> / C`` as a band ``[A, B, H, W, 2 rh + 1, 2 rw + 1]`` (zero where
    ``i + d`` leaves the image); ``self_pairs``: ``[n, 1, ...]``, each image of ``xa = xb`` with itself."""
    wb = _windows(xb, rh, rw)  # [B, C, H, W, Dh, Dw]
    xa = (xa / xa.shape[1])[:, None, :, :, :, None, None]  # [A, 1, C, H, W, 1, 1]
    wb = wb[:, None] if self_pairs else wb[None]
    k = xa[:, :, 0] * wb[:, :, 0]  # a few channels: broadcast products (an einsum would copy the windows)
    for c in range(1, xa.shape[2]):
        k = k.addcmul_(xa[:, :, c], wb[:, :, c]) if not _needs_grad(k) else k + xa[:, :, c] * wb[:, :, c]
    return k


def _box3(k: torch.Tensor) -> torch.Tensor:
    """Sum over the 3x3 shifts of the first pixel of a band ``[..., H, W, Dh, Dw]`` with zero padding: in band form
    the conv's shift of both pixels by the same ``delta`` moves only the first pixel (the offset is unchanged)."""
    a = k.clone()
    a[..., 1:, :, :, :] += k[..., :-1, :, :, :]
    a[..., :-1, :, :, :] += k[..., 1:, :, :, :]
    b = a.clone()
    b[..., 1:, :, :] += a[..., :-1, :, :]
    b[..., :-1, :, :] += a[..., 1:, :, :]
    return b


def _pool_band(k: torch.Tensor, rh: int, rw: int) -> torch.Tensor:
    """2x2 average pooling (stride 2, floor) of both pixels of a band ``[..., H, W, Dh, Dw]``, to radii ``rh, rw``.

    Output ``(a, delta)`` averages the inputs ``(2 a + u, offset 2 delta + u' - u)`` for ``u, u'`` in ``{0, 1}`` per
    spatial dim (done one dim at a time).
    """
    rh_in, rw_in = (k.shape[-2] - 1) // 2, (k.shape[-1] - 1) // 2
    ph, pw = max(0, 2 * rh + 1 - rh_in), max(0, 2 * rw + 1 - rw_in)
    if ph or pw:  # radius clipped at the image size: the missing offsets are outside the image (zero)
        k = F.pad(k, (pw, pw, ph, ph))
        rh_in, rw_in = rh_in + ph, rw_in + pw
    h2, w2 = k.shape[-4] // 2, k.shape[-3] // 2
    out = None
    for u in (0, 1):
        rows = k[..., u : 2 * h2 : 2, :, :, :]
        for u2 in (0, 1):
            s = u2 - u + rh_in - 2 * rh
            term = rows[..., s : s + 4 * rh + 1 : 2, :]
            out = term.clone() if out is None else out.add_(term)
    k, out = out, None
    for v in (0, 1):
        cols = k[..., v : 2 * w2 : 2, :, :]
        for v2 in (0, 1):
            s = v2 - v + rw_in - 2 * rw
            term = cols[..., s : s + 4 * rw + 1 : 2]
            out = term.clone() if out is None else out.add_(term)
    return out.div_(16)


def _run_ops(k: torch.Tensor, t: torch.Tensor | None, ops: list[str], stages: list[_Stage], w_var: float,
             b_var: float, ntk: bool, q1s: list[torch.Tensor] | None, q2s: list[torch.Tensor] | None, first: bool
             ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
    """Apply ``ops`` to the band ``k`` ``[n1, n2, H, W, Dh, Dw]`` and tangent band ``t`` (``stages[i]`` enters op
    ``i``, ``stages[-1]`` leaves the last; ``first``: ``k`` is the input band, zero outside the image).

    With ``q1s``/``q2s`` None, ``k`` holds images paired with themselves (``n2 == 1``) and the per-pixel variances
    are read off its centre (offset 0; returned, one ``[n, H, W]`` per ReLU); otherwise they are the given ones.
    """
    used: list[torch.Tensor] = []
    r = 0
    for n_op, (op, (h, w, rh, rw), after) in enumerate(zip(ops, stages[:-1], stages[1:], strict=True)):
        if op == "conv":
            if (n_op > 0 or not first) and (rh or rw):  # zero the pairs whose second pixel is outside (padding)
                mask = _windows(k.new_ones(h, w), rh, rw)
                k, t = k * mask, (t * mask if t is not None else None)
            s = _box3(k).mul_(w_var / 9).add_(b_var)
            if ntk:
                t = s if t is None else s + _box3(t).mul_(w_var / 9)
            k = s
        elif op == "relu":
            if q1s is None or q2s is None:
                q = k[:, 0, :, :, rh, rw]  # [n, H, W]
                used.append(q)
                q1, q2 = q[:, None], q[:, None]
            else:
                q1, q2 = q1s[r][:, None], q2s[r][None]
            r += 1
            norm = q1.sqrt()[..., None, None] * _windows(q2.sqrt(), rh, rw, 1.0)
            # offset 0: sqrt(q q') as the dense recursion, so that c = 1 exactly for an image paired with itself
            norm[..., rh, rw] = (q1 * q2).sqrt()
            k, t = _relu(k, norm, t)
        else:
            k, t = _pool_band(k, after[2], after[3]), (_pool_band(t, after[2], after[3]) if t is not None else None)
    return k, t, used


def _tiled(fn: Callable[[slice, slice], tuple[torch.Tensor | None, ...]], rows: slice, cols: slice, pairs: int
           ) -> tuple[torch.Tensor | None, ...]:
    """``fn(rows_i, cols_j)`` over tiles of at most ``pairs`` image pairs of the grid ``rows x cols``; its tensors
    ``[rows_i, cols_j, ...]`` are concatenated back to ``[rows, cols, ...]``."""
    n_b = cols.stop - cols.start
    step_b = min(n_b, pairs)
    step_a = max(1, pairs // step_b)
    grid = [[fn(slice(i, min(i + step_a, rows.stop)), slice(j, min(j + step_b, cols.stop)))
             for j in range(cols.start, cols.stop, step_b)] for i in range(rows.start, rows.stop, step_a)]
    if len(grid) == 1 and len(grid[0]) == 1:
        return grid[0][0]
    return tuple(None if grid[0][0][m] is None else torch.cat([torch.cat([c[m] for c in row], 1) for row in grid])
                 for m in range(len(grid[0][0])))


def _pair_kernels(xa: torch.Tensor, xb: torch.Tensor | None, qa: list[torch.Tensor] | None,
                  qb: list[torch.Tensor] | None, ops: list[str], stages: list[_Stage], w_var: float, b_var: float,
                  ntk: bool, tiles: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
    """Readout NNGP ``[A, B]``, NTK (or None) and the variances used for the pairs of ``xa`` x ``xb`` with the
    per-ReLU variances ``qa``, ``qb``; ``xb`` None: each image of ``xa`` with itself (``[A, 1]``, variances read
    off the centre of the band, returned as ``[A, 1, H, W]``).

    For speed (cache), the full-resolution ops up to the first pooling (the bulk of the work) run on tiles of
    ``tiles[0]`` image pairs, and the remaining ops on tiles of ``tiles[1]`` pairs.
    """
    split = ops.index("pool") + 1 if "pool" in ops else len(ops)
    n_first = ops[:split].count("relu")
    self_pairs = xb is None or qa is None or qb is None
    rh, rw = stages[0][2], stages[0][3]

    def first(ra: slice, rb: slice) -> tuple[torch.Tensor | None, ...]:
        if self_pairs:
            k0, q1, q2 = _band_input(xa[ra], xa[ra], rh, rw, True), None, None
        else:
            k0 = _band_input(xa[ra], xb[rb], rh, rw, False)
            q1, q2 = [q[ra] for q in qa[:n_first]], [q[rb] for q in qb[:n_first]]
        k, t, used = _run_ops(k0, None, ops[:split], stages[: split + 1], w_var, b_var, ntk, q1, q2, True)
        return (k, t, *(u[:, None] for u in used))

    def rest(ra: slice, rb: slice) -> tuple[torch.Tensor | None, ...]:
        k, t, *first_used = _tiled(first, ra, rb, tiles[0])
        q1, q2 = (None, None) if self_pairs else ([q[ra] for q in qa[n_first:]], [q[rb] for q in qb[n_first:]])
        k, t, used = _run_ops(k, t, ops[split:], stages[split:], w_var, b_var, ntk, q1, q2, False)
        kd = k[..., 0, 0].mean(dim=(-2, -1))
        td = t[..., 0, 0].mean(dim=(-2, -1)) if t is not None else None
        s, t_out = _dense(kd, td, w_var, b_var, ntk)
        return (s, t_out, *first_used, *(u[:, None] for u in used))

    s, t, *used = _tiled(rest, slice(0, xa.shape[0]), slice(0, 1 if xb is None else xb.shape[0]), tiles[1])
    return s, t, [u[:, 0] for u in used if u is not None]


def _self_variances(x: torch.Tensor, ops: list[str], stages: list[_Stage], w_var: float, b_var: float, chunk: int,
                    tiles: tuple[int, int]) -> list[torch.Tensor]:
    """Per-pixel variances ``q`` of every image with itself at each ReLU (lists of ``[n, H_l, W_l]``)."""

    def run(xb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_pair_kernels(xb, None, None, None, ops, stages, w_var, b_var, False, tiles)[2])

    parts = []
    for start in range(0, x.shape[0], chunk):
        xb = x[start : start + chunk]
        parts.append(checkpoint(run, xb, use_reentrant=False) if _needs_grad(xb) else run(xb))
    return [torch.cat(p) for p in zip(*parts, strict=True)]


_ALLOCATOR_PRIMED = False


def _prime_allocator() -> None:
    """Allocate and free one 32 MB block, once per process. glibc then raises its mmap/trim thresholds to that size
    (its dynamic rule on freeing a large block), so the recursion's many MB-sized temporaries are recycled from the
    heap instead of being mapped and page-faulted afresh every time (measured ~1.3x faster; harmless elsewhere)."""
    global _ALLOCATOR_PRIMED
    if not _ALLOCATOR_PRIMED:
        torch.empty(31 << 20, dtype=torch.uint8)  # never touched: one mmap and munmap
        _ALLOCATOR_PRIMED = True


def conv_kernel(x1: torch.Tensor, x2: torch.Tensor | None = None, *, depth: int = 3, pre_conv: bool = False,
                w_var: float = 2.0, b_var: float = 0.01, get: Get = "ntk", memory_mb: int = 1024,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Infinite-width kernel ``[N1, N2]`` (float64) of the norm-free ConvNet (``depth`` conv/ReLU/avg-pool blocks).

    Args:
        x1: ``[N1, C, H, W]`` images.
        x2: ``[N2, C, H, W]`` images; None for ``x1`` itself.
        depth: conv/ReLU/pool blocks (3: the ConvNet-3 of KIP-ConvNet and DC).
        pre_conv: a leading conv/ReLU without pooling (KIP's 4-layer "ConvNet").
        w_var: ``sigma_w^2``.
        b_var: ``sigma_b^2``.
        get: ``ntk`` or ``nngp``.
        memory_mb: bound on the pixel-pair tensors of one chunk of image pairs (speed/memory only).
        dtype: precision of the recursion; float32 is ~2x faster, within ~3e-5 relative of float64 (NTK on MNIST,
            worst near the diagonal) - enough for evaluation, not for a gradient check. The result is float64.
    """
    _prime_allocator()
    a = x1.to(dtype)
    b = a if x2 is None else x2.to(dtype)
    ops = _conv_ops(depth, pre_conv)
    stages = _stages(ops, a.shape[-2], a.shape[-1])
    bands = [h * w * (2 * rh + 1) * (2 * rw + 1) * a.element_size() for h, w, rh, rw in stages]
    max_pairs = max(1, (memory_mb << 20) // (max(bands) * 12))  # ~12 live band tensors per pair (with autograd)
    split = ops.index("pool") + 1 if "pool" in ops else len(ops)
    tiles = (max(1, _TILE_BYTES // max(bands[:split])), max(1, _TILE_BYTES // max(bands[split:])))
    qa = _self_variances(a, ops, stages, w_var, b_var, max_pairs, tiles)
    qb = qa if x2 is None else _self_variances(b, ops, stages, w_var, b_var, max_pairs, tiles)
    ntk = get == "ntk"
    n_relu = ops.count("relu")

    def block(xa: torch.Tensor, xb: torch.Tensor, *qs: torch.Tensor) -> torch.Tensor:
        s, t, _ = _pair_kernels(xa, xb, list(qs[:n_relu]), list(qs[n_relu:]), ops, stages, w_var, b_var, ntk,
                                tiles)
        return t if ntk and t is not None else s

    rows_a = min(a.shape[0], max_pairs)
    rows_b = max(1, min(b.shape[0], max_pairs // rows_a))
    out_rows = []
    for i in range(0, a.shape[0], rows_a):
        cols = []
        for j in range(0, b.shape[0], rows_b):
            args = (a[i : i + rows_a], b[j : j + rows_b], *(q[i : i + rows_a] for q in qa),
                    *(q[j : j + rows_b] for q in qb))
            cols.append(checkpoint(block, *args, use_reentrant=False) if _needs_grad(*args) else block(*args))
        out_rows.append(torch.cat(cols, dim=1))
    return torch.cat(out_rows, dim=0).double()


# ----------------------------------------------------------------------------------------------- spec
@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """Which infinite-width kernel (recorded with KIP sets, used by the ``krr`` evaluation).

    Attributes:
        arch: ``fc`` (ReLU MLP) or ``conv`` (norm-free ConvNet).
        depth: hidden layers (fc) or conv/ReLU/pool blocks (conv); 0 = the default (fc 1, conv 3).
        pre_conv: conv only: a leading conv/ReLU without pooling (KIP's 4-layer "ConvNet").
        w_var: ``sigma_w^2``.
        b_var: ``sigma_b^2``.
        get: ``ntk`` or ``nngp``.
    """

    arch: Literal["fc", "conv"] = "fc"
    depth: int = 0
    pre_conv: bool = False
    w_var: float = 2.0
    b_var: float = 0.01
    get: Get = "ntk"

    @property
    def layers(self) -> int:
        return self.depth or (1 if self.arch == "fc" else 3)

    def describe(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "depth": self.layers}


def kernel(spec: KernelSpec, memory_mb: int = 1024) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """``k(x1, x2=None) -> [N1, N2]`` float64 for ``spec``."""
    if spec.arch == "fc":
        return lambda x1, x2=None: fc_kernel(x1, x2, depth=spec.layers, w_var=spec.w_var, b_var=spec.b_var,
                                             get=spec.get)
    if spec.arch == "conv":
        return lambda x1, x2=None: conv_kernel(x1, x2, depth=spec.layers, pre_conv=spec.pre_conv, w_var=spec.w_var,
                                               b_var=spec.b_var, get=spec.get, memory_mb=memory_mb)
    raise ValueError(f"unknown kernel architecture {spec.arch!r}; use fc or conv")


# ---------------------------------------------------------------------------------------- kernel regression
def _regularised(k_ss: torch.Tensor, reg: float) -> torch.Tensor:
    n = k_ss.shape[0]
    lam = abs(reg) * torch.trace(k_ss) / n
    return k_ss + lam * torch.eye(n, dtype=k_ss.dtype, device=k_ss.device)


def krr_weights(k_ss: torch.Tensor, y_s: torch.Tensor, reg: float) -> torch.Tensor:
    """``(K_ss + lambda I)^-1 y_s`` with ``lambda = reg * trace(K_ss) / |S|`` (float64)."""
    return torch.linalg.solve(_regularised(k_ss.double(), reg), y_s.double())


def krr_predict(k_ts: torch.Tensor, k_ss: torch.Tensor, y_s: torch.Tensor, reg: float) -> torch.Tensor:
    """Kernel ridge regression predictions ``K_ts (K_ss + lambda I)^-1 y_s``."""
    return k_ts.double() @ krr_weights(k_ss, y_s, reg)


def kip_loss(k_ts: torch.Tensor, k_ss: torch.Tensor, y_s: torch.Tensor, y_t: torch.Tensor, reg: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """KIP's loss ``1/2 mean((y_t - K_ts (K_ss + lambda I)^-1 y_s)^2)`` (the colab's mean-squared form of
    ``1/2 ||.||^2``) and the target accuracy (argmax agreement)."""
    pred = krr_predict(k_ts, k_ss, y_s, reg)
    y_t = y_t.double()
    loss = 0.5 * ((pred - y_t) ** 2).mean()
    acc = (pred.argmax(1) == y_t.argmax(1)).double().mean()
    return loss, acc


def label_solve(k_ts: torch.Tensor, k_ss: torch.Tensor, y_t: torch.Tensor, reg: float) -> torch.Tensor:
    """Label Solve (KIP paper): ``y_s* = (K_ts (K_ss + lambda I)^-1)^+ y_t``, the support labels minimising the
    KRR loss on the targets (minimum-norm least squares)."""
    a = k_ts.double() @ torch.linalg.inv(_regularised(k_ss.double(), reg))
    return torch.linalg.pinv(a) @ y_t.double()


# ------------------------------------------------------------------------------------ finite networks, eNTK
def fc_network(in_dim: int, width: int, depth: int = 1, *, w_var: float = 2.0, b_var: float = 0.01,
               generator: torch.Generator | None = None
               ) -> tuple[Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor], dict[str, torch.Tensor]]:
    """A finite ReLU MLP with one output in the NTK parameterisation: ``(f(params, x) -> scalar, params)``.

    ``f`` takes one input (any shape, flattened); its kernel tends to :func:`fc_kernel` as ``width`` grows.
    """
    dims = [in_dim] + [width] * depth + [1]
    params = {}
    for i in range(depth + 1):
        params[f"w{i}"] = torch.randn(dims[i + 1], dims[i], generator=generator, dtype=torch.float64)
        params[f"b{i}"] = torch.randn(dims[i + 1], generator=generator, dtype=torch.float64)
    sw, sb = math.sqrt(w_var), math.sqrt(b_var)

    def f(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1)
        for i in range(depth + 1):
            h = sw / math.sqrt(h.shape[0]) * (p[f"w{i}"] @ h) + sb * p[f"b{i}"]
            if i < depth:
                h = torch.relu(h)
        return h[0]

    return f, params


def conv_network(channels: int, width: int, depth: int = 3, image_size: int = 8, *, pre_conv: bool = False,
                 w_var: float = 2.0, b_var: float = 0.01, generator: torch.Generator | None = None
                 ) -> tuple[Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor], dict[str, torch.Tensor]]:
    """A finite norm-free ConvNet (conv 3x3 same / ReLU / avg-pool 2x2 blocks, one dense output) in the NTK
    parameterisation: ``(f(params, x [C, H, W]) -> scalar, params)``; its kernel tends to :func:`conv_kernel`."""
    ops = _conv_ops(depth, pre_conv)
    params: dict[str, torch.Tensor] = {}
    c_in, size, n_conv = channels, image_size, 0
    for op in ops:
        if op == "conv":
            params[f"w{n_conv}"] = torch.randn(width, c_in, 3, 3, generator=generator, dtype=torch.float64)
            params[f"b{n_conv}"] = torch.randn(width, generator=generator, dtype=torch.float64)
            c_in, n_conv = width, n_conv + 1
        elif op == "pool":
            size //= 2
    params["w_out"] = torch.randn(1, c_in * size * size, generator=generator, dtype=torch.float64)
    params["b_out"] = torch.randn(1, generator=generator, dtype=torch.float64)
    sw, sb = math.sqrt(w_var), math.sqrt(b_var)

    def f(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0)
        i = 0
        for op in ops:
            if op == "conv":
                w = p[f"w{i}"]
                h = F.conv2d(h, w, padding=1) * (sw / math.sqrt(w.shape[1] * 9)) + sb * p[f"b{i}"].view(1, -1, 1, 1)
                i += 1
            elif op == "relu":
                h = torch.relu(h)
            else:
                h = F.avg_pool2d(h, 2)
        h = h.reshape(-1)
        return (sw / math.sqrt(h.shape[0]) * (p["w_out"] @ h) + sb * p["b_out"])[0]

    return f, params


def empirical_ntk(f: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor], params: dict[str, torch.Tensor],
                  x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_p df(x1)/dp df(x2)/dp`` ``[N1, N2]`` of a scalar network ``f(params, x)`` (``torch.func``)."""
    from torch.func import jacrev, vmap

    jac = vmap(jacrev(f), in_dims=(None, 0))
    j1 = jac(params, x1)
    j2 = j1 if x2 is None else jac(params, x2)
    return sum(j1[k].reshape(x1.shape[0], -1) @ j2[k].reshape(j2[k].shape[0], -1).T for k in params)
