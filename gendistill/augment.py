"""Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021) and CutMix (Yun et al., ICCV 2019).

DSA follows reference §1.3: families ``color`` (brightness, saturation, contrast), ``crop`` (integer shift,
zero fill), ``cutout`` (zeroed square), ``flip``, ``scale`` and ``rotate`` (affine_grid + grid_sample,
``align_corners=False``, the modern-torch default the reference code runs under). Mode 'S': each call applies
ONE family, drawn uniformly from the strategy.

Parameters are drawn per *group* and applied per image (``params[group_of_image]``), which covers every
mode of the reference with one code path:

* non-siamese (evaluation, inner loops): every image is its own group;
* siamese for one class: the real and the synthetic batch share one group, so they get identical parameters;
* siamese for all classes at once (batched DM/DC): group = class, so real and synthetic images of a class
  share parameters while classes differ. The family is then shared by the classes of one call (the
  reference draws it per class); this is what makes one batched forward pass possible.

All randomness comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

__all__ = ["DSA", "DSAParams", "AugDraw", "cutmix"]

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclasses.dataclass(frozen=True)
class DSAParams:
    """The reference ``ParamDiffAug`` constants."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


@dataclasses.dataclass
class AugDraw:
    """One draw of DSA parameters: the family and per-group values (replayable on any batch)."""

    family: str
    values: dict[str, torch.Tensor]
    num_groups: int


