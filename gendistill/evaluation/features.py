"""Feature spaces on real data, shared by the coreset selectors, the generative selector and the set-quality report.

Two kinds of network live here:

- :func:`feature_network`: the per-run embedding of herding / k-center / k-means and Minimax's ``select``
  (a ConvNet trained briefly on real data, as the DC paper's coreset baselines, or a random one);
- :func:`reference_network`: the one network per dataset that :mod:`gendistill.metrics` measures every synthetic
  set with. It is trained once with a fixed seed and recipe (:data:`REFERENCE_RECIPE`), cached next to the data
  (``<data root>/.gendistill_cache/features/``) and its recipe is recorded with every report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import torch

from gendistill.data.datasets import RealDataset
from gendistill.evaluation.protocols import EvalProtocol
from gendistill.evaluation.trainer import train_network
from gendistill.nn.blocking import block_rows, forward_in_blocks
from gendistill.nn.nets import create_network
from gendistill.utils.atomic import atomic_write
from gendistill.utils.seeding import derive_seed, make_generator

__all__ = ["REFERENCE_RECIPE", "FeatureSpec", "cached_feature_network", "dataset_features", "embed", "feature_network",
           "reference_network"]


@dataclasses.dataclass
class FeatureSpec:
    """A feature space on real data.

    Attributes:
        space: ``trained`` (a network trained on real data), ``random`` (an untrained one) or ``pixels``.
        model: network-registry name.
        epochs: training passes over the (sub)set for ``trained``.
        images_per_class: real images per class to train on (0 = all).
        lr: SGD learning rate of the training (momentum 0.9, weight decay 5e-4, constant).
        batch_size: training batch size.
        device: where to train and embed.
    """

    space: Literal["trained", "random", "pixels"] = "trained"
    model: str = "convnet"
    epochs: int = 2
    images_per_class: int = 0
    lr: float = 0.01
    batch_size: int = 256
    device: str = "cpu"

    def recipe(self) -> dict[str, Any]:
        """What defines the network (device excluded)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "device"}


# The set-quality report's network: ConvNet-3 trained for 2 passes over the whole training split, seed 0.
REFERENCE_RECIPE = FeatureSpec(space="trained", model="convnet", epochs=2, images_per_class=0)
REFERENCE_SEED = 0


def feature_network(train: RealDataset, spec: FeatureSpec, seed: int, progress: bool = False) -> torch.nn.Module:
    """The network of a ``trained``/``random`` feature space (trained on ``train`` for ``trained``)."""
    device = torch.device(spec.device)
    c, h, _ = train.image_shape
    net = create_network(spec.model, c, train.num_classes, h, seed=derive_seed(seed, "features"))
    if spec.space == "trained":
        gen = make_generator(derive_seed(seed, "feature-data"))
        if spec.images_per_class:
            idx = train.sample_indices(spec.images_per_class, gen).reshape(-1)
        else:
            idx = torch.arange(len(train))
        # train_network runs epochs + 1 passes (the reference loop), so epochs = spec.epochs - 1.
        protocol = EvalProtocol(name="feature", epochs=max(spec.epochs, 1) - 1, schedule="constant", lr=spec.lr,
                                batch_size=spec.batch_size)
        train_network(net, train.images(idx), train.labels[idx], protocol, gen, flip_ok=train.flip_ok,
                      device=device, progress=progress,
                      desc=f"feature network ({spec.model}, {len(idx)} real images)")
    return net.to(device).eval()


