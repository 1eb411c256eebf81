"""A small ``diffusers.AutoencoderKL`` trained on the dataset itself, so that a DiT can work in its latent space as the
reference's DiT-XL/2 works in Stable Diffusion's VAE latents (Rombach et al., CVPR 2022; Peebles & Xie, ICCV 2023).

The loss is L1 + L2 reconstruction plus a small KL term (``kl_weight``; no perceptual or adversarial loss: those need
networks we would have to download). The latent scaling factor is ``1 / std`` of the training latents (the role of
Stable Diffusion's 0.18215), stored in the saved config, so the diffusion model sees unit-variance latents. Training
is seeded by step, checkpointed atomically and resumes exactly.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gendistill.data.datasets import RealDataset
from gendistill.utils.atomic import atomic_torch_save, replace_dir, temp_dir_beside
from gendistill.utils.errors import CheckpointError, ConfigError, NonFiniteLossError
from gendistill.utils.seeding import derive_seed, make_generator

__all__ = ["AutoencoderSpec", "build_autoencoder", "latent_scale", "train_autoencoder"]


@dataclasses.dataclass
class AutoencoderSpec:
    """How the dataset's autoencoder is built and trained.

    Attributes:
        channels: channels per resolution level; ``len(channels) - 1`` downsamplings (3 levels: 28 -> 7).
        latent_channels: channels of the latent.
        steps / batch_size / lr: AdamW training budget.
        kl_weight: weight of the KL term (small: a lightly regularised latent, as Stable Diffusion's 1e-6).
    """

    channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    kl_weight: float = 1e-6


def build_autoencoder(spec: AutoencoderSpec, image_channels: int, image_size: int, seed: int = 0) -> nn.Module:
    """A freshly initialised ``AutoencoderKL`` for ``image_channels`` x ``image_size`` images."""
    from diffusers import AutoencoderKL

    factor = 2 ** (len(spec.channels) - 1)
    if image_size % factor:
        raise ConfigError(f"{image_size}px images do not divide by the autoencoder's downsampling factor {factor}; "
                          "pick vae_channels with fewer levels")
    groups = max(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in spec.channels))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(in_channels=image_channels, out_channels=image_channels,
                             down_block_types=("DownEncoderBlock2D",) * len(spec.channels),
                             up_block_types=("UpDecoderBlock2D",) * len(spec.channels),
                             block_out_channels=tuple(spec.channels), layers_per_block=1,
                             latent_channels=spec.latent_channels, norm_num_groups=groups, sample_size=image_size)


@torch.no_grad()
def latent_scale(vae: nn.Module, train: RealDataset, n: int = 2000, batch: int = 500) -> float:
    """``1 / std`` of the latent means of the first ``n`` training images."""
    means = [vae.encode(train.pixels[s:s + batch].float() / 127.5 - 1.0).latent_dist.mean
             for s in range(0, min(n, len(train)), batch)]
    return float(1.0 / torch.cat(means).std())


def train_autoencoder(train: RealDataset, spec: AutoencoderSpec, out: str | Path, *, seed: int = 0,
                      resume: bool = False, progress: bool = True, device: str = "cpu",
                      checkpoint_every: int = 500) -> Path:
    """Train the autoencoder on ``train`` (pixels in [-1, 1]) and save it to ``out/model`` (diffusers format, with
    the latent ``scaling_factor`` set); returns that folder. A finished folder is reused."""
    from tqdm.auto import tqdm

    out = Path(out)
    target = out / "model"
    if (target / "config.json").is_file():
        return target
    out.mkdir(parents=True, exist_ok=True)
    c, h, w = train.image_shape
    if h != w:
        raise ConfigError(f"{train.name} images are {h}x{w}; the autoencoder needs square images")
    vae = build_autoencoder(spec, c, h, seed).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=spec.lr)
    ckpt = out / "checkpoint.pt"
    step, elapsed = 0, 0.0
    if resume and ckpt.is_file():
        try:
            state = torch.load(ckpt, map_location=device, weights_only=True)
            vae.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step, elapsed = int(state["step"]), float(state["elapsed"])
        except Exception as exc:
            raise CheckpointError(f"{ckpt} cannot be loaded ({type(exc).__name__}); delete it to start over") from exc
    log = out / "metrics.jsonl"
    t0 = time.perf_counter() - elapsed
    bar = tqdm(total=spec.steps, initial=step, desc="autoencoder", unit="it", disable=not progress, leave=False)
    vae.train()
    while step < spec.steps:
        g = make_generator(derive_seed(seed, "autoencoder", step))
        idx = torch.randint(len(train), (spec.batch_size,), generator=g)
        x = train.pixels[idx].to(device).float() / 127.5 - 1.0
        if train.flip_ok:
            flip = (torch.rand(spec.batch_size, generator=g) < 0.5).to(device).view(-1, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        rec = vae.decode(z).sample
        err = rec - x
        loss = err.abs().mean() + err.pow(2).mean() + spec.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 50 == 0 or step == spec.steps:
            value = float(loss.detach())
            if value != value or abs(value) == float("inf"):
                raise NonFiniteLossError(f"autoencoder step {step}: non-finite loss; lower vae_lr")
            with open(log, "a") as fh:
                fh.write(json.dumps({"stage": "autoencoder", "step": step, "loss": value,
                                     "time_s": time.perf_counter() - t0}) + "\n")
        if checkpoint_every > 0 and step % checkpoint_every == 0 and step < spec.steps:
            atomic_torch_save(ckpt, {"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                     "elapsed": time.perf_counter() - t0})
    bar.close()
    vae.eval().cpu()
    vae.register_to_config(scaling_factor=latent_scale(vae, train))
    tmp = temp_dir_beside(target)
    vae.save_pretrained(tmp)
    meta: dict[str, Any] = {"dataset": train.name, "spec": dataclasses.asdict(spec), "seed": seed, "steps": step,
                            "train_time_s": time.perf_counter() - t0}
    (tmp / "gendistill_autoencoder.json").write_text(json.dumps(meta, indent=2))
    replace_dir(tmp, target)
    ckpt.unlink(missing_ok=True)
    return target
