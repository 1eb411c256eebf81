"""Batched class-conditional sampling with classifier-free guidance (Ho & Salimans 2022; DiT's sampler), optionally
restricted to a guidance interval (Kynkaanniemi et al., NeurIPS 2024), with the reference's ancestral sampler or
DPM-Solver++ (Lu et al., 2022; diffusers' ``DPMSolverMultistepScheduler``).

Each image has its own seed, ``derive_seed(seed, class, index)``, which fixes its start noise and the noise of
every ancestral step; an image is therefore the same whatever batch it is generated in, any image can be
regenerated alone, and the first ``k`` images per class of a large set are exactly the set generated for IPC ``k``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gendistill.generative.backbone import Backbone
from gendistill.utils.faults import fault_point
from gendistill.utils.seeding import derive_seed, make_generator

__all__ = ["denoise", "dpm_solver", "generator_noise", "guided_model", "image_noise", "image_seeds", "sample_images"]


def image_seeds(seed: int, classes: torch.Tensor, per_class: int) -> torch.Tensor:
    """``[len(classes) * per_class]`` seeds, class-major (image ``k`` of class ``c`` -> ``(seed, c, k)``)."""
    return torch.tensor([derive_seed(seed, "sample", int(c), k) for c in classes.tolist() for k in range(per_class)],
                        dtype=torch.long)


def image_noise(seed: int, steps: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``[steps + 1, *shape]``: an image's start noise, then one draw per ancestral step, from one generator seeded
    with ``seed``. The start noise is drawn first and alone, as diffusers' pipelines draw it from a per-image
    ``torch.Generator().manual_seed(seed)``, so a diffusers pipeline given the recorded seeds starts from the same
    noise."""
    return generator_noise(make_generator(seed), steps, shape)


def generator_noise(generator: torch.Generator | None, steps: int, shape: tuple[int, ...]) -> torch.Tensor:
    """:func:`image_noise` drawn from a given generator (the start noise first, then the steps)."""
    start = torch.randn((1, *shape), generator=generator)
    return torch.cat([start, torch.randn((steps, *shape), generator=generator)])


