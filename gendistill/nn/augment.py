"""Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021) and CutMix (Yun et al., ICCV 2019).

DSA follows reference §1.3: families ``color`` (brightness, saturation, contrast), ``crop`` (integer shift,
zero fill), ``cutout`` (zeroed square), ``flip``, ``scale`` and ``rotate`` (affine_grid + grid_sample,
``align_corners=False``, the modern-torch default the reference code runs under). Mode 'S': each call applies
ONE family, drawn uniformly from the strategy.

Parameters are drawn per *group* and applied per image (``params[group_of_image]``), which covers every
mode of the reference with one code path:

* non-siamese (evaluation, inner loops): every image is its own group;
* siamese for one class: the real and the synthetic batch share one group, so they get identical parameters;
* siamese for all classes at once (batched DM/DC/CAFE): group = class, so real and synthetic images of a
  class share parameters while classes differ. :meth:`DSA.draw_siamese` draws the family per group too, as
  the reference (which seeds every class separately) does; :meth:`DSA.apply` applies each family to the rows
  of its groups, so all classes still go through the network in one batched forward pass.

All randomness comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DSA", "FULL_DSA", "DSAParams", "AugDraw", "DrawSequence", "GroupDraw", "IDCAugment", "ImageNetAugment",
           "color_jitter", "cutmix", "lighting", "random_resized_crop_boxes", "resize_images", "resized_crop"]

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")

#: Every DSA family: the reference default strategy (``color_crop_cutout_flip_scale_rotate``).
FULL_DSA = "color_crop_cutout_flip_scale_rotate"


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


@dataclasses.dataclass
class GroupDraw:
    """A siamese draw with one family per group: ``family_of_group[g]`` indexes ``draws`` (one
    :class:`AugDraw` per family drawn, each holding parameters for every group)."""

    family_of_group: torch.Tensor
    draws: dict[str, AugDraw]
    num_groups: int

    @property
    def family(self) -> str:
        return "per-group"


class DSA:
    """Differentiable Siamese Augmentation.

    Args:
        strategy: families joined by ``_``, e.g. ``color_crop_cutout_flip_scale_rotate``; ``none`` disables.
        params: the ranges (reference defaults).
    """

    def __init__(self, strategy: str = FULL_DSA, params: DSAParams | None = None):
        self.strategy = strategy
        self.families = [] if strategy in ("", "none") else strategy.split("_")
        bad = [f for f in self.families if f not in FAMILIES]
        if bad:
            raise ValueError(f"unknown DSA family {bad[0]!r}; choose from {', '.join(FAMILIES)}")
        self.params = params or DSAParams()

    @classmethod
    def for_dataset(cls, flip_ok: bool, strategy: str = FULL_DSA) -> DSA:
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
        return self._draw_family(family, num_groups, image_size, generator)

    def _draw_family(self, family: str, num_groups: int, image_size: int, generator: torch.Generator) -> AugDraw:
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

    def draw_siamese(self, num_groups: int, image_size: int, generator: torch.Generator) -> AugDraw | GroupDraw:
        """Draw a family *per group* and its parameters (the reference's per-class siamese seeds)."""
        if not self.families:
            return AugDraw("none", {}, num_groups)
        index = torch.randint(len(self.families), (num_groups,), generator=generator)
        draws = {}
        for k in torch.unique(index).tolist():
            family = self.families[k]
            draws[family] = self._draw_family(family, num_groups, image_size, generator)
        names = list(draws)
        family_of_group = torch.tensor([names.index(self.families[k]) for k in index.tolist()])
        return GroupDraw(family_of_group, draws, num_groups)

    # -------------------------------------------------------------------------------------------- apply
    def apply(self, x: torch.Tensor, draw: AugDraw | GroupDraw, groups: torch.Tensor | None = None
              ) -> torch.Tensor:
        """Apply ``draw`` to ``x`` ``[N, C, H, W]``; image i uses the parameters of group ``groups[i]``.

        ``groups=None`` means image i uses group i (requires ``draw.num_groups == N``). A :class:`GroupDraw`
        applies each family to the rows whose group drew it (differentiable, one pass per family).
        """
        if isinstance(draw, GroupDraw):
            groups = torch.arange(x.shape[0]) if groups is None else groups.cpu()
            row_family = draw.family_of_group[groups]
            # every row has its group's family, so each row is written exactly once: filled in place rather than
            # copying the whole batch once per family (differentiable: autograd records the in-place copies)
            out = torch.empty_like(x)
            for k, sub_draw in enumerate(draw.draws.values()):
                rows = (row_family == k).nonzero().view(-1)
                if rows.numel() == 0:
                    continue
                rows_dev = rows.to(x.device)
                out.index_copy_(0, rows_dev, self.apply(x.index_select(0, rows_dev), sub_draw, groups[rows]))
            return out
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


@dataclasses.dataclass
class DrawSequence:
    """Draws applied one after another (:class:`IDCAugment`'s composition)."""

    draws: list[AugDraw | GroupDraw]
    num_groups: int

    @property
    def family(self) -> str:
        return "+".join(d.family for d in self.draws) or "none"


class IDCAugment(DSA):
    """IDC's ``DiffAug`` composition (Kim et al., ICML 2022; ``misc/augment.py`` of
    snu-mllab/Efficient-Dataset-Condensation): at every call ``flip`` (if listed), then ``color`` (brightness,
    saturation, contrast), then ONE of the remaining families (``crop``, ``scale``, ``rotate``) drawn uniformly,
    then ``cutout`` (if listed). DSA's mode 'S' (:class:`DSA`) applies one family per call instead.

    Same family semantics and ranges as :class:`DSA`. :meth:`draw` (non-siamese, IDC's ``batch=False``) picks
    the geometric family once per call; :meth:`draw_siamese` (IDC's ``batch=True`` matching augmentation, one
    call per class) picks it per group.
    """

    def __init__(self, strategy: str = FULL_DSA, params: DSAParams | None = None):
        super().__init__(strategy, params)
        self._geometric = DSA("_".join(f for f in self.families if f not in ("flip", "color", "cutout")) or "none",
                              self.params)

    def _compose(self, num_groups: int, image_size: int, generator: torch.Generator, per_group: bool
                 ) -> DrawSequence:
        draws: list[AugDraw | GroupDraw] = []
        for family in ("flip", "color"):
            if family in self.families:
                draws.append(self._draw_family(family, num_groups, image_size, generator))
        if self._geometric.enabled:
            geo = self._geometric.draw_siamese if per_group else self._geometric.draw
            draws.append(geo(num_groups, image_size, generator))
        if "cutout" in self.families:
            draws.append(self._draw_family("cutout", num_groups, image_size, generator))
        return DrawSequence(draws, num_groups)

    def draw(self, num_groups: int, image_size: int, generator: torch.Generator) -> DrawSequence:
        """Parameters for ``num_groups`` groups; one geometric family for all of them."""
        return self._compose(num_groups, image_size, generator, per_group=False)

    def draw_siamese(self, num_groups: int, image_size: int, generator: torch.Generator) -> DrawSequence:
        """Parameters for ``num_groups`` groups; the geometric family drawn per group."""
        return self._compose(num_groups, image_size, generator, per_group=True)

    def apply(self, x: torch.Tensor, draw: AugDraw | GroupDraw | DrawSequence, groups: torch.Tensor | None = None
              ) -> torch.Tensor:
        """Apply every draw of a :class:`DrawSequence` in order (image i uses group ``groups[i]``)."""
        if not isinstance(draw, DrawSequence):
            return super().apply(x, draw, groups)
        for d in draw.draws:
            x = super().apply(x, d, groups)
        return x


def cutmix(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, beta: float = 1.0, prob: float = 0.5
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al., ICCV 2019) as in IDC's evaluation: with probability ``prob`` paste a box of a
    shuffled batch; returns ``(x, y_a, y_b, lam)`` for ``lam * loss(y_a) + (1 - lam) * loss(y_b)``."""
    if float(torch.rand(1, generator=generator)) >= prob:
        return x, y, y, 1.0
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
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
    """DC's non-differentiable evaluation augmentation, drawn as ``utils.augment`` draws it (reference §1.4;
    Zhao et al., ICLR 2021 code).

    For every image one operation of ``strategy`` is chosen uniformly:

    * ``crop``: pad by ``crop`` px with the batch's per-channel mean and cut the image back at offset
      ``permutation(2 * crop)[0]`` per axis, i.e. a shift in ``[-crop, crop - 1]`` ([-4, 3]);
    * ``scale``: nearest resize to ``int(u * H) x int(u' * W)`` with ``u, u'`` uniform in
      ``[1 - scale, 1 + scale]``, centred on a zero canvas, centre crop back to ``H x W`` (zero fill);
    * ``rotate``: ``scipy.ndimage.rotate`` by an integer angle in ``[-rotate, rotate - 1]`` ([-45, 44]),
      cubic spline, ``reshape=True`` then centre crop, filled with the mean of the per-channel batch means;
    * ``noise``: add Gaussian noise of std ``noise``.

    Crop and scale are one gather per batch; rotation calls scipy once per distinct angle in the batch.
    """

    def __init__(self, strategy: str = "crop_scale_rotate", crop: int = 4, scale: float = 0.2,
                 rotate: int = 45, noise: float = 0.001) -> None:
        self.strategy = strategy
        self.ops = strategy.split("_")
        bad = [o for o in self.ops if o not in ("crop", "scale", "rotate", "noise")]
        if bad:
            raise ValueError(f"unknown DC augmentation {bad[0]!r}; use crop, scale, rotate, noise")
        self.crop, self.scale, self.rotate, self.noise = crop, scale, int(rotate), noise

    # ------------------------------------------------------------------------------------------ draws
    def draw_crop(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Shifts ``[n, 2]`` (dy, dx): ``permutation(2 * crop)[0] - crop``, uniform on ``[-crop, crop - 1]``."""
        return torch.randint(0, 2 * self.crop, (n, 2), generator=generator) - self.crop

    def draw_scale(self, n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
        """Resized sizes ``[n, 2]`` (h', w') = ``int(U(1 - scale, 1 + scale) * size)``."""
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2 * self.scale + 1 - self.scale
        return (u * torch.tensor([h, w], dtype=torch.float64)).long()

    def draw_angle(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Integer angles in degrees, uniform on ``[-rotate, rotate - 1]`` (numpy ``randint(-r, r)``)."""
        return torch.randint(-self.rotate, self.rotate, (n,), generator=generator)

    # ------------------------------------------------------------------------------------------ apply
    @staticmethod
    def apply_crop(x: torch.Tensor, shifts: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """``out[y, x] = in[y + dy, x + dx]``, ``fill`` (per channel ``[C]``) outside the image."""
        n, _, h, w = x.shape
        ys = torch.arange(h).view(1, h) + shifts[:, :1]
        xs = torch.arange(w).view(1, w) + shifts[:, 1:]
        return DCAugment._gather(x, ys, xs, fill)

    @staticmethod
    def apply_scale(x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Nearest resize to ``sizes`` (as ``F.interpolate``), centred on a zero canvas, centre crop."""
        n, _, h, w = x.shape

        def source(out_len: int, new: torch.Tensor, old: int) -> torch.Tensor:
            canvas = torch.maximum(torch.maximum(sizes[:, 0], sizes[:, 1]), torch.tensor(max(h, w)))
            offset_new = (canvas - new) // 2
            offset_old = (canvas - old) // 2
            pos = torch.arange(out_len).view(1, -1) + (offset_old - offset_new).view(-1, 1)
            # float32 as F.interpolate's nearest: floorf(dst * (float)in / out)
            src = torch.floor(pos.float() * (old / new.float()).view(-1, 1)).long().clamp(max=old - 1)
            return torch.where((pos >= 0) & (pos < new.view(-1, 1)), src, torch.full_like(src, -1))

        ys, xs = source(h, sizes[:, 0], h), source(w, sizes[:, 1], w)
        return DCAugment._gather(x, ys, xs, torch.zeros(x.shape[1], dtype=x.dtype, device=x.device))

    @staticmethod
    def apply_rotate(x: torch.Tensor, angles: torch.Tensor, cval: float) -> torch.Tensor:
        """scipy's cubic rotation with ``reshape=True``, centre crop back to the input size."""
        from scipy.ndimage import rotate

        h, w = x.shape[-2:]
        arr = x.detach().cpu().numpy()
        out = np.empty_like(arr)
        for angle in torch.unique(angles).tolist():
            rows = (angles == angle).nonzero().view(-1).numpy()
            rot = rotate(arr[rows], angle=angle, axes=(-2, -1), cval=cval)
            r, c = (rot.shape[-2] - h) // 2, (rot.shape[-1] - w) // 2
            out[rows] = rot[..., r : r + h, c : c + w]
        return torch.from_numpy(out).to(x)

    @staticmethod
    def _gather(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """``out[i, :, a, b] = x[i, :, ys[i, a], xs[i, b]]``; indices outside the image take ``fill``."""
        n, c, h, w = x.shape
        ys, xs = ys.to(x.device), xs.to(x.device)
        valid = ((ys >= 0) & (ys < h)).view(n, 1, h, 1) & ((xs >= 0) & (xs < w)).view(n, 1, 1, w)
        flat = (ys.clamp(0, h - 1).view(n, h, 1) * w + xs.clamp(0, w - 1).view(n, 1, w)).view(n, 1, h * w)
        out = x.reshape(n, c, h * w).gather(2, flat.expand(n, c, h * w)).view(n, c, h, w)
        return torch.where(valid, out, fill.to(x).view(1, c, 1, 1))

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        mean = x.mean(dim=(0, 2, 3))
        choice = torch.randint(len(self.ops), (n,), generator=generator)
        out = x.clone()
        for k, op in enumerate(self.ops):
            rows = (choice == k).nonzero().view(-1)
            if rows.numel() == 0:
                continue
            sub = x[rows.to(x.device)]
            if op == "crop":
                res = self.apply_crop(sub, self.draw_crop(len(rows), generator), mean)
            elif op == "scale":
                res = self.apply_scale(sub, self.draw_scale(len(rows), h, w, generator))
            elif op == "rotate":
                res = self.apply_rotate(sub, self.draw_angle(len(rows), generator), float(mean.mean()))
            else:
                res = sub + self.noise * torch.randn(sub.shape, generator=generator).to(sub)
            out[rows.to(x.device)] = res
        return out


# ------------------------------------------------------------------------------ ImageNet-subset training transform
# IDC's ``data.py::transform_imagenet`` (snu-mllab/Efficient-Dataset-Condensation; the same in
# vimar-gu/MinimaxDiffusion): RandomResizedCrop(size, scale=(0.5, 1)), RandomHorizontalFlip, ColorJitter(0.4,
# 0.4, 0.4) and Lighting(0.1) with the AlexNet PCA of ImageNet (``misc/utils.py``), on [0, 1] pixels.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # IDC's ``Grayscale``


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of a square batch to ``size`` x ``size`` - torchvision's ``Resize(size)``
    followed by ``CenterCrop(size)`` on square images (IDC's ImageNet train and test transforms)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def random_resized_crop_boxes(n: int, height: int, width: int, generator: torch.Generator,
                              scale: tuple[float, float] = (0.5, 1.0),
                              ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for ``n`` images at once: ``[n, 4]`` integer boxes
    ``(x0, y0, x1, y1)`` (float tensor, pixel-edge coordinates).

    Each image takes the first of ``attempts`` draws (area fraction ~ U(scale), log aspect ~ U(log ratio),
    rounded side lengths) that fits, at a uniform integer offset; when none fits, torchvision's central-crop
    fallback.
    """
    area = height * width
    target = area * (torch.rand(n, attempts, generator=generator) * (scale[1] - scale[0]) + scale[0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(n, attempts, generator=generator) * (hi - lo) + lo)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)
    found = ok.any(dim=1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), float(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = float(round(height * ratio[1])), float(height)
    else:
        fw, fh = float(width), float(height)
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    u = torch.rand(n, 2, generator=generator)
    y0 = torch.where(found, torch.floor(u[:, 0] * (height - h + 1)), torch.floor((height - h) / 2))
    x0 = torch.where(found, torch.floor(u[:, 1] * (width - w + 1)), torch.floor((width - w) / 2))
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``boxes`` (``[N, 4]`` pixel-edge ``(x0, y0, x1, y1)``, one per image) and resize each to ``size`` x
    ``size`` bilinearly, in one ``torchvision.ops.roi_align`` call (``aligned=True``: pixel centres at
    ``k + 0.5``, as ``align_corners=False``). A box no larger than the output is plain bilinear upsampling;
    larger boxes average ``ceil(box / size)``^2 bilinear samples per output pixel."""
    from torchvision.ops import roi_align

    rois = torch.cat([torch.arange(x.shape[0], dtype=boxes.dtype).unsqueeze(1), boxes], dim=1).to(x)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """IDC's ``ColorJitter(brightness, contrast, saturation = strength)`` on ``[N, 3, H, W]`` pixels in [0, 1],
    per image: each op ``img.lerp(target, a)`` with ``a ~ U(-strength, strength)``; brightness targets 0,
    contrast the mean of the image's grayscale, saturation its grayscale (weights 0.299/0.587/0.114, no
    clamping).

    The reference shuffles the three ops per image; they are linear maps that commute (grayscale of a constant
    image is that constant as the weights sum to 1, so grey(mean) = mean(grey) = mean), so the order changes
    nothing and is not drawn. Returns ``(1-b) [(1-c)(1-s) x + (1-c) s grey(x) + c mean(grey(x))]``.
    """
    if strength <= 0:
        return x
    a = ((torch.rand(x.shape[0], 3, generator=generator) * 2 - 1) * strength).to(x)
    b, c, s = (a[:, k].view(-1, 1, 1, 1) for k in range(3))
    weights = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    grey = (x * weights).sum(dim=1, keepdim=True)
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    return (1 - b) * ((1 - c) * (1 - s) * x + (1 - c) * s * grey + c * mean)


def lighting(x: torch.Tensor, alphastd: float, generator: torch.Generator,
             eigval: tuple[float, ...] = IMAGENET_PCA_EIGVAL,
             eigvec: tuple[tuple[float, ...], ...] = IMAGENET_PCA_EIGVEC) -> torch.Tensor:
    """AlexNet-style PCA lighting noise (IDC's ``Lighting``) on ``[N, 3, H, W]`` pixels: per image
    ``alpha ~ N(0, alphastd)^3`` and ``x + eigvec @ (alpha * eigval)`` added to every pixel."""
    if alphastd <= 0:
        return x
    alpha = torch.randn(x.shape[0], 3, generator=generator) * alphastd
    rgb = (alpha * torch.tensor(eigval)) @ torch.tensor(eigvec).T
    return x + rgb.to(x).view(-1, 3, 1, 1)


class ImageNetAugment:
    """IDC's / Minimax's ImageNet training transform on a batch, vectorised (no loop over images):
    ``RandomResizedCrop(size, scale)``, then :func:`color_jitter` and :func:`lighting` in [0, 1] pixel space
    (the batch is mapped there with ``mean``/``std`` and back). The horizontal flip of the reference runs as the
    DSA ``flip`` family (same distribution: the crop box law is mirror-symmetric and colour ops are spatially
    invariant).

    Args:
        size: output side (0 = no crop; the images are expected already resized to it).
        scale: crop area fraction range.
        jitter: colour-jitter strength (0.4 in the reference; 0 = off).
        alphastd: lighting noise std (0.1 in the reference; 0 = off).
        mean, std: per-channel normalisation of the batch (model space = (pixels - mean) / std).
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.5, 1.0), jitter: float = 0.0,
                 alphastd: float = 0.0, mean: tuple[float, ...] = (0.0, 0.0, 0.0),
                 std: tuple[float, ...] = (1.0, 1.0, 1.0)) -> None:
        self.size, self.scale, self.jitter, self.alphastd = size, tuple(scale), jitter, alphastd
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def colour(self) -> bool:
        return self.jitter > 0 or self.alphastd > 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.size:
            boxes = random_resized_crop_boxes(x.shape[0], x.shape[-2], x.shape[-1], generator, self.scale)
            x = resized_crop(x, boxes, self.size)
        if self.colour:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            px = lighting(color_jitter(x * std + mean, self.jitter, generator), self.alphastd, generator)
            x = (px - mean) / std
        return x
