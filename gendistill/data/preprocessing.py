"""The space images live in: per-channel normalisation, optionally followed by ZCA whitening.

Two ZCA variants exist in the literature (reference §1.7) and both are here:

* ``"kornia"`` (MTT, DATM, DD-Ranking): images in [0, 1] without mean/std normalisation; feature mean mu,
  covariance S = (X - mu)^T (X - mu) / (N - 1) = U diag(s) U^T, W = U diag((s + eps)^-1/2) U^T, x -> (x - mu) W.
  Invertible, so synthetic sets can be shown as pictures.
* ``"kip"`` (KIP, FRePo, "regularised ZCA"): per-image centring and L2 normalisation, S = X^T X / N,
  lambda = eps * trace(S) / d, W = U diag((s + lambda)^-1/2) U^T. Per-image scale is lost, so pictures are
  min-max rescaled.

A :class:`Preprocessing` is stored with every dataset split and every synthetic set; evaluation refuses to
mix two that differ (the most frequent user failure: ZCA images tested against an un-whitened test set).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch

from gendistill.utils.errors import SynsetFormatError

__all__ = ["ZCA", "Preprocessing", "fit_zca"]


@dataclasses.dataclass
class ZCA:
    """A fitted ZCA transform on flattened images (d = C*H*W)."""

    variant: str
    eps: float
    mean: torch.Tensor  # [d] (zeros for the kip variant)
    matrix: torch.Tensor  # [d, d]
    inverse: torch.Tensor  # [d, d]

    @property
    def fingerprint(self) -> str:
        """A short hash identifying the fitted transform (compared at evaluation time)."""
        h = hashlib.sha256()
        h.update(self.variant.encode())
        h.update(self.matrix.to(torch.float32).contiguous().numpy().tobytes()[: 1 << 20])
        h.update(self.mean.to(torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten a batch ``[N, C, H, W]`` (already normalised to the ZCA's input space)."""
        flat = x.reshape(x.shape[0], -1)
        if self.variant == "kip":
            flat = flat - flat.mean(dim=1, keepdim=True)
            flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            flat = flat - self.mean.to(flat)
        return (flat @ self.matrix.to(flat)).reshape(x.shape)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the whitening (exact for ``kornia``; up to per-image shift and scale for ``kip``)."""
        flat = x.reshape(x.shape[0], -1) @ self.inverse.to(x)
        if self.variant != "kip":
            flat = flat + self.mean.to(flat)
        return flat.reshape(x.shape)


def fit_zca(images: torch.Tensor, variant: str = "kornia", eps: float = 0.1) -> ZCA:
    """Fit ZCA on a training split ``[N, C, H, W]`` (float64 eigendecomposition for stability).

    Args:
        images: the whole training split, in the space the ZCA is applied to.
        variant: ``"kornia"`` or ``"kip"`` (see the module docstring).
        eps: kornia's absolute eigenvalue floor, or KIP's relative regulariser strength.
    """
    if variant not in ("kornia", "kip"):
        raise ValueError(f"unknown ZCA variant {variant!r}; use 'kornia' or 'kip'")
    x = images.reshape(images.shape[0], -1).to(torch.float64)
    d = x.shape[1]
    if variant == "kip":
        x = x - x.mean(dim=1, keepdim=True)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        mean = torch.zeros(d, dtype=torch.float64)
        cov = x.T @ x / x.shape[0]
        reg = eps * torch.trace(cov) / d
    else:
        mean = x.mean(dim=0)
        xc = x - mean
        cov = xc.T @ xc / max(x.shape[0] - 1, 1)
        reg = torch.tensor(eps, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(0) + reg
    matrix = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    inverse = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    return ZCA(variant, float(eps), mean.float(), matrix.float(), inverse.float())


@dataclasses.dataclass
class Preprocessing:
    """Maps pixels in [0, 1] to the model space and back.

    Attributes:
        mean: per-channel mean subtracted after scaling to [0, 1] (zeros for the kornia ZCA convention).
        std: per-channel standard deviation divided by.
        zca: optional whitening applied after normalisation.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    zca: ZCA | None = None

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, len(self.mean), 1, 1)
        return (
            torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape),
            torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape),
        )

    def apply(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` uint8 or [0, 1] float pixels -> model space (float32 for uint8; float inputs keep their
        precision, so a float64 gradient check stays float64)."""
        x = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else (
            pixels if pixels.is_floating_point() else pixels.float())
        mean, std = self._stats(x)
        x = (x - mean) / std
        return self.zca.apply(x) if self.zca is not None else x

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> [0, 1] pixels (clamped; kip-ZCA images are min-max rescaled per image)."""
        x = x.detach().float()
        if self.zca is not None:
            x = self.zca.invert(x)
            if self.zca.variant == "kip":
                flat = x.reshape(x.shape[0], -1)
                lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
                return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(x.shape)
        mean, std = self._stats(x)
        return (x * std + mean).clamp(0, 1)

    def describe(self) -> dict[str, Any]:
        """JSON-able description (without the ZCA matrices)."""
        out: dict[str, Any] = {"normalize": {"mean": list(self.mean), "std": list(self.std)}, "zca": None}
        if self.zca is not None:
            out["zca"] = {"variant": self.zca.variant, "eps": self.zca.eps, "fingerprint": self.zca.fingerprint}
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """The ZCA tensors to store next to a synthetic set (empty without ZCA)."""
        if self.zca is None:
            return {}
        return {"zca_mean": self.zca.mean, "zca_matrix": self.zca.matrix, "zca_inverse": self.zca.inverse}

    @classmethod
    def from_description(cls, desc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Preprocessing:
        """Rebuild from :meth:`describe` output plus :meth:`tensors`."""
        try:
            norm = desc["normalize"]
            zca = None
            if desc.get("zca"):
                z = desc["zca"]
                zca = ZCA(z["variant"], float(z["eps"]), tensors["zca_mean"], tensors["zca_matrix"],
                          tensors["zca_inverse"])
            return cls(tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"]), zca)
        except KeyError as exc:
            raise SynsetFormatError(f"preprocessing record lacks {exc}; the synthetic set is incomplete") from exc

    def same_space(self, other: Preprocessing, tol: float = 1e-4) -> bool:
        """Whether two preprocessings map pixels to the same space."""
        return self.same_description(self.describe(), other.describe(), tol)

    @staticmethod
    def same_description(a: dict[str, Any], b: dict[str, Any], tol: float = 1e-4) -> bool:
        """Whether two :meth:`describe` records define the same space: normalisation within ``tol``, the same
        ZCA variant and fingerprint (or both without ZCA)."""
        na, nb = a.get("normalize") or {}, b.get("normalize") or {}
        for key in ("mean", "std"):
            va, vb = list(na.get(key, [])), list(nb.get(key, []))
            if len(va) != len(vb) or any(abs(x - y) > tol for x, y in zip(va, vb, strict=True)):
                return False
        za, zb = a.get("zca"), b.get("zca")
        if (za is None) != (zb is None):
            return False
        return za is None or all(za.get(k) == zb.get(k) for k in ("variant", "fingerprint"))
