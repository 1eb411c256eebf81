"""Shipped generators: `models ship` on a tiny model, and every model the package ships (loaded, verified, sampled)."""

from __future__ import annotations

import json

import pytest
import torch

from gendistill.generative.backbone import load_backbone
from gendistill.generative.hub import card_metadata, resolve_model_source, shipped_models, verify_checksums
from gendistill.generative.sample import image_seeds, sample_images
from gendistill.utils.errors import CheckpointError

TINY = {"arch": "custom-D2-W16-H2/4", "pretrain_steps": 2, "pretrain_batch_size": 8, "checkpoint_every": 0}


def test_ship_writes_a_verified_half_precision_copy_that_auto_and_the_hub_id_resolve_to(tmp_path, monkeypatch,
                                                                                       capsys):
    from conftest import make_mnist_root
    from safetensors.torch import load_file

    from gendistill.cli import main
    from gendistill.generative import hub
    from gendistill.generative.method import MinimaxConfig, pretrained_source

    root = make_mnist_root(tmp_path / "data", n_per_class=4)
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    assert main(["--quiet", "pretrain", "--dataset", "mnist", "--data-root", str(root), "--out",
                 str(tmp_path / "pt"), *sets]) == 0
    ship_root = tmp_path / "shipped"
    assert main(["--quiet", "models", "ship", str(tmp_path / "pt" / "model"), "--name", "tiny-mnist", "--root",
                 str(ship_root), "--data-root", str(root), "--quality-ipc", "2", "--set", "sample_steps=2"]) == 0
    folder = ship_root / "tiny-mnist"
    weights = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    verify_checksums(folder)
    meta = card_metadata(folder)
    assert meta["datasets"] == ["mnist"] and meta["gendistill"]["weights_dtype"] == "fp16"
    assert {m["type"] for m in meta["model-index"][0]["results"][0]["metrics"]} >= {"precision", "recall", "fd"}
    assert meta["model-index"][0]["name"] == "gendistill/tiny-mnist"  # not the temporary folder it was written in
    card = (folder / "README.md").read_text()
    assert "# gendistill/tiny-mnist:" in card and ".tmp" not in card
    assert "gendistill/tiny-mnist" in card and "loaded into float32" in card and "models ship" in card
    assert json.loads((folder / "quality.json").read_text())["record"]["images"] == 20

    monkeypatch.setattr(hub, "shipped_root", lambda: ship_root)
    assert pretrained_source(MinimaxConfig(pretrained="auto"), "mnist") == "gendistill/tiny-mnist"
    assert pretrained_source(MinimaxConfig(pretrained="auto"), "fashion_mnist") == ""
    model = load_backbone("gendistill/tiny-mnist")
    assert all(p.dtype == torch.float32 for p in model.net.parameters())
    capsys.readouterr()
    assert main(["models"]) == 0
    assert "gendistill/tiny-mnist" in capsys.readouterr().out

    blob = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    blob.write_bytes(blob.read_bytes()[:-8])  # truncated: refused with what to do
    with pytest.raises(CheckpointError, match="checksum"):
        resolve_model_source("gendistill/tiny-mnist")
    assert main(["--quiet", "models", "ship", str(tmp_path), "--name", "x", "--root", str(ship_root)]) == 2


@pytest.mark.parametrize("name", sorted(shipped_models()) or [pytest.param("none", marks=pytest.mark.skip(
    reason="this installation ships no models"))])
def test_every_shipped_model_verifies_loads_and_samples_one_image_per_class(name):
    folder = shipped_models()[name]
    meta = card_metadata(folder)
    assert meta["library_name"] == "diffusers" and meta["datasets"] and meta["license"]
    sizes = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
    assert sizes <= 10 * 2**20, f"{name} weighs {sizes / 2**20:.1f} MB (10 MB at most)"
    model = load_backbone(name)  # verifies the checksums first
    classes = torch.arange(model.net.num_classes)
    pixels = sample_images(model, classes, image_seeds(0, classes, 1), steps=5, cfg_scale=1.0, guided_channels=0,
                           progress=False)
    assert pixels.shape == (len(classes), model.image_channels, model.image_size, model.image_size)
    assert torch.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1
    assert pixels.std() > 0.05  # not a blank image


def test_shipped_models_fit_the_size_budget():
    total = sum(f.stat().st_size for folder in shipped_models().values() for f in folder.rglob("*.safetensors"))
    assert total <= 25 * 2**20


def test_the_generative_cpu_presets_share_the_shipped_recipe():
    """`gendistill pretrain --preset cpu` (minimax's preset) reproduces the shipped model whichever method's preset a
    run falls back to with pretrained=none."""
    import dataclasses

    from gendistill.presets import resolve_config

    def recipe(method: str, dataset: str) -> dict:
        config = resolve_config(method, dataset, 10, preset="cpu")
        assert config.pretrained == "auto"
        return {k: v for k, v in dataclasses.asdict(config).items()
                if k.startswith("pretrain_") or k in ("arch", "space", "prediction")}

    for dataset in ("mnist", "fashion_mnist", "digits"):
        reference = recipe("minimax", dataset)
        for method in ("dit", "mgd3", "igd"):
            if dataset == "digits" and method in ("mgd3", "igd"):
                continue
            assert recipe(method, dataset) == reference, (method, dataset)
    assert recipe("minimax", "digits")["arch"].endswith("/2")
