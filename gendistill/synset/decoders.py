"""Synthetic-set decoders: parameterisations whose stored images expand into the images a network trains on.

A set whose metadata holds ``meta["decoder"] = {"name": <registered name>, ...}`` is decoded by
:meth:`gendistill.synset.SyntheticSet.materialize` (and so by every evaluation protocol) before training; the
stored images are what counts as the set's size (IPC). A set without a decoder trains on its stored images.

``multiformation`` - IDC's uniform multi-formation (Kim et al., ICML 2022, ``condense.py`` ``decode_zoom``):
each stored image is cut into ``factor x factor`` crops, each crop upsampled bilinearly to full size, labels
repeated. A size that ``factor`` does not divide is padded on the bottom/right to the next multiple with pixel
value 0.5 (grey). IDC decodes in [0, 1] pixel space and normalises afterwards; here images live in the
normalised model space, so the pad value is the normalised grey ``(0.5 - mean) / std`` per channel. Cropping,
padding and bilinear resizing commute with the per-channel affine normalisation (bilinear weights sum to 1),
so decoding in the model space gives exactly the normalised decoded pixels. ZCA-whitened sets are refused
(whitening mixes pixels, so the equivalence fails; IDC never uses ZCA).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from gendistill.data.preprocessing import Preprocessing
from gendistill.utils.errors import GendistillError

__all__ = ["DECODERS", "decode", "multiformation", "multiformation_factor", "normalised_grey", "register_decoder"]

# name -> fn(images, labels, spec, preprocessing) -> (images, labels)
DECODERS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {}


def register_decoder(name: str) -> Callable:
    """Register ``fn(images, labels, spec: dict, preprocessing) -> (images, labels)`` under ``name``."""

    def wrap(fn: Callable) -> Callable:
        DECODERS[name] = fn
        return fn

    return wrap


def decode(images: torch.Tensor, labels: torch.Tensor, spec: dict[str, Any] | None,
           preprocessing: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images and labels of stored ``images`` under the decoder ``spec`` (None: unchanged)."""
    if not spec:
        return images, labels
    name = spec.get("name")
    if name not in DECODERS:
        raise GendistillError(f"the set needs decoder {name!r}, which is not registered "
                              f"(known: {', '.join(sorted(DECODERS)) or 'none'})")
    return DECODERS[name](images, labels, spec, preprocessing)


def normalised_grey(preprocessing: Preprocessing, device: torch.device | str = "cpu") -> torch.Tensor:
    """Pixel value 0.5 in the model space, per channel ``[C]``: ``(0.5 - mean) / std``."""
    if preprocessing.zca is not None:
        raise GendistillError("multi-formation needs per-channel normalisation; ZCA-whitened sets are not supported")
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=device)
    std = torch.tensor(preprocessing.std, dtype=torch.float32, device=device)
    return (0.5 - mean) / std


def multiformation(images: torch.Tensor, factor: int, pad_value: torch.Tensor) -> torch.Tensor:
    """IDC's ``decode_zoom``: ``[N, C, H, H]`` -> ``[factor**2 * N, C, H, H]`` (differentiable).

    Crop-major order as the reference: rows ``k*N .. (k+1)*N`` hold crop ``k = i * factor + j`` (row i, column
    j of the grid) of every image. ``pad_value`` ``[C]`` fills the bottom/right padding when ``factor`` does
    not divide ``H``.
    """
    n, c, h, w = images.shape
    if h != w:
        raise GendistillError(f"multi-formation needs square images, got {h}x{w}")
    if factor <= 1:
        return images
    remained = h % factor
    if remained:
        v = pad_value.to(images).view(1, c, 1, 1)
        images = F.pad(images - v, (0, factor - remained, 0, factor - remained)) + v
    s = math.ceil(h / factor)
    crops = images.unfold(2, s, s).unfold(3, s, s)  # [N, C, f, f, s, s]
    crops = crops.permute(2, 3, 0, 1, 4, 5).reshape(factor * factor * n, c, s, s)
    return F.interpolate(crops, size=(h, w), mode="bilinear", align_corners=False)


@register_decoder("multiformation")
def _decode_multiformation(images: torch.Tensor, labels: torch.Tensor, spec: dict[str, Any],
                           preprocessing: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    factor = int(spec.get("factor", 1))
    out = multiformation(images, factor, normalised_grey(preprocessing, images.device))
    return out, labels.repeat(factor * factor, *([1] * (labels.dim() - 1)))


def multiformation_factor(meta: dict[str, Any]) -> int:
    """The multi-formation factor recorded in a set's metadata (1 when it has none)."""
    spec = meta.get("decoder") or {}
    return int(spec.get("factor", 1)) if spec.get("name") == "multiformation" else 1
