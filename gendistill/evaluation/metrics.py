"""Set-quality report: how a synthetic set covers, represents and diversifies its real training split.

Everything is measured in the feature space of the dataset's reference network (:func:`gendistill.features.
reference_network`: ConvNet-3 trained on the real training split, fixed seed and recipe, cached), except the
``pixel_*`` quantities, which use the set's model-space pixels (or latents) flattened.

- precision / recall (Kynkäänniemi et al., NeurIPS 2019) and density / coverage (Naeem et al., ICML 2020) with
  k-NN radii (k = 5), overall and per class, against a class-balanced sample of the real training split;
- diversity: mean pairwise feature distance within each class, next to the same figure for a random real subset
  of the same size (seeded);
- Minimax's own quantities (Gu et al., CVPR 2024): representativeness = mean over synthetic images of the min and
  of the max cosine to the real samples of their class; diversity = mean over synthetic images of the max cosine to
  the other synthetic images of their class (lower = more diverse);
- classifier agreement: the share of images the reference network assigns to their (hard) label;
- Fréchet distance between Gaussian fits of the real and synthetic features.

Soft-label sets are grouped by their hard labels (argmax).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from gendistill.data.datasets import RealDataset
from gendistill.evaluation.features import embed, reference_network
from gendistill.synset.format import SyntheticSet
from gendistill.utils.errors import GendistillError
from gendistill.utils.seeding import derive_seed, make_generator

__all__ = ["K_NEAREST", "frechet_distance", "minimax_quantities", "mean_pairwise_distance", "prdc", "set_quality"]

K_NEAREST = 5


def _cdist(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Euclidean distances ``[len(a), len(b)]`` in float64, computed in row chunks."""
    a, b = a.double(), b.double()
    return torch.cat([torch.cdist(part, b) for part in a.split(chunk)]) if len(a) else a.new_zeros(0, len(b))


def _knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (self excluded); NaN when there are not k others."""
    n = len(feats)
    if n <= k:
        return torch.full((n,), float("nan"), dtype=torch.float64)
    radii = []
    for start in range(0, n, 2048):
        d = _cdist(feats[start:start + 2048], feats)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the 0 to itself is the 1st
    return torch.cat(radii)


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = K_NEAREST) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` (rows are feature vectors).

    A sample is inside a k-NN ball when its distance is strictly below the ball's radius (as Naeem et al.'s
    reference code). Recall needs more than ``k`` fake samples (NaN otherwise).
    """
    real_r = _knn_radii(real, k)
    fake_r = _knn_radii(fake, k)
    d = _cdist(real, fake)  # [R, F]
    inside_real = d < real_r[:, None]  # fake j inside real ball i
    precision = inside_real.any(0).double().mean()
    density = inside_real.sum(0).double().mean() / k
    coverage = (d.min(1).values < real_r).double().mean()
    recall = (d < fake_r[None, :]).any(1).double().mean() if not torch.isnan(fake_r).any() else torch.tensor(math.nan)
    return {"precision": float(precision), "recall": float(recall), "density": float(density),
            "coverage": float(coverage)}


def mean_pairwise_distance(feats: torch.Tensor) -> float:
    """Mean Euclidean distance over distinct pairs of rows (0 for fewer than two rows)."""
    n = len(feats)
    if n < 2:
        return 0.0
    return float(_cdist(feats, feats).sum() / (n * (n - 1)))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = torch.nn.functional.normalize(a.double().flatten(1), dim=1)
    b = torch.nn.functional.normalize(b.double().flatten(1), dim=1)
    return a @ b.T


def minimax_quantities(syn: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Gu et al.'s criteria for one class: ``repr_min``/``repr_max`` (mean over synthetic images of the min / max
    cosine to the real samples) and ``div_max`` (mean over synthetic images of the max cosine to the others)."""
    to_real = _cosine(syn, real)
    out = {"repr_min": float(to_real.min(1).values.mean()), "repr_max": float(to_real.max(1).values.mean())}
    if len(syn) > 1:
        self_cos = _cosine(syn, syn)
        self_cos.fill_diagonal_(-math.inf)
        out["div_max"] = float(self_cos.max(1).values.mean())
    else:
        out["div_max"] = math.nan
    return out


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits: ``|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r^1/2 S_f S_r^1/2)^1/2)``."""
    real, fake = real.double(), fake.double()
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r = torch.cov(real.T) if len(real) > 1 else torch.zeros(real.shape[1], real.shape[1], dtype=torch.float64)
    cov_f = torch.cov(fake.T) if len(fake) > 1 else torch.zeros_like(cov_r)
    cov_r, cov_f = torch.atleast_2d(cov_r), torch.atleast_2d(cov_f)
    w, v = torch.linalg.eigh(cov_r)
    root_r = (v * w.clamp_min(0).sqrt()) @ v.T
    middle = root_r @ cov_f @ root_r
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float(((mu_r - mu_f) ** 2).sum() + torch.trace(cov_r) + torch.trace(cov_f) - 2 * trace_root)


def _model_space_images(synset: SyntheticSet, train: RealDataset) -> torch.Tensor:
    images, _ = synset.materialize()
    if synset.preprocessing.same_space(train.preprocessing):
        return images
    return train.preprocessing.apply(synset.preprocessing.invert(images).clamp(0, 1))


