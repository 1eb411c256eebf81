"""Turn a trained generator into a shipped one: a half-precision copy with its quality report, card and checksums.

``gendistill models ship RUN/model --name dit-mnist`` (after ``gendistill pretrain --preset cpu``) writes
``gendistill/generative/pretrained/dit-mnist/``, which ``pretrained=gendistill/dit-mnist`` (or ``auto``) then loads.
The copy stores its floating-point weights in fp16 (or bf16) and is loaded back into float32; the precision check
samples one image per class from both copies with the same noise and records the largest pixel difference, and
the quality report is taken on the shipped copy itself, so the card describes exactly what ships.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from gendistill.generative.hub import PREFIX, shipped_root, write_checksums, write_model_card
from gendistill.utils.atomic import replace_dir, temp_dir_beside
from gendistill.utils.errors import CheckpointError, ConfigError

__all__ = ["DTYPES", "half_copy", "precision_check", "ship_model"]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def half_copy(source: Path, target: Path, dtype: str) -> None:
    """Copy the model folder ``source`` to ``target`` with every floating-point weight stored as ``dtype``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("README.md", "checksums.json"))
    for path in sorted(target.rglob("*.safetensors")):
        state = load_file(str(path))
        save_file({k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}, str(path))
    meta_path = target / "gendistill.json"
    meta = json.loads(meta_path.read_text())
    meta["weights_dtype"] = dtype
    meta_path.write_text(json.dumps(meta, indent=2))


def precision_check(full: Path, half: Path, num_classes: int, *, steps: int, cfg_scale: float, sampler: str,
                    seed: int = 0) -> dict[str, float]:
    """Sample one image per class from both folders with the same noise: the largest and mean pixel difference
    (pixels in [0, 1])."""
    from gendistill.generative.backbone import load_backbone
    from gendistill.generative.sample import image_seeds, sample_images

    classes = torch.arange(num_classes)
    seeds = image_seeds(seed, classes, 1)
    images = [sample_images(load_backbone(folder), classes, seeds, steps=steps, cfg_scale=cfg_scale,
                            guided_channels=0, sampler=sampler, progress=False) for folder in (full, half)]
    diff = (images[0] - images[1]).abs()
    return {"max_pixel_diff": float(diff.max()), "mean_pixel_diff": float(diff.mean())}


def ship_model(source: str | Path, name: str, *, dataset: str | None = None, dtype: str = "fp16",
               quality_ipc: int = 50, overrides: list[str] | None = None, root: str | Path | None = None,
               data_root: str | None = None, seed: int = 0, progress: bool = True) -> Path:
    """Write the shipped copy of the model folder ``source`` as ``<root>/<name>`` (default: the package's
    ``pretrained/`` folder) and return it.

    Args:
        dataset: the dataset it was trained on (default: the one its ``gendistill.json`` records).
        dtype: storage precision of the weights (``fp16``, ``bf16`` or ``fp32``).
        quality_ipc: images per class of the quality report's set (0 skips the report).
        overrides: ``dit`` settings of that set (e.g. ``cfg_scale=2``); the ``cpu`` preset's otherwise.
    """
    from gendistill.api import distill
    from gendistill.data.datasets import load_dataset
    from gendistill.evaluation.metrics import set_quality
    from gendistill.presets import resolve_config

    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"model name {name!r} must be a plain folder name (it becomes {PREFIX}<name>)")
    source = Path(source)
    if not (source / "gendistill.json").is_file():
        raise CheckpointError(f"{source} is not a model folder written by gendistill (no gendistill.json); pass the "
                              "model/ folder of a finished `gendistill pretrain` run")
    info: dict[str, Any] = json.loads((source / "gendistill.json").read_text())
    dataset = dataset or info.get("dataset")
    if not dataset:
        raise ConfigError(f"{source} does not record its dataset; pass --dataset")
    splits = load_dataset(dataset, data_root)
    target = Path(root) if root else shipped_root()
    target.mkdir(parents=True, exist_ok=True)
    final = target / name
    tmp = temp_dir_beside(final)
    shutil.rmtree(tmp, ignore_errors=True)
    half_copy(source, tmp, dtype)
    overrides = list(overrides or [])
    config = resolve_config("dit", dataset, quality_ipc or 10, preset="cpu", overrides=overrides)
    check = precision_check(source, tmp, splits.train.num_classes, steps=config.sample_steps,
                            cfg_scale=config.cfg_scale, sampler=config.sampler, seed=seed)
    quality = None
    if quality_ipc:
        synset = distill("dit", splits, quality_ipc, preset="cpu", overrides=[f"pretrained={tmp}", *overrides],
                         seed=seed, progress=progress)
        report = set_quality(synset, splits.train, seed=seed, progress=progress)
        quality = {**report["summary"],
                   "settings": f"dit, IPC {quality_ipc}, {config.sampler} {config.sample_steps} steps, guidance "
                               f"{config.cfg_scale:g}, sampling seed {seed}, the {dtype} weights shipped; k = "
                               f"{report['record']['k']}, {report['record']['real_per_class']} real images per class"}
        (tmp / "quality.json").write_text(json.dumps({"summary": report["summary"], "record": report["record"],
                                                      "settings": quality["settings"]}, indent=2))
    card = {**json.loads((tmp / "gendistill.json").read_text()), "model_id": f"{PREFIX}{name}",
            "precision_check": {**check, "dtype": dtype},
            "recipe": {**info.get("recipe", {}), "sampler": f"{config.sampler}, {config.sample_steps} steps",
                       "guidance": config.cfg_scale},
            "command": f"gendistill pretrain --dataset {dataset} --preset cpu --out runs/{name}\n"
                       f"gendistill models ship runs/{name}/model --name {name}"}
    write_model_card(tmp, card, quality)
    write_checksums(tmp)
    return replace_dir(tmp, final)
