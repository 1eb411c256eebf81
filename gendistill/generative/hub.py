"""Shipped pretrained generators, hub-style ids, checksums and Hugging Face model cards.

Small generators pretrained on the datasets this machine has ship inside the package
(``gendistill/generative/pretrained/<name>/``, the diffusers pipeline layout), standing in for
``facebook/DiT-XL-2-256`` where no ImageNet model applies. ``gendistill/<name>`` (the form of a hub id) resolves to the
shipped copy after its files pass their SHA-256 checks (``checksums.json``); every saved model - shipped or trained by
a user - carries a ``README.md`` model card (YAML metadata with ``library_name: diffusers``, the dataset, the recipe,
the fine-tuning losses, steps, the quality report when one was computed, and the command that made it), so the folder
can be pushed to a hub as it is.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from gendistill.utils.atomic import atomic_json, atomic_text, sha256_file
from gendistill.utils.errors import CheckpointError

__all__ = ["DATASET_LICENCES", "card_metadata", "resolve_model_source", "shipped_for_dataset", "shipped_models",
           "verify_checksums", "write_checksums", "write_model_card"]

PREFIX = "gendistill/"
CHECKSUMS = "checksums.json"

#: the licence of each dataset a shipped model was trained on, as its publisher states it
DATASET_LICENCES = {
    "mnist": "MNIST (LeCun, Cortes & Burges): no licence stated by its authors; commonly redistributed under "
             "CC BY-SA 3.0",
    "fashion_mnist": "Fashion-MNIST (Zalando Research): MIT licence",
    "digits": "scikit-learn's 8x8 digits (UCI Optical Recognition of Handwritten Digits): CC BY 4.0",
}


def shipped_root() -> Path:
    """The folder holding the shipped models."""
    return Path(str(files("gendistill.generative"))) / "pretrained"


def shipped_models() -> dict[str, Path]:
    """``{hub-style id: folder}`` of every shipped model (a folder with a model card)."""
    root = shipped_root()
    if not root.is_dir():
        return {}
    return {f"{PREFIX}{p.name}": p for p in sorted(root.iterdir()) if (p / "README.md").is_file()}


def shipped_for_dataset(dataset: str) -> str | None:
    """The hub-style id of the shipped model trained on ``dataset`` (its card's ``datasets``), or None."""
    for name, folder in shipped_models().items():
        if dataset in (card_metadata(folder).get("datasets") or []):
            return name
    return None


def write_checksums(folder: str | Path) -> Path:
    """``checksums.json``: the SHA-256 of every weight and config file below ``folder``."""
    folder = Path(folder)
    sums = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (CHECKSUMS, "README.md")}
    return atomic_json(folder / CHECKSUMS, sums)


def verify_checksums(folder: str | Path) -> None:
    """Refuse a model folder whose files do not match its ``checksums.json`` (when it has one)."""
    folder = Path(folder)
    listed = folder / CHECKSUMS
    if not listed.is_file():
        return
    try:
        sums = json.loads(listed.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{listed} is corrupt ({exc.msg}); reinstall gendistill or retrain the model") from exc
    for name, digest in sums.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from the model folder; reinstall gendistill or retrain the "
                                  "model")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path} does not match its checksum (truncated or modified); reinstall gendistill "
                                  "or retrain the model with the command in its README.md")


def resolve_model_source(source: str | Path) -> str:
    """A shipped model's folder for ``gendistill/<name>`` (checksums verified); any other source unchanged."""
    text = str(source)
    if not text.startswith(PREFIX) or Path(text).exists():
        return text
    models = shipped_models()
    if text not in models:
        known = ", ".join(models) or "none"
        raise CheckpointError(f"no shipped model {text!r}; shipped: {known} (`gendistill models` lists them)")
    verify_checksums(models[text])
    return str(models[text])


