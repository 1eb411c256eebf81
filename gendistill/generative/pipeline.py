"""A ``diffusers.DiffusionPipeline`` for the class-conditional models gendistill saves and ships.

Latent-space DiTs load in diffusers' own ``DiTPipeline`` (their weights carry the DiffFit scales folded in; DiTPipeline
guides with the ImageNet null class 1000, so it samples other models at ``guidance_scale=1`` only). Pixel-space models
- every model of the ``cpu`` presets and the shipped ones, DiT or U-Net - have no VAE, which ``DiTPipeline`` requires;
:class:`GendistillPipeline` loads both kinds::

    from gendistill.generative.pipeline import GendistillPipeline
    pipe = GendistillPipeline.from_pretrained("gendistill/dit-mnist")        # or any saved model folder
    images = pipe(class_labels=[0, 1, 7], guidance_scale=2.0).images

It guides with the model's own null class (the last row of its class table), guides the first ``guided_channels``
epsilon channels, uses the learned-range variance with the reference's ancestral sampler (``sampler="ancestral"``,
exactly gendistill's sampler) or any diffusers scheduler set on the pipeline (``sampler=None``: ``pipe.scheduler``),
maps class names through ``id2label``, and with one ``torch.Generator`` per image reproduces gendistill's images for
the recorded seeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from gendistill.generative.backbone import LATENT_SCALE, Backbone, DiffFitDiT, DiffFitUNet
from gendistill.generative.diffusion import GaussianDiffusion
from gendistill.generative.sample import denoise, generator_noise

__all__ = ["GendistillPipeline", "load_pipeline"]


class GendistillPipeline(DiffusionPipeline):
    """Class-conditional generation from a gendistill model folder (pixel or latent space, DiT or U-Net)."""

    model_cpu_offload_seq = "transformer->unet->vae"
    _optional_components = ["transformer", "unet", "vae"]

    def __init__(self, scheduler: Any, transformer: Any = None, unet: Any = None, vae: Any = None,
                 id2label: dict[str, str] | None = None) -> None:
        super().__init__()
        self.register_modules(scheduler=scheduler, transformer=transformer, unet=unet, vae=vae)
        self.labels = {int(k): v for k, v in (id2label or {}).items()}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> GendistillPipeline:
        """Load a saved or shipped model (``gendistill/<name>`` ids resolve to the shipped copy)."""
        from gendistill.generative.hub import resolve_model_source

        source = resolve_model_source(pretrained_model_name_or_path)
        pipe = super().from_pretrained(source, **kwargs)
        index = Path(source) / "model_index.json"
        if index.is_file():
            pipe.labels = {int(k): v for k, v in (json.loads(index.read_text()).get("id2label") or {}).items()}
        meta = Path(source) / "gendistill.json"
        pipe._meta = json.loads(meta.read_text()) if meta.is_file() else {}
        return pipe

    def get_label_ids(self, names: str | list[str]) -> list[int]:
        """Class indices of class names (``id2label``)."""
        lookup = {v: k for k, v in self.labels.items()}
        names = [names] if isinstance(names, str) else names
        missing = [n for n in names if n not in lookup]
        if missing:
            raise ValueError(f"unknown class names {missing}; known: {', '.join(lookup)}")
        return [lookup[n] for n in names]

    def _backbone(self) -> Backbone:
        """The pipeline's components as the :class:`Backbone` gendistill's sampler runs (built once)."""
        cached = getattr(self, "_cached_backbone", None)
        if cached is not None and cached.net.inner is (self.transformer or self.unet):
            return cached
        self._cached_backbone = self._build_backbone()
        return self._cached_backbone

    def _build_backbone(self) -> Backbone:
        inner = self.transformer if self.transformer is not None else self.unet
        net = DiffFitDiT(inner, scaled_blocks=0) if self.transformer is not None else _unscaled_unet(inner)
        config = self.scheduler.config
        betas = (torch.tensor(np.asarray(config["trained_betas"]), dtype=torch.float64)
                 if config.get("trained_betas") is not None else None)
        learn_sigma = inner.config.out_channels == 2 * inner.config.in_channels
        prediction = config.get("prediction_type", "epsilon")
        if betas is None:
            diffusion = GaussianDiffusion.from_schedule(config.get("beta_schedule", "linear"),
                                                        int(config.get("num_train_timesteps", 1000)),
                                                        float(config.get("beta_start", 1e-4)),
                                                        float(config.get("beta_end", 0.02)), learn_sigma, prediction)
        else:
            diffusion = GaussianDiffusion(betas, learn_sigma, prediction=prediction)
        meta = getattr(self, "_meta", {})
        if self.vae is None:
            return Backbone(net, diffusion, "pixel", net.in_channels, net.sample_size, latent_scale=1.0)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        scale = float(meta.get("latent_scale") or getattr(self.vae.config, "scaling_factor", LATENT_SCALE))
        return Backbone(net, diffusion, "latent", self.vae.config.out_channels, net.sample_size * factor, self.vae,
                        self.vae, scale)

    @torch.no_grad()
    def __call__(self, class_labels: list[int] | list[str], guidance_scale: float = 1.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, num_inference_steps: int = 50,
                 sampler: str | None = "ancestral", guided_channels: int = 0,
                 guidance_interval: tuple[float, float] = (0.0, 1000.0), output_type: str = "pil",
                 return_dict: bool = True) -> ImagePipelineOutput | tuple:
        """Generate one image per class label (indices or ``id2label`` names).

        Args:
            guidance_scale: classifier-free guidance (1 = none) with the model's own null class.
            generator: one per image to reproduce gendistill's images for its recorded seeds.
            sampler: ``ancestral`` (gendistill's sampler), ``dpmsolver++``, or None for ``pipe.scheduler``.
            guided_channels: epsilon channels guided (0 = all).
            guidance_interval: chain timesteps where guidance applies.
            output_type: ``pil``, ``np`` or ``pt`` (pixels in [0, 1]).
        """
        if class_labels and isinstance(class_labels[0], str):
            class_labels = self.get_label_ids(class_labels)
        backbone = self._backbone()
        device = self._execution_device
        backbone.to(device)
        n = len(class_labels)
        shape = backbone.latent_shape
        steps = num_inference_steps
        gens = generator if isinstance(generator, list) else [generator] * n
        if len(gens) != n:
            raise ValueError(f"{len(gens)} generators for {n} images")
        noise = torch.stack([generator_noise(g, steps, shape) for g in gens]).to(device)
        labels = torch.tensor(class_labels, dtype=torch.long, device=device)
        bar = self.progress_bar(total=steps)
        x0 = denoise(backbone, labels, noise, steps=steps, cfg_scale=guidance_scale, guided_channels=guided_channels,
                     cfg_interval=guidance_interval, sampler=sampler or "scheduler",
                     scheduler=self.scheduler if sampler is None else None,
                     clip_denoised=backbone.space == "pixel", progress=lambda k: bar.update(k))
        bar.close()
        images = backbone.decode(x0.float()).cpu()
        if output_type == "pt":
            out: Any = images
        else:
            array = images.permute(0, 2, 3, 1).numpy()
            out = self.numpy_to_pil(array) if output_type == "pil" else array
        if not return_dict:
            return (out,)
        return ImagePipelineOutput(images=out)


def _unscaled_unet(unet: Any) -> DiffFitUNet:
    """A U-Net wrapper whose scales stay 1 (the saved weights hold them folded in)."""
    return DiffFitUNet(unet)


def load_pipeline(source: str | Path, **kwargs: Any) -> GendistillPipeline:
    """:meth:`GendistillPipeline.from_pretrained`."""
    return GendistillPipeline.from_pretrained(source, **kwargs)