class DSA:
    """Differentiable Siamese Augmentation.

    Args:
        strategy: families joined by ``_``, e.g. ``color_crop_cutout_flip_scale_rotate``; ``none`` disables.
        params: the ranges (reference defaults).
    """

    def __init__(self, strategy: str = "color_crop_cutout_flip_scale_rotate", params: DSAParams | None = None):
        self.strategy = strategy
        self.families = [] if strategy in ("", "none") else strategy.split("_")
        bad = [f for f in self.families if f not in FAMILIES]
        if bad:
            raise ValueError(f"unknown DSA family {bad[0]!r}; choose from {', '.join(FAMILIES)}")
        self.params = params or DSAParams()

    @classmethod
    def for_dataset(cls, flip_ok: bool, strategy: str = "color_crop_cutout_flip_scale_rotate") -> DSA:
        """The strategy for a dataset: without ``flip`` for digit datasets (MNIST, SVHN)."""
        if not flip_ok:
            strategy = "_".join(f for f in strategy.split("_") if f != "flip")
        return cls(strategy)

    @property
    def enabled(self) -> bool:
        return bool(self.families)

    # ---------------------------------------------------------------------------------------- sampling
    def draw(self, num_groups: int, image_size: int, generator: torch.Generator) -> AugDraw:
        """Draw one family and its parameters for ``num_groups`` groups."""
        if not self.families:
            return AugDraw("none", {}, num_groups)
        family = self.families[int(torch.randint(len(self.families), (1,), generator=generator))]
        p, n, g = self.params, num_groups, generator

        def u() -> torch.Tensor:
            return torch.rand(n, generator=g)

        if family == "color":
            values = {"brightness": u(), "saturation": u(), "contrast": u()}
        elif family == "crop":
            shift = int(image_size * p.ratio_crop_pad + 0.5)
            values = {"dx": torch.randint(-shift, shift + 1, (n,), generator=g),
                      "dy": torch.randint(-shift, shift + 1, (n,), generator=g)}
        elif family == "cutout":
            size = int(image_size * p.ratio_cutout + 0.5)
            hi = image_size + (1 - size % 2)
            values = {"cx": torch.randint(0, hi, (n,), generator=g), "cy": torch.randint(0, hi, (n,), generator=g)}
        elif family == "flip":
            values = {"flip": u() < p.prob_flip}
        elif family == "scale":
            lo = 1.0 / p.ratio_scale
            values = {"sx": u() * (p.ratio_scale - lo) + lo, "sy": u() * (p.ratio_scale - lo) + lo}
        else:  # rotate
            values = {"angle": (u() - 0.5) * 2 * p.ratio_rotate / 180 * math.pi}
        return AugDraw(family, values, num_groups)

    # -------------------------------------------------------------------------------------------- apply
    def apply(self, x: torch.Tensor, draw: AugDraw, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Apply ``draw`` to ``x`` ``[N, C, H, W]``; image i uses the parameters of group ``groups[i]``.

        ``groups=None`` means image i uses group i (requires ``draw.num_groups == N``).
        """
        if draw.family == "none":
            return x
        n = x.shape[0]
        if groups is None:
            if draw.num_groups != n:
                raise ValueError(f"draw has {draw.num_groups} groups for {n} images; pass groups")
            v = draw.values
        else:
            v = {k: t[groups.to(t.device)] for k, t in draw.values.items()}
        v = {k: t.to(x.device) for k, t in v.items()}
        shape = (n, 1, 1, 1)
        if draw.family == "color":
            p = self.params
            x = x + (v["brightness"].to(x.dtype).view(shape) - 0.5) * p.brightness
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (v["saturation"].to(x.dtype).view(shape) * p.saturation) + mean
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            return (x - mean) * (v["contrast"].to(x.dtype).view(shape) + p.contrast) + mean
        if draw.family == "crop":
            h, w = x.shape[2:]
            padded = F.pad(x, (1, 1, 1, 1))
            ys = (torch.arange(h, device=x.device).view(1, h) + v["dy"].view(n, 1) + 1).clamp(0, h + 1)
            xs = (torch.arange(w, device=x.device).view(1, w) + v["dx"].view(n, 1) + 1).clamp(0, w + 1)
            batch = torch.arange(n, device=x.device).view(n, 1, 1)
            return padded.permute(0, 2, 3, 1)[batch, ys.view(n, h, 1), xs.view(n, 1, w)].permute(0, 3, 1, 2)
        if draw.family == "cutout":
            h, w = x.shape[2:]
            size = int(h * self.params.ratio_cutout + 0.5)
            y0 = (v["cy"] - size // 2).view(n, 1, 1)
            x0 = (v["cx"] - size // 2).view(n, 1, 1)
            yy = torch.arange(h, device=x.device).view(1, h, 1)
            xx = torch.arange(w, device=x.device).view(1, 1, w)
            inside = (yy >= y0) & (yy < y0 + size) & (xx >= x0) & (xx < x0 + size)
            return x * (~inside).unsqueeze(1).to(x.dtype)
        if draw.family == "flip":
            return torch.where(v["flip"].view(shape), x.flip(3), x)
        if draw.family == "scale":
            zero = torch.zeros_like(v["sx"], dtype=x.dtype)
            theta = torch.stack([torch.stack([v["sx"].to(x.dtype), zero, zero], 1),
                                 torch.stack([zero, v["sy"].to(x.dtype), zero], 1)], 1)
        else:  # rotate
            a = v["angle"].to(x.dtype)
            zero = torch.zeros_like(a)
            theta = torch.stack([torch.stack([a.cos(), a.sin(), zero], 1),
                                 torch.stack([-a.sin(), a.cos(), zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Non-siamese augmentation: one family per call, independent parameters per image."""
        if not self.families:
            return x
        return self.apply(x, self.draw(x.shape[0], x.shape[-1], generator))


def cutmix(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, beta: float = 1.0, prob: float = 0.5
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al., ICCV 2019) as in IDC's evaluation: with probability ``prob`` paste a box of a
    shuffled batch; returns ``(x, y_a, y_b, lam)`` for ``lam * loss(y_a) + (1 - lam) * loss(y_b)``."""
    if float(torch.rand(1, generator=generator)) >= prob:
        return x, y, y, 1.0
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    import numpy as np

    lam = float(np.random.default_rng(seed).beta(beta, beta))
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    h, w = x.shape[2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(h, (1,), generator=generator))
    cx = int(torch.randint(w, (1,), generator=generator))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, y, y[perm], lam


class DCAugment:
    """DC's non-differentiable evaluation augmentation (reference §1.4; Zhao et al., ICLR 2021 code).

    For every image one operation of ``strategy`` is chosen: ``crop`` (shift by up to ``crop`` px), ``scale``
    (independent x/y factors in [1 - scale, 1 + scale]), ``rotate`` (up to ``rotate`` degrees) or ``noise``
    (Gaussian, std ``noise``). Pixels moved in from outside take the batch's per-channel mean, as in the
    reference. The reference uses MNIST's ``crop_scale_rotate`` with 1000 evaluation epochs (preset
    ``dc_mnist``); rotation here is bilinear where the reference used scipy's spline rotation.
    """

    def __init__(self, strategy: str = "crop_scale_rotate", crop: int = 4, scale: float = 0.2,
                 rotate: float = 45.0, noise: float = 0.001) -> None:
        self.ops = strategy.split("_")
        bad = [o for o in self.ops if o not in ("crop", "scale", "rotate", "noise")]
        if bad:
            raise ValueError(f"unknown DC augmentation {bad[0]!r}; use crop, scale, rotate, noise")
        self.crop, self.scale, self.rotate, self.noise = crop, scale, rotate, noise

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        choice = torch.randint(len(self.ops), (n,), generator=generator).to(x.device)
        centred = x - mean
        out = x.clone()
        one = torch.ones(n)
        zero = torch.zeros(n)
        for k, op in enumerate(self.ops):
            if op == "noise":
                result = x + self.noise * torch.randn(x.shape, generator=generator).to(x)
            else:
                if op == "crop":
                    dx = torch.randint(-self.crop, self.crop + 1, (n,), generator=generator).float()
                    dy = torch.randint(-self.crop, self.crop + 1, (n,), generator=generator).float()
                    rows = [torch.stack([one, zero, -2 * dx / w], 1), torch.stack([zero, one, -2 * dy / h], 1)]
                elif op == "scale":
                    s = 1 + (torch.rand(n, 2, generator=generator) * 2 - 1) * self.scale
                    rows = [torch.stack([1 / s[:, 0], zero, zero], 1), torch.stack([zero, 1 / s[:, 1], zero], 1)]
                else:
                    a = (torch.rand(n, generator=generator) * 2 - 1) * self.rotate / 180 * math.pi
                    rows = [torch.stack([a.cos(), a.sin(), zero], 1), torch.stack([-a.sin(), a.cos(), zero], 1)]
                theta = torch.stack(rows, 1).to(x)
                grid = F.affine_grid(theta, list(x.shape), align_corners=False)
                mode = "nearest" if op == "crop" else "bilinear"
                result = F.grid_sample(centred, grid, mode=mode, align_corners=False) + mean
            out = torch.where((choice == k).view(n, 1, 1, 1), result, out)
        return out