def embed(net: torch.nn.Module, images: torch.Tensor, *, device: str | torch.device = "cpu", batch_size: int = 1000,
          logits: bool = False, progress: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``[N, D]`` float32 embeddings of ``images`` (and ``[N, C]`` logits when ``logits``), in batches (on CPU the
    network is converted to channels-last and each batch passes in cache-sized row blocks)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    # channels_last: 1.35x faster for ConvNet-3 on 10,000 MNIST images here (scripts/perf/micro_ideas.py --more)
    fmt = torch.channels_last if device.type == "cpu" and images.dim() == 4 else torch.contiguous_format
    net.to(memory_format=fmt)
    feats, outs = [], []
    with torch.inference_mode():
        for xb in tqdm(images.split(batch_size), desc=f"embedding {len(images)} images", unit="batch",
                       disable=not progress, leave=False):
            xb = xb.to(device).contiguous(memory_format=fmt)
            rows = block_rows(net, xb)  # cache-sized blocks of rows: faster on CPU (gendistill.nn.blocking)
            f = forward_in_blocks(net.embed, xb, rows)
            feats.append(f.float().cpu())
            if logits:
                head = getattr(net, "classifier", None)
                out = head(f) if isinstance(head, torch.nn.Linear) else forward_in_blocks(net, xb, rows)
                outs.append(out.float().cpu())
    feats_t = torch.cat(feats) if feats else torch.empty(0)
    return (feats_t, torch.cat(outs) if outs else torch.empty(0)) if logits else feats_t


def dataset_features(train: RealDataset, spec: FeatureSpec, seed: int, progress: bool = False) -> torch.Tensor:
    """``[N, D]`` features of every training image in the feature space ``spec``."""
    if spec.space == "pixels":
        return train.images().flatten(1)
    net = feature_network(train, spec, seed, progress)
    return embed(net, train.images(), device=spec.device, progress=progress)


def _cache_file(train: RealDataset, spec: FeatureSpec, seed: int, cache_dir: Path, role: str = "") -> Path:
    key = json.dumps({"dataset": train.name, "shape": list(train.image_shape), "classes": train.num_classes,
                      "n": len(train), "space": train.preprocessing.describe(), "recipe": spec.recipe(),
                      "seed": seed}, sort_keys=True, default=str)
    prefix = "reference" if seed == REFERENCE_SEED else f"{role + '-' if role else ''}seed{seed}"
    return cache_dir / f"{prefix}-{train.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def default_cache_dir(train: RealDataset) -> Path | None:
    """``<data root>/.gendistill_cache/features`` for datasets loaded from a writable data root, the user cache
    (``$XDG_CACHE_HOME/gendistill/features``) for a read-only one, None (no disk cache) for in-memory datasets."""
    import os

    root = getattr(train, "data_root", None)
    if not root:
        return None
    cache = Path(root) / ".gendistill_cache" / "features"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if os.access(cache, os.W_OK):
            return cache
    except OSError:
        pass  # a read-only data root (e.g. a shared mount)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gendistill" / "features"


_MEMORY: dict[tuple, torch.nn.Module] = {}


def reference_network(train: RealDataset, *, spec: FeatureSpec = REFERENCE_RECIPE, cache_dir: Path | None = None,
                      progress: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The dataset's reference feature network and its record (recipe, seed, cache file, whether it was reused).

    Trained once per dataset (and preprocessing) with :data:`REFERENCE_SEED`; cached on disk in ``cache_dir``
    (default :func:`default_cache_dir`) and in memory for the process.
    """
    return cached_feature_network(train, spec, REFERENCE_SEED, cache_dir=cache_dir, progress=progress)


def cached_feature_network(train: RealDataset, spec: FeatureSpec, seed: int, *, cache_dir: Path | None = None,
                           progress: bool = False, role: str = "") -> tuple[torch.nn.Module, dict[str, Any]]:
    """:func:`feature_network` of a ``trained`` spec, trained once per (dataset, recipe, seed) and cached on disk in
    ``cache_dir`` (default :func:`default_cache_dir`) and in memory for the process; returns it and its record.
    ``role`` (e.g. ``teacher-convnet``) starts the cache file's name, so that a user can tell the files apart."""
    from safetensors.torch import load_file, save_file

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(train)
    c, h, _ = train.image_shape
    record: dict[str, Any] = {"recipe": spec.recipe(), "seed": seed, "dataset": train.name,
                              "train_images": len(train)}
    key = (train.name, len(train), tuple(train.image_shape), json.dumps(spec.recipe(), sort_keys=True), seed,
           str(cache_dir), id(train) if cache_dir is None else 0)
    if key in _MEMORY:
        return _MEMORY[key], {**record, "cache": "memory"}
    path = _cache_file(train, spec, seed, cache_dir, role) if cache_dir is not None else None
    if path is not None and path.is_file():
        net = create_network(spec.model, c, train.num_classes, h, seed=0)
        net.load_state_dict(load_file(str(path)))
        net = net.to(spec.device).eval()
        record["cache"] = str(path)
    else:
        net = feature_network(train, spec, seed, progress)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            atomic_write(path, lambda p: save_file(state, str(p), metadata={"recipe": json.dumps(spec.recipe())}))
            record["cache"] = f"trained, saved to {path}"
        else:
            record["cache"] = "trained (no cache folder)"
    _MEMORY[key] = net
    return net, record
