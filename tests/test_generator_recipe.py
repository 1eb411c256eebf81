"""The generator recipe options: a U-Net backbone with DiffFit-style scales, a latent model over an autoencoder trained
on the dataset, min-SNR-gamma weighting, EMA by half-life, DPM-Solver++ and the guidance interval."""

import math

import pytest
import torch

from gendistill.generative.backbone import (
    Backbone,
    DiffFitUNet,
    build_unet,
    load_backbone,
    parse_unet_arch,
    save_backbone,
    trainable_parameter_names,
)
from gendistill.generative.diffusion import GaussianDiffusion
from gendistill.generative.method import MinimaxConfig, generate, load_model, pretrain
from gendistill.generative.sample import guided_model, image_seeds, sample_images
from gendistill.generative.train import EMA
from gendistill.utils.errors import ConfigError

TINY_UNET = "unet-C8-16-A1"


def tiny_unet_backbone(seed: int = 0) -> Backbone:
    net = DiffFitUNet(build_unet(TINY_UNET, 1, 16, 10, seed=seed))
    return Backbone(net, GaussianDiffusion.linear(), "pixel", 1, 16, latent_scale=1.0)


# --------------------------------------------------------------------------------------------- U-Net
def test_unet_arch_parsing_and_errors():
    assert parse_unet_arch("unet-C32-64-64-A1") == ((32, 64, 64), (1,), 1)
    assert parse_unet_arch("unet-C16-32-A0,1-L2") == ((16, 32), (0, 1), 2)
    assert parse_unet_arch("custom-D4-W128-H4/4") is None
    with pytest.raises(ConfigError, match="attention level out of range"):
        parse_unet_arch("unet-C8-16-A2")
    with pytest.raises(ConfigError, match="cannot be halved"):
        build_unet("unet-C8-16-16-16", 1, 28, 10)  # 28 -> 14 -> 7 -> 3.5


def test_unet_scales_start_at_identity_act_on_the_residual_branches_and_the_subset_is_labelled():
    bb = tiny_unet_backbone()
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([10, 500]), torch.tensor([3, 10])
    plain = bb.net.unet(x, t, class_labels=y).sample
    assert torch.allclose(bb.net(x, t, y), plain)  # scales of 1 change nothing
    assert bb.net.num_classes == 10 and bb.net.in_channels == 1 and bb.net.sample_size == 16
    assert bb.net.scaled and all(n.startswith(("down_blocks", "mid_block")) for n in bb.net.scaled)
    with torch.no_grad():
        next(iter(bb.net.scales.values())).mul_(0.5)
    assert not torch.allclose(bb.net(x, t, y), plain)
    names = trainable_parameter_names(bb.net)
    assert "unet.class_embedding.weight" in names
    assert any(n.endswith("norm1.weight") for n in names) and all(not n.endswith("conv1.weight") for n in names)
    assert all(n.endswith((".bias", ".weight")) or n.startswith("scales.") for n in names)
    total = sum(p.numel() for p in bb.net.parameters())
    subset = sum(p.numel() for n, p in bb.net.named_parameters() if n in set(names))
    assert 0 < subset < 0.2 * total


def test_unet_model_saves_and_loads_with_its_scales(tmp_path):
    bb = tiny_unet_backbone()
    with torch.no_grad():
        for p in bb.net.scales.values():
            p.uniform_(0.5, 1.5)
    save_backbone(bb, tmp_path / "m")
    assert (tmp_path / "m" / "difffit" / "scales.safetensors").is_file()
    loaded = load_backbone(tmp_path / "m")
    assert isinstance(loaded.net, DiffFitUNet) and loaded.space == "pixel" and loaded.image_size == 16
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([10, 500]), torch.tensor([3, 10])
    want = bb.net(x, t, y)
    assert torch.allclose(loaded.net(x, t, y), want, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(loaded.net.scales.values(), bb.net.scales.values(), strict=True))
    from diffusers import UNet2DModel  # the folded weights alone, in diffusers, compute the scaled model

    plain = UNet2DModel.from_pretrained(tmp_path / "m" / "unet")
    assert torch.allclose(plain(x, t, class_labels=y).sample, want, atol=1e-5)


