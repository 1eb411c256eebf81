"""Batched class-conditional sampling with classifier-free guidance (Ho & Salimans 2022; DiT's sampler).

Each image has its own seed, ``derive_seed(seed, class, index)``, which fixes its start noise and the noise of
every ancestral step; an image is therefore the same whatever batch it is generated in, any image can be
regenerated alone, and the first ``k`` images per class of a large set are exactly the set generated for IPC ``k``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gendistill.generative.backbone import Backbone
from gendistill.utils.seeding import derive_seed, make_generator

__all__ = ["guided_model", "image_seeds", "sample_images"]


def image_seeds(seed: int, classes: torch.Tensor, per_class: int) -> torch.Tensor:
    """``[len(classes) * per_class]`` seeds, class-major (image ``k`` of class ``c`` -> ``(seed, c, k)``)."""
    return torch.tensor([derive_seed(seed, "sample", int(c), k) for c in classes.tolist() for k in range(per_class)],
                        dtype=torch.long)


def guided_model(backbone: Backbone, labels: torch.Tensor, scale: float, guided_channels: int
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x, t) -> output`` with classifier-free guidance on the noise prediction.

    The conditional and unconditional passes run as one doubled batch on the same ``x``. ``guided_channels``
    limits guidance to the first channels of epsilon (3 as the original DiT; 0 = all), the remaining epsilon
    channels and the variance output are the conditional ones.
    """
    net = backbone.net
    channels = net.in_channels
    null = torch.full_like(labels, backbone.null_label)
    if scale == 1.0:
        return lambda x, t: net(x, t, labels)
    k = channels if guided_channels <= 0 else min(guided_channels, channels)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        cond, uncond = out.chunk(2)
        guided = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
        return torch.cat([guided, cond[:, k:]], dim=1)

    return model


@torch.no_grad()
def sample_images(backbone: Backbone, model_labels: torch.Tensor, seeds: torch.Tensor, *, steps: int = 50,
                  cfg_scale: float = 4.0, guided_channels: int = 3, batch_size: int = 64,
                  autocast_dtype: torch.dtype | None = None, clip_denoised: bool | None = None,
                  progress: bool = True) -> torch.Tensor:
    """Generate one image per (model label, seed): pixels in [0, 1], ``[N, C, H, W]`` at the model's resolution.

    Args:
        backbone: model (sampled as is: load the EMA weights first).
        model_labels: model class index per image ``[N]``.
        seeds: one seed per image ``[N]``.
        steps: respaced ancestral steps (50 as the reference).
        cfg_scale: guidance scale (1 = no guidance).
        guided_channels: epsilon channels guided (3 as DiT; 0 = all).
        batch_size: images per batch (each batch runs ``2 * batch_size`` through the network with guidance).
        autocast_dtype: e.g. ``torch.bfloat16`` on GPU.
        clip_denoised: clamp ``x0_hat`` to [-1, 1] at every step (default: in pixel space only; the reference
            samples latents unclipped).
    """
    from tqdm.auto import tqdm

    chain = backbone.diffusion.respace(steps)
    clip = backbone.space == "pixel" if clip_denoised is None else clip_denoised
    net = backbone.net
    net.eval()
    device = next(net.parameters()).device
    shape = backbone.latent_shape
    out = []
    n = len(seeds)
    bar = tqdm(total=chain.num_timesteps * ((n + batch_size - 1) // batch_size), desc="sampling", unit="step",
               disable=not progress, leave=False)
    for start in range(0, n, batch_size):
        chunk = seeds[start:start + batch_size].tolist()
        noise = torch.stack([torch.randn((chain.num_timesteps + 1, *shape), generator=make_generator(s))
                             for s in chunk]).to(device)
        labels = model_labels[start:start + batch_size].to(device)
        model = guided_model(backbone, labels, cfg_scale, guided_channels)
        ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else torch.autocast(device.type, enabled=False))
        with ctx:
            x0 = chain.sample(model, noise, progress=bar.update, clip_denoised=clip)
        out.append(backbone.decode(x0.float()).cpu())
    bar.close()
    return torch.cat(out) if out else torch.empty(0, backbone.image_channels, backbone.image_size, backbone.image_size)
