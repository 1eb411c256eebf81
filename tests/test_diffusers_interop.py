"""Saved models load and sample correctly in diffusers' own pipelines: a fine-tuned latent DiT in ``DiTPipeline``
(DiffFit scales folded into the weights), pixel-space DiTs and U-Nets in :class:`GendistillPipeline`; both reproduce
gendistill's samples for the same seeds and sampler. Model cards, and loading that refuses a mixed-up folder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from gendistill.generative.backbone import (
    Backbone,
    DiffFitDiT,
    DiffFitUNet,
    build_dit,
    build_unet,
    load_backbone,
    save_backbone,
)
from gendistill.generative.diffusion import GaussianDiffusion
from gendistill.generative.hub import card_metadata
from gendistill.generative.pipeline import GendistillPipeline
from gendistill.generative.sample import image_seeds, sample_images
from gendistill.utils.errors import CheckpointError


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=8, sample_size=16).eval()


def _trained_scales(net) -> None:
    """Weights as training leaves them (a fresh DiT's zeroed output layer would make every test vacuous) and DiffFit
    scales away from 1."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(net.component + "."):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))


def _latent_dit() -> Backbone:
    net = DiffFitDiT(build_dit("custom-D2-W16-H2/2", 4, 8, 10, seed=3))
    _trained_scales(net)
    vae = _tiny_vae()
    return Backbone(net, GaussianDiffusion.linear(), "latent", 3, 16, vae, vae,
                    info={"dataset": "tiny", "stage": "finetune", "steps": 2})


def test_folded_latent_dit_reproduces_gendistill_samples_in_diffusers_dit_pipeline(tmp_path):
    from diffusers import DiTPipeline, DPMSolverMultistepScheduler

    bb = _latent_dit()
    save_backbone(bb, tmp_path / "m")
    labels = torch.tensor([0, 3, 7])
    seeds = image_seeds(0, torch.arange(3), 1)
    ours = sample_images(bb, labels, seeds, steps=12, cfg_scale=1.0, sampler="dpmsolver++", progress=False)

    pipe = DiTPipeline.from_pretrained(tmp_path / "m")  # the diffusers user's three lines
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                             solver_order=2, lower_order_final=True)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    theirs = pipe(class_labels=labels.tolist(), guidance_scale=1.0, generator=generators, num_inference_steps=12,
                  output_type="pt").images  # NCHW in [0, 1]
    theirs = torch.as_tensor(theirs)
    theirs = theirs if theirs.shape[1] == 3 else theirs.permute(0, 3, 1, 2)
    assert (theirs - ours).abs().max() < 1e-4
    assert ours.std() > 0.01  # a real image, not a constant
    # the saved transformer is the scaled model; its weights before folding would be another model
    from diffusers import DiTTransformer2DModel
    from safetensors.torch import load_file

    saved = DiTTransformer2DModel.from_pretrained(tmp_path / "m" / "transformer")
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 600])
    want = bb.net(x, t, labels[:2])
    assert torch.allclose(saved(x, timestep=t, class_labels=labels[:2]).sample, want, atol=1e-5)
    saved.load_state_dict(load_file(str(tmp_path / "m" / "difffit" / "unfolded.safetensors")), strict=False)
    assert not torch.allclose(saved(x, timestep=t, class_labels=labels[:2]).sample, want, atol=1e-3)


@pytest.mark.parametrize("kind", ["dit", "unet"])
def test_pixel_models_reproduce_gendistill_samples_in_the_package_pipeline(tmp_path, kind):
    if kind == "dit":
        net = DiffFitDiT(build_dit("custom-D2-W16-H2/4", 1, 16, 10, seed=2))
    else:
        net = DiffFitUNet(build_unet("unet-C8-16-A1", 1, 16, 10, seed=2))
    _trained_scales(net)
    bb = Backbone(net, GaussianDiffusion.linear(), "pixel", 1, 16, latent_scale=1.0,
                  id2label={i: f"class{i}" for i in range(10)}, info={"dataset": "tiny", "stage": "pretrain"})
    save_backbone(bb, tmp_path / "m")
    labels = torch.tensor([1, 4])
    seeds = image_seeds(5, torch.arange(2), 1)
    for sampler in ("ancestral", "dpmsolver++"):
        ours = sample_images(bb, labels, seeds, steps=6, cfg_scale=2.0, guided_channels=0, sampler=sampler,
                             progress=False)
        pipe = GendistillPipeline.from_pretrained(tmp_path / "m")
        out = pipe(class_labels=["class1", "class4"], guidance_scale=2.0, num_inference_steps=6, sampler=sampler,
                   generator=[torch.Generator().manual_seed(int(s)) for s in seeds], output_type="pt").images
        # the same computation up to float32 summation order, which differs between CPUs' kernels (1.0e-4 for the
        # U-Net's dpmsolver++ on an avx512 machine); a wrong step, schedule or guidance differs by far more
        assert (out - ours).abs().max() < 5e-4, sampler
        assert ours.std() > 0.01
    pil = pipe(class_labels=[0], num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images
    assert pil[0].size == (16, 16)


def test_every_saved_model_has_a_hugging_face_model_card(tmp_path):
    bb = _latent_dit()
    bb.info.update(lambda_pos=0.002, lambda_neg=0.008, command="gendistill finetune --dataset tiny ...")
    save_backbone(bb, tmp_path / "m")
    meta = card_metadata(tmp_path / "m")
    assert meta["library_name"] == "diffusers" and meta["datasets"] == ["tiny"]
    assert "minimax-diffusion" in meta["tags"] and meta["gendistill"]["lambda_neg"] == 0.008
    text = (tmp_path / "m" / "README.md").read_text()
    assert "gendistill finetune --dataset tiny" in text and "## Recipe" in text
    heading = next(line for line in text.splitlines() if line.startswith("# "))
    assert heading.startswith(f"# {tmp_path.name}/m:") and ".tmp" not in heading  # not the temporary folder's name
    assert f"load_pipeline({str(tmp_path / 'm')!r})" in text and ".tmp" not in text  # the snippet loads the model


def test_loading_refuses_a_folder_whose_difffit_files_contradict_its_record(tmp_path):
    bb = _latent_dit()
    save_backbone(bb, tmp_path / "m")
    loaded = load_backbone(tmp_path / "m")  # the unfolded form comes back exactly, for further fine-tuning
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 600]), torch.tensor([1, 2])
    assert torch.allclose(loaded.net(x, t, y), bb.net(x, t, y), atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(loaded.net.scales_state().values(), bb.net.scales_state().values(),
                                                 strict=True))
    stray = tmp_path / "stray"
    shutil.copytree(tmp_path / "m", stray)
    shutil.copy(stray / "difffit" / "scales.safetensors", stray / "transformer" / "difffit.safetensors")
    with pytest.raises(CheckpointError, match="scale twice"):
        load_backbone(stray)
    missing = tmp_path / "missing"
    shutil.copytree(tmp_path / "m", missing)
    shutil.rmtree(missing / "difffit")
    with pytest.raises(CheckpointError, match="difffit/ is missing"):
        load_backbone(missing)
    unfolded = tmp_path / "unfolded"
    shutil.copytree(tmp_path / "m", unfolded)
    record = json.loads((unfolded / "gendistill.json").read_text())
    del record["difffit"]
    (unfolded / "gendistill.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="beside unfolded weights"):
        load_backbone(unfolded)