def card_metadata(folder: str | Path) -> dict[str, Any]:
    """The YAML metadata of a model card (empty when the folder has none)."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return {}
    text = card.read_text()
    if not text.startswith("---\n"):
        return {}
    return yaml.safe_load(text.split("---\n", 2)[1]) or {}


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_model_card(folder: str | Path, info: dict[str, Any], quality: dict[str, Any] | None = None,
                     title: str | None = None, location: str | Path | None = None) -> Path:
    """Write ``folder/README.md``: Hugging Face model-card metadata and a description of how the model was made.

    ``info`` is the model's ``gendistill.json`` record; ``quality`` an optional set-quality summary (precision,
    recall, coverage, FD, ...) with the settings it was measured under (``quality["settings"]``). ``location``: the
    folder the model will end up in (models are written to a temporary folder first), which the card's loading
    snippet names when there is no ``model_id``; its last two parts are the heading unless ``title`` is given.
    """
    folder = Path(folder)
    final = Path(location) if location is not None else None
    title = info.get("model_id") or title or (f"{final.parent.name}/{final.name}" if final else folder.name)
    dataset = info.get("dataset", "unknown")
    stage = info.get("stage", "pretrain")
    minimax = stage == "finetune"
    meta: dict[str, Any] = {
        "library_name": "diffusers",
        "pipeline_tag": "unconditional-image-generation",
        "tags": ["gendistill", "dataset-distillation", "class-conditional", "diffusion",
                 "minimax-diffusion" if minimax else "pretrained"],
        "datasets": [dataset],
        "license": "apache-2.0",
        "gendistill": {k: info[k] for k in ("arch", "space", "stage", "steps", "global_batch", "train_time_s",
                                             "seed", "preset", "overrides", "lambda_pos", "lambda_neg",
                                             "weights_dtype", "model_id")
                       if k in info},
    }
    if quality:
        meta["model-index"] = [{"name": title, "results": [{
            "task": {"type": "image-generation"}, "dataset": {"name": dataset, "type": dataset},
            "metrics": [{"type": k, "value": float(quality[k])} for k in ("precision", "recall", "density",
                                                                            "coverage", "fd") if k in quality]}]}]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
             f"# {title}: a class-conditional diffusion model of {dataset}", "",
             f"Made with gendistill ({'Minimax fine-tuned' if minimax else 'pretrained from scratch'} on {dataset}).",
             ""]
    recipe = info.get("recipe") or {}
    lines += ["## Recipe", "", "| setting | value |", "|---|---|"]
    for key in ("arch", "space", "prediction", "steps", "global_batch", "lr", "warmup_steps", "min_snr_gamma", "ema",
                "max_grad_norm", "label_dropout", "sampler", "guidance", "lambda_pos", "lambda_neg", "train_time_s",
                "seed"):
        value = recipe.get(key, info.get(key))
        if value is not None:
            lines.append(f"| {key} | {_fmt(value)} |")
    lines += ["", "## Data", "", DATASET_LICENCES.get(dataset, f"{dataset}: see its publisher's licence.")]
    if quality:
        settings = quality.get("settings", "")
        lines += ["", "## Quality", "", f"Set-quality report of a generated set ({settings}):", "",
                  "| precision | recall | density | coverage | FD | agreement |", "|---|---|---|---|---|---|",
                  "| " + " | ".join(_fmt(quality.get(k, "")) for k in ("precision", "recall", "density",
                                                                            "coverage", "fd", "agreement")) + " |"]
    check = info.get("precision_check")
    if check:
        lines += ["", f"Weights stored in {check['dtype']} and loaded into float32. Sampled with the same noise, one "
                  f"image per class differs from the float32 model's by at most {check['max_pixel_diff']:.2g} "
                  f"(mean {check['mean_pixel_diff']:.2g}) on a [0, 1] pixel scale."]
    if info.get("command"):
        lines += ["", "## Reproduce", "", "```bash", info["command"], "```"]
    lines += ["", "## Use", "", "```python", "from gendistill.generative.pipeline import load_pipeline",
              "", f"pipe = load_pipeline({str(info.get('model_id') or location or folder)!r})",
              "images = pipe(class_labels=[0, 1, 2], num_inference_steps=50).images", "```", ""]
    return atomic_text(folder / "README.md", "\n".join(lines))