def guided_model(backbone: Backbone, labels: torch.Tensor, scale: float, guided_channels: int,
                 interval: tuple[float, float] = (0.0, 1000.0)
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x, t) -> output`` with classifier-free guidance on the noise prediction.

    The conditional and unconditional passes run as one doubled batch on the same ``x``. ``guided_channels``
    limits guidance to the first channels of epsilon (3 as the original DiT; 0 = all), the remaining epsilon
    channels and the variance output are the conditional ones. ``interval = (lo, hi)``: guide only where the
    chain timestep ``t`` (0..999) lies in ``[lo, hi]``; elsewhere the conditional prediction alone (one pass).
    """
    net = backbone.net
    channels = net.in_channels
    null = torch.full_like(labels, backbone.null_label)
    if scale == 1.0:
        return lambda x, t: net(x, t, labels)
    k = channels if guided_channels <= 0 else min(guided_channels, channels)
    lo, hi = interval

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not lo <= float(t[0]) <= hi:  # one timestep per call: the whole batch is in or out
            return net(x, t, labels)
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        cond, uncond = out.chunk(2)
        guided = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
        return torch.cat([guided, cond[:, k:]], dim=1)

    return model


def dpm_solver(backbone: Backbone, steps: int):
    """diffusers' DPM-Solver++ (2nd order, multistep) over the backbone's training betas and prediction type."""
    from diffusers import DPMSolverMultistepScheduler

    chain = backbone.diffusion
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=chain.num_timesteps,
                                            trained_betas=chain.betas.float().numpy(),
                                            prediction_type=chain.prediction, algorithm_type="dpmsolver++",
                                            solver_order=2, lower_order_final=True)
    scheduler.set_timesteps(steps)
    return scheduler


def denoise(backbone: Backbone, labels: torch.Tensor, noise: torch.Tensor, *, steps: int, cfg_scale: float = 4.0,
            guided_channels: int = 3, cfg_interval: tuple[float, float] = (0.0, 1000.0), sampler: str = "ancestral",
            scheduler: Any = None, clip_denoised: bool = False, progress: Callable[[int], None] | None = None,
            guide: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """Clean model-space samples from ``noise``: the reference's ancestral sampler over the chain respaced to
    ``steps`` (``noise`` is ``[N, steps + 1, C, H, W]``: start noise, then one draw per step), or a diffusers
    multistep scheduler - ``scheduler`` if given, else DPM-Solver++ for ``sampler="dpmsolver++"`` - from the start
    noise ``noise[:, 0]`` (or ``noise`` itself when it is ``[N, C, H, W]``). ``labels`` are model class indices.
    ``guide``: sampling-time guidance of the ancestral sampler (see :meth:`GaussianDiffusion.sample`)."""
    model = guided_model(backbone, labels, cfg_scale, guided_channels, tuple(cfg_interval))
    step = progress or (lambda k: None)
    if scheduler is None and sampler == "ancestral":
        return backbone.diffusion.respace(steps).sample(model, noise, progress=step, clip_denoised=clip_denoised,
                                                        guide=guide)
    if guide is not None:
        raise ValueError("sampling-time guidance runs with the ancestral sampler (sampler=ancestral)")
    if scheduler is None:
        scheduler = dpm_solver(backbone, steps)
    scheduler.set_timesteps(steps)  # also resets a multistep scheduler's history
    start = noise[:, 0] if noise.dim() == 5 else noise
    return _solve(scheduler, model, start, backbone.latent_shape[0], step)


def _solve(scheduler, model: Callable, x: torch.Tensor, channels: int, progress: Callable[[int], None]
           ) -> torch.Tensor:
    """Run a diffusers multistep scheduler from the start noise ``x`` (model outputs cut to their first
    ``channels``: the learned variance is not used by an ODE solver)."""
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(x, torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)).float()
        x = scheduler.step(out[:, :channels], t, x).prev_sample
        progress(1)
    return x


@torch.no_grad()
def sample_images(backbone: Backbone, model_labels: torch.Tensor, seeds: torch.Tensor, *, steps: int = 50,
                  cfg_scale: float = 4.0, guided_channels: int = 3, batch_size: int = 64,
                  autocast_dtype: torch.dtype | None = None, clip_denoised: bool | None = None,
                  progress: bool = True, sampler: str = "ancestral",
                  cfg_interval: tuple[float, float] = (0.0, 1000.0),
                  guide_factory: Callable[[torch.Tensor, torch.Tensor], Callable[..., torch.Tensor]] | None = None
                  ) -> torch.Tensor:
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
            samples latents unclipped). Ancestral sampler only.
        sampler: ``ancestral`` (the reference) or ``dpmsolver++``.
        cfg_interval: chain timesteps ``[lo, hi]`` where guidance applies (see :func:`guided_model`).
        guide_factory: ``(model labels of the batch, image indices in seeds) -> guide`` for sampling-time guidance
            (MGD3, IGD; :mod:`gendistill.generative.guided`).
    """
    if sampler not in ("ancestral", "dpmsolver++"):
        raise ValueError(f"sampler must be ancestral or dpmsolver++, got {sampler!r}")
    from tqdm.auto import tqdm

    chain = backbone.diffusion.respace(steps)
    solver = dpm_solver(backbone, steps) if sampler == "dpmsolver++" else None
    clip = backbone.space == "pixel" if clip_denoised is None else clip_denoised
    options = dict(steps=steps, cfg_scale=cfg_scale, guided_channels=guided_channels, cfg_interval=cfg_interval,
                   sampler=sampler, scheduler=solver, clip_denoised=clip)
    net = backbone.net
    net.eval()
    device = next(net.parameters()).device
    shape = backbone.latent_shape
    out = []
    n = len(seeds)
    per_batch = chain.num_timesteps if solver is None else len(solver.timesteps)
    bar = tqdm(total=per_batch * ((n + batch_size - 1) // batch_size), desc="sampling", unit="step",
               disable=not progress, leave=False)
    for start in range(0, n, batch_size):
        chunk = seeds[start:start + batch_size].tolist()
        noise = torch.stack([image_noise(s, chain.num_timesteps, shape) for s in chunk]).to(device)
        labels = model_labels[start:start + batch_size].to(device)
        ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else torch.autocast(device.type, enabled=False))
        with ctx:
            guide = guide_factory(labels, torch.arange(start, start + len(chunk))) if guide_factory else None
            x0 = denoise(backbone, labels, noise, progress=bar.update, guide=guide, **options)
        fault_point("sample_batch")
        out.append(backbone.decode(x0.float()).cpu())
    bar.close()
    return torch.cat(out) if out else torch.empty(0, backbone.image_channels, backbone.image_size, backbone.image_size)