def test_unet_pretrain_finetune_and_sample(tiny_train, tmp_path):
    config = MinimaxConfig(arch=TINY_UNET, pretrain_steps=3, pretrain_batch_size=8, finetune_steps=2, batch_size=4,
                           sample_steps=3, checkpoint_every=0, pretrain_min_snr_gamma=5.0,
                           pretrain_ema_halflife_kimg=0.5, pretrain_warmup_steps=2)
    model = pretrain(tiny_train, config, tmp_path / "pre", progress=False)
    from gendistill.generative.method import finetune

    tuned = finetune(load_model(model, config), tiny_train, config, tmp_path / "ft", progress=False)
    pixels, labels, _ = generate(load_model(tuned, config), tiny_train, 1, config, progress=False)
    assert pixels.shape == (10, 1, 16, 16) and torch.isfinite(pixels).all()


# ---------------------------------------------------------------------------------------- latent model
def test_latent_pretraining_trains_its_own_autoencoder_first(tiny_train, tmp_path):
    config = MinimaxConfig(arch="custom-D1-W16-H2/1", space="latent", vae_channels=[8, 16], vae_steps=3,
                           vae_batch_size=8, pretrain_steps=2, pretrain_batch_size=8, sample_steps=3,
                           checkpoint_every=0, cfg_scale=1.0)
    model = pretrain(tiny_train, config, tmp_path / "pre", progress=False)
    assert (tmp_path / "pre" / "autoencoder" / "model" / "config.json").is_file()
    bb = load_model(model, config)
    assert bb.space == "latent" and bb.latent_shape == (4, 8, 8) and bb.image_size == 16
    scale = bb.latent_scale
    assert scale > 0 and math.isfinite(scale) and scale != 0.18215  # 1 / std of this dataset's latents
    pixels, _, _ = generate(bb, tiny_train, 1, config, progress=False)
    assert pixels.shape == (10, 1, 16, 16) and float(pixels.min()) >= 0 and float(pixels.max()) <= 1


