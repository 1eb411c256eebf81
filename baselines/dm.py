"""DM - Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023; arXiv 2110.04181).

Each iteration samples a fresh randomly initialised ConvNet (never trained, parameters frozen), embeds a real
batch and the synthetic images of every class under siamese DSA (same parameters for the real and synthetic
images of a class), and minimises the sum over classes of the squared distance between the mean embeddings.
SGD on the images, lr 1.0, momentum 0.5, real initialisation, 20000 iterations (reference §2.4).

Speed: all classes go through the network in one batched forward per side (the reference loops over
classes); the real side runs under ``inference_mode``, in cache-sized row blocks on CPU (:mod:`gendistill.blocking`).
Batching means one DSA family per iteration for all classes (the reference draws one per class; parameters
stay per class), see :mod:`gendistill.augment`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from gendistill.baselines.base import PixelConfig, PixelDistiller
from gendistill.data.datasets import RealDataset
from gendistill.distiller import budget_field
from gendistill.nn.blocking import block_rows, forward_in_blocks
from gendistill.nn.compiling import network_forward
from gendistill.registry import register_method

__all__ = ["DMConfig", "DistributionMatching", "mean_embedding_loss"]


@dataclasses.dataclass
class DMConfig(PixelConfig):
    """DM settings (published defaults).

    Attributes:
        real_chunk: real images per forward block on the frozen network (speed only); 0 picks the CPU
            cache-blocking size of :mod:`gendistill.blocking` (whole batch on GPU).
    """

    iterations: int = budget_field(20000, zero_is_full=True)
    lr_img: float = 1.0
    init: str = "real"
    real_chunk: int = 0


def mean_embedding_loss(real_feats: torch.Tensor, syn_feats: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``sum_c || mean(real_c) - mean(syn_c) ||^2`` for class-major feature batches ``[C*n, D]``, ``[C*m, D]``."""
    real_mean = real_feats.reshape(num_classes, -1, real_feats.shape[-1]).mean(1)
    syn_mean = syn_feats.reshape(num_classes, -1, syn_feats.shape[-1]).mean(1)
    return ((real_mean - syn_mean) ** 2).sum()


@register_method("dm", config=DMConfig, paper="Zhao & Bilen, Dataset Condensation with Distribution Matching, "
                 "WACV 2023", year=2023, kind="pixel", default_eval="dsa")
class DistributionMatching(PixelDistiller):
    """Distribution matching of mean embeddings through random frozen networks."""

    def step(self, it: int, state: dict[str, Any], train: RealDataset, generator: torch.Generator, seed: int
             ) -> dict[str, torch.Tensor]:
        cfg = self.config
        c = train.num_classes
        images = state["images"]
        ipc = self.images_per_class(state, train)
        net = self.fresh_network(train, seed, it)
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        real, _ = train.sample_all_classes(cfg.batch_real, generator)
        n_real = real.shape[0] // c
        dsa = self.dsa_for(train)
        draw = dsa.draw_siamese(c, train.image_shape[-1], generator)
        real_groups = torch.arange(c).repeat_interleave(n_real)
        syn_groups = torch.arange(c).repeat_interleave(ipc)
        embed = network_forward(net, "embed")  # compiled when $GENDISTILL_COMPILE asks for it
        with torch.inference_mode(), self.real_side():
            real_aug = dsa.apply(real.to(self.device), draw, real_groups)
            rows = cfg.real_chunk or block_rows(net, real_aug)
            real_feats = forward_in_blocks(lambda xb: embed(xb).float(), real_aug, rows)
        syn_feats = embed(dsa.apply(images, draw, syn_groups))
        loss = mean_embedding_loss(real_feats, syn_feats, c)
        self.update_images(state, loss)
        return {"loss": loss.detach()}
