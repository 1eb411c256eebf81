"""The paper-scale generative path without downloads: DiT-XL/2-256 and an SD-VAE-sized AutoencoderKL built with random
weights from their public configurations, run through the ImageWoof Minimax preset's fine-tuning (a few steps) and
sampler (a few images).

    python scripts/perf/paper_scale_smoke.py --json results/perf/paper_scale_smoke.json   # CPU: 2 steps, 2 images
    python scripts/perf/paper_scale_smoke.py --device cuda --batch 8 --steps 5 --images 8 --compare --json FILE

It checks the shapes, the trainable DiffFit subset (the reference's 1.74 M of 675 M parameters) and records
``params_total``, ``params_trainable``, ``finetune_step_s`` (median over the steps after the first),
``sample_s_per_image`` and ``peak_memory_mb``. ``--compare`` (for a GPU) adds sampling throughput at batch 1 against
the batched sampler and bf16 against fp32. ``--tiny`` builds the same pipeline at toy width (the test suite).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gendistill.data.datasets import RealDataset
from gendistill.data.preprocessing import Preprocessing
from gendistill.generative.backbone import Backbone, DiffFitDiT, dit_init_, trainable_parameter_names
from gendistill.generative.diffusion import GaussianDiffusion
from gendistill.generative.sample import image_seeds, sample_images
from gendistill.generative.train import train_backbone
from gendistill.presets import resolve_config
from gendistill.utils.resources import peak_memory_mb

#: facebook/DiT-XL-2-256 transformer/config.json (public): 28 blocks, 16 heads x 72, patch 2, 32x32x4 latents
DIT_XL_2_256 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                    sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
                    activation_fn="gelu-approximate", attention_bias=True, norm_elementwise_affine=False)
#: stabilityai/sd-vae-ft-mse config.json (public): 4 levels 128-256-512-512, 2 blocks each, 4 latent channels
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              latent_channels=4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215)
TINY_DIT = {**DIT_XL_2_256, "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2, "sample_size": 8}
TINY_VAE = {**SD_VAE, "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2,
            "block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 16}
REFERENCE_TRAINABLE = 1.74e6  # Minimax's DiffFit subset of DiT-XL/2 (README and paper)


def difffit_subset_size(config: dict) -> int:
    """The DiffFit subset's size for a DiT configuration, counted by hand (1,739,552 for DiT-XL/2-256).

    Per block: the q/k/v, output, both MLP and adaLN-Zero (6 x width) biases, 15 x width in all; DiffFit's scales
    (qkv 3 x width, output, attention and MLP branch) on the first half of the blocks; once: the patch projection's
    and the timestep MLP's biases, the class table (classes + 1 for the null label), the final adaLN and output biases.
    """
    width = config["num_attention_heads"] * config["attention_head_dim"]
    blocks, patch = config["num_layers"], config["patch_size"]
    out_channels = config.get("out_channels") or config["in_channels"]
    return (blocks * 15 * width + blocks // 2 * 6 * width + 3 * width + (config["num_embeds_ada_norm"] + 1) * width
            + 2 * width + patch * patch * out_channels)


def build(tiny: bool, device: str) -> Backbone:
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(**(TINY_DIT if tiny else DIT_XL_2_256))
    dit_init_(transformer)  # DiT's initialisation, one conditioning embedder shared by the blocks (as the original)
    vae = AutoencoderKL(**(TINY_VAE if tiny else SD_VAE)).eval().requires_grad_(False)
    net = DiffFitDiT(transformer)
    size = (TINY_VAE if tiny else SD_VAE)["sample_size"]
    return Backbone(net, GaussianDiffusion.linear(), "latent", 3, size, vae, vae, 0.18215,
                    info={"dataset": "imagewoof-shaped random data"}).to(device)


def random_woof(n_per_class: int, size: int) -> RealDataset:
    """ImageWoof-shaped data: 10 classes of random RGB images at the model's resolution."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (10 * n_per_class, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    imagenet = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return RealDataset(pixels, labels, [f"n0{i}" for i in range(10)], imagenet, "imagewoof", "train")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=2, help="fine-tuning global batch (the preset's is 8)")
    ap.add_argument("--steps", type=int, default=2, help="fine-tuning steps")
    ap.add_argument("--images", type=int, default=2, help="images to sample")
    ap.add_argument("--sample-steps", type=int, default=None, help="sampler steps (default: the preset's 50)")
    ap.add_argument("--compare", action="store_true", help="also batch-1 sampling and bf16 vs fp32 (for a GPU)")
    ap.add_argument("--tiny", action="store_true", help="toy widths (tests)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    config = resolve_config("minimax", "imagewoof", 10)  # the published preset: lambdas, memories, lr, sampler
    backbone = build(args.tiny, args.device)
    net = backbone.net
    total = sum(p.numel() for p in net.parameters())
    names = set(trainable_parameter_names(net, config.trainable))
    trainable = sum(p.numel() for n, p in net.named_parameters() if n in names)
    report = {"device": args.device, "tiny": args.tiny, "params_total": total, "params_trainable": trainable,
              "trainable_reference": REFERENCE_TRAINABLE,
              "trainable_expected": difffit_subset_size(TINY_DIT if args.tiny else DIT_XL_2_256),
              "batch": args.batch, "steps": args.steps,
              "image_size": backbone.image_size, "latent_shape": list(backbone.latent_shape)}
    if not args.tiny:
        assert abs(total - 675e6) / 675e6 < 0.01, f"DiT-XL/2 should have about 675 M parameters, got {total}"
        assert abs(trainable - REFERENCE_TRAINABLE) / REFERENCE_TRAINABLE < 0.02, \
            f"the DiffFit subset should be about 1.74 M parameters, got {trainable}"
    assert trainable == report["trainable_expected"], \
        f"the trainable subset has {trainable} parameters, the DiffFit rule gives {report['trainable_expected']}"
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    spec = config.train_spec("finetune")
    spec.steps, spec.batch_size, spec.device, spec.checkpoint_every, spec.log_every = (
        args.steps, args.batch, args.device, 0, 1)
    train = random_woof(max(1, args.batch), backbone.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_backbone(backbone, train, torch.arange(10), spec, Path(tmp) / "ft", progress=False)
        report["finetune_total_s"] = time.perf_counter() - start
        times = [json.loads(line)["time_s"] for line in (Path(tmp) / "ft" / "metrics.jsonl").read_text().splitlines()]
    steps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    report["finetune_step_s"] = statistics.median(steps[1:]) if len(steps) > 1 else steps[0]

    sample_steps = args.sample_steps or config.sample_steps
    seeds = image_seeds(0, torch.arange(10), 1)[: args.images]
    labels = torch.arange(args.images) % 10
    kwargs = dict(steps=sample_steps, cfg_scale=config.cfg_scale, guided_channels=config.cfg_channels,
                  progress=False)
    start = time.perf_counter()
    images = sample_images(backbone, labels, seeds, batch_size=args.images, **kwargs)
    report["sample_s_per_image"] = (time.perf_counter() - start) / args.images
    report["sample_steps"] = sample_steps
    assert images.shape == (args.images, 3, backbone.image_size, backbone.image_size)
    assert torch.isfinite(images).all()
    if args.compare:
        start = time.perf_counter()
        sample_images(backbone, labels, seeds, batch_size=1, **kwargs)
        report["sample_s_per_image_batch1"] = (time.perf_counter() - start) / args.images
        start = time.perf_counter()
        bf16 = sample_images(backbone, labels, seeds, batch_size=args.images, autocast_dtype=torch.bfloat16, **kwargs)
        report["sample_s_per_image_bf16"] = (time.perf_counter() - start) / args.images
        report["bf16_max_abs_pixel_diff"] = float((bf16 - images).abs().max())
    report["peak_memory_mb"] = peak_memory_mb(args.device)
    report["peak_rss_mb"] = peak_memory_mb("cpu")
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