def test_autoencoder_training_resumes_exactly(tiny_train, tmp_path, monkeypatch):
    from gendistill.generative import autoencoder as ae

    spec = ae.AutoencoderSpec(channels=(8, 16), steps=4, batch_size=8)
    whole = ae.train_autoencoder(tiny_train, spec, tmp_path / "whole", progress=False, checkpoint_every=2)
    real_save = ae.atomic_torch_save

    def save_then_die(path, obj):
        real_save(path, obj)
        raise KeyboardInterrupt

    monkeypatch.setattr(ae, "atomic_torch_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        ae.train_autoencoder(tiny_train, spec, tmp_path / "cut", progress=False, checkpoint_every=2)
    monkeypatch.setattr(ae, "atomic_torch_save", real_save)
    resumed = ae.train_autoencoder(tiny_train, spec, tmp_path / "cut", resume=True, progress=False,
                                   checkpoint_every=2)
    from safetensors.torch import load_file

    a, b = load_file(str(whole / "diffusion_pytorch_model.safetensors")), \
        load_file(str(resumed / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------- training maths
def test_min_snr_weight_matches_its_definition():
    for prediction in ("epsilon", "v_prediction"):
        d = GaussianDiffusion.linear(prediction=prediction)
        t = torch.tensor([0, 10, 200, 999])
        abar = d.alphas_cumprod[t]
        snr = abar / (1 - abar)
        expected = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (snr if prediction == "epsilon"
                                                                                    else snr + 1)
        assert torch.allclose(d.min_snr_weight(t, 5.0).double(), expected, rtol=1e-5)
    d = GaussianDiffusion.linear()
    x0, noise = torch.zeros(4, 1, 2, 2), torch.ones(4, 1, 2, 2)
    zero = lambda x, tt: torch.cat([torch.zeros_like(x), torch.zeros_like(x)], 1)  # noqa: E731
    plain, weighted = d.training_losses(zero, x0, t, noise), d.training_losses(zero, x0, t, noise, min_snr_gamma=5.0)
    assert torch.allclose(weighted["loss"] - weighted["vb"], plain["mse"] * d.min_snr_weight(t, 5.0), atol=1e-5)


def test_ema_half_life_with_ramp_up():
    p = torch.nn.Parameter(torch.zeros(1))
    fixed = EMA({"p": p}, 0.99)
    assert fixed.decay_at(0) == fixed.decay_at(10_000) == 0.99
    ema = EMA({"p": p}, 0.99, halflife_kimg=1.0, rampup=0.05, batch=50)
    # step 0: 50 images seen, ramped half-life 2.5 images -> decay 0.5 ** 20
    assert ema.decay_at(0) == pytest.approx(0.5 ** (50 / 2.5))
    assert ema.decay_at(10_000) == pytest.approx(0.5 ** (50 / 1000.0))  # ramp-up ended: the half-life itself
    # after one half-life of images at the final decay, an old value has half its weight
    assert ema.decay_at(10_000) ** (1000 / 50) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------ sampling
def test_guidance_interval_guides_only_inside_it():
    bb = tiny_unet_backbone()
    labels = torch.tensor([1, 2])
    x = torch.randn(2, 1, 16, 16)
    cond = bb.net(x, torch.tensor([700, 700]), labels)
    inside = guided_model(bb, labels, 3.0, 0, (500.0, 900.0))
    outside = guided_model(bb, labels, 3.0, 0, (0.0, 400.0))
    assert torch.allclose(outside(x, torch.tensor([700, 700])), cond)
    assert not torch.allclose(inside(x, torch.tensor([700, 700])), cond)
    flat = guided_model(bb, labels, 3.0, 0)
    assert torch.allclose(flat(x, torch.tensor([700, 700])), inside(x, torch.tensor([700, 700])))


def test_dpm_solver_with_an_oracle_model_returns_the_data_point_and_is_batch_independent():
    """An epsilon oracle for a single data point x0 makes the ODE solution x0 itself."""
    x0 = torch.full((1, 1, 4, 4), 0.3)
    diffusion = GaussianDiffusion.linear(learn_sigma=False)

    class Oracle(torch.nn.Module):
        in_channels, sample_size, num_classes = 1, 4, 10

        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))  # the sampler reads the device from a parameter

        def forward(self, x, t, y):
            abar = diffusion.alphas_cumprod[t].float().view(-1, 1, 1, 1)
            return (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    bb = Backbone(Oracle(), diffusion, "pixel", 1, 4, latent_scale=1.0)
    seeds = image_seeds(0, torch.arange(3), 1)
    out = sample_images(bb, torch.arange(3), seeds, steps=20, cfg_scale=1.0, sampler="dpmsolver++",
                        progress=False)
    assert torch.allclose(out, (x0 + 1) / 2, atol=2e-3)
    bb2 = tiny_unet_backbone()
    one = sample_images(bb2, torch.tensor([4]), seeds[:1], steps=5, cfg_scale=2.0, sampler="dpmsolver++",
                        progress=False, batch_size=1)
    many = sample_images(bb2, torch.tensor([4, 5, 6]), seeds, steps=5, cfg_scale=2.0, sampler="dpmsolver++",
                         progress=False, batch_size=3)
    assert torch.allclose(one[0], many[0], atol=1e-5)


def test_paper_scale_smoke_script_runs_the_imagewoof_preset_at_tiny_width(tmp_path, monkeypatch):
    import json
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts" / "perf"))
    import paper_scale_smoke

    out = tmp_path / "smoke.json"
    assert paper_scale_smoke.main(["--tiny", "--steps", "2", "--images", "2", "--sample-steps", "3", "--json",
                                   str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["params_trainable"] < report["params_total"] and report["finetune_step_s"] > 0
    # the same DiffFit rule at tiny width as at full size, where it counts the reference's 1.74 M of 675 M
    assert report["params_trainable"] == report["trainable_expected"] == \
        paper_scale_smoke.difffit_subset_size(paper_scale_smoke.TINY_DIT)
    assert paper_scale_smoke.difffit_subset_size(paper_scale_smoke.DIT_XL_2_256) == 1_739_552
    assert report["sample_s_per_image"] > 0 and report["latent_shape"] == [4, 8, 8]
    full = paper_scale_smoke.DIT_XL_2_256  # the public DiT-XL/2-256 configuration, written out
    assert (full["num_layers"], full["num_attention_heads"] * full["attention_head_dim"], full["patch_size"]) == \
        (28, 1152, 2)
    assert sys.modules["paper_scale_smoke"] is paper_scale_smoke