def _check(synset: SyntheticSet, train: RealDataset) -> None:
    if synset.num_classes != train.num_classes:
        raise GendistillError(f"the set has {synset.num_classes} classes, {train.name} has {train.num_classes}; "
                              "measure it against the dataset it was made from")
    images, _ = synset.materialize()
    if tuple(images.shape[1:]) != tuple(train.image_shape):
        raise GendistillError(f"the set's images are {tuple(images.shape[1:])} but {train.name}'s are "
                              f"{tuple(train.image_shape)}; measure it against the dataset it was made from")


_REAL_SAMPLES: dict[tuple, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = {}


def _real_sample(train: RealDataset, real_idx: torch.Tensor, net: torch.nn.Module, device: torch.device,
                 progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The report's real sample (model-space images, ``[N, ...]``) and its features (``[C, per_class, D]``), kept in
    memory for the process: a bench or quickstart reports many sets against the same sample, and embedding it is
    most of a report's time. Keyed by the network object, the sample's pixels and the preprocessing."""
    pixels = train.pixels[real_idx.reshape(-1)]
    key = (id(net), hashlib.sha256(pixels.numpy().tobytes()).hexdigest(),
           json.dumps(train.preprocessing.describe(), sort_keys=True, default=str), str(device))
    hit = _REAL_SAMPLES.get(key)
    if hit is None or hit[0] is not net:
        real_x = train.images(real_idx.reshape(-1))
        real_f = embed(net, real_x, device=device, progress=progress).reshape(*real_idx.shape, -1)
        if len(_REAL_SAMPLES) >= 4:
            _REAL_SAMPLES.pop(next(iter(_REAL_SAMPLES)))
        hit = _REAL_SAMPLES[key] = (net, real_x, real_f)
    return hit[1], hit[2]


def set_quality(synset: SyntheticSet, train: RealDataset, *, real_per_class: int = 1000, k: int = K_NEAREST,
                seed: int = 0, cache_dir: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """The set-quality report of ``synset`` against the real training split ``train`` (see the module doc).

    Args:
        real_per_class: real images per class the report compares with (class-balanced, seeded; recorded).
        k: neighbours of the k-NN balls.
        seed: seed of the real sample and of the random real subset of the diversity reference.
        cache_dir: where the reference network is cached (default next to the data).
    """
    _check(synset, train)
    net, net_record = reference_network(train, cache_dir=cache_dir, progress=progress)
    device = next(net.parameters()).device
    syn_x = _model_space_images(synset, train)
    _, syn_labels_raw = synset.materialize()
    syn_y = syn_labels_raw.argmax(1) if syn_labels_raw.dim() == 2 else syn_labels_raw.long()
    per_class = max(1, min(real_per_class, int(train.class_counts.min())))
    gen = make_generator(derive_seed(seed, "metrics-real"))
    real_idx = train.sample_indices(per_class, gen)  # [C, per_class]
    real_x, real_f = _real_sample(train, real_idx, net, device, progress)
    syn_f, logits = embed(net, syn_x, device=device, logits=True)
    agreement = (logits.argmax(1) == syn_y).double()

    classes: list[dict[str, Any]] = []
    for c in range(train.num_classes):
        rows = (syn_y == c).nonzero().squeeze(1)
        entry: dict[str, Any] = {"class": train.class_names[c], "images": int(len(rows))}
        if len(rows) == 0:
            classes.append(entry)
            continue
        fc, rc = syn_f[rows], real_f[c]
        entry.update(prdc(rc, fc, k))
        entry["diversity"] = mean_pairwise_distance(fc)
        subset = torch.randperm(per_class, generator=gen)[: len(rows)]
        entry["diversity_random_real"] = mean_pairwise_distance(rc[subset])
        entry["agreement"] = float(agreement[rows].mean())
        entry.update({f"feature_{k_}": v for k_, v in minimax_quantities(fc, rc).items()})
        real_pixels_c = real_x.reshape(train.num_classes, per_class, -1)[c]
        entry.update({f"pixel_{k_}": v for k_, v in minimax_quantities(syn_x[rows], real_pixels_c).items()})
        classes.append(entry)

    overall = prdc(real_f.reshape(-1, real_f.shape[-1]), syn_f, k)  # the whole real sample against the set
    measured = [e for e in classes if e["images"]]

    def mean_of(key: str) -> float:
        vals = [e[key] for e in measured if not math.isnan(e[key])]
        return float(sum(vals) / len(vals)) if vals else math.nan

    all_real = real_f.reshape(-1, real_f.shape[-1])
    summary = {**overall, "agreement": float(agreement.mean()), "fd": frechet_distance(all_real, syn_f)}
    for key in ("diversity", "diversity_random_real", "feature_repr_min", "feature_repr_max", "feature_div_max",
                "pixel_repr_min", "pixel_repr_max", "pixel_div_max"):
        summary[key] = mean_of(key)
    for key in ("precision", "recall", "density", "coverage"):
        summary[f"class_{key}"] = mean_of(key)
    return {
        "summary": summary,
        "per_class": classes,
        "record": {"k": k, "real_per_class": per_class, "seed": seed, "images": len(syn_x),
                   "soft_labels": synset.soft, "feature_network": net_record,
                   "method": synset.meta.get("method"), "dataset": train.name,
                   "space": "reference-network features (pixel_*: model-space pixels)"},
    }

