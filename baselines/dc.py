"""DC - Dataset Condensation with Gradient Matching (Zhao, Mopuri & Bilen, ICLR 2021) and
DSA - Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021).

Each outer iteration samples a fresh ConvNet. ``outer_loop`` times: for every class, match the gradient of
the loss on a real batch (256 images) with the gradient on the synthetic images of that class under the
layer-wise distance (:func:`baselines.matching.gradient_distance`), step the images (SGD lr 0.1, momentum 0.5);
then, except after the last outer step, train the network on the synthetic set for ``inner_loop`` epochs
(SGD lr 0.01, batch 256). Loops per IPC follow the reference ``get_loops``: 1 -> (1, 1), 10 -> (10, 50),
20 -> (20, 25), 30 -> (30, 20), 40 -> (40, 15), 50 -> (50, 10). DC starts from noise without augmentation;
DSA starts from real images and applies siamese DSA to both sides (and non-siamese DSA in the inner loop).

Speed: per-class gradients come from :func:`baselines.matching.per_class_gradients`, a loop over classes by
default (measured ~3x faster than one ``vmap(grad(...))`` call on CPU; ``--set class_batching=vmap`` for the
batched variant), and the images get one update from the loss summed over classes, as the reference.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from gendistill.baselines.base import PixelConfig, PixelDistiller
from gendistill.baselines.matching import gradient_distance, per_class_gradients
from gendistill.data.datasets import RealDataset
from gendistill.distiller import budget_field
from gendistill.evaluation.protocols import EvalProtocol
from gendistill.evaluation.trainer import train_network
from gendistill.registry import register_method
from gendistill.utils.errors import ConfigError

__all__ = ["DCConfig", "DSAConfig", "GradientMatching", "freeze_batchnorm_statistics", "get_loops"]

_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def get_loops(ipc: int) -> tuple[int, int]:
    """``(outer_loop, inner_loop)`` of the reference for ``ipc``; other IPCs need explicit settings."""
    if ipc not in _LOOPS:
        raise ConfigError(f"the reference defines loops only for ipc {sorted(_LOOPS)}; set outer_loop and "
                          f"inner_loop (e.g. --set outer_loop=10 --set inner_loop=50) for ipc {ipc}")
    return _LOOPS[ipc]


@dataclasses.dataclass
class DCConfig(PixelConfig):
    """DC settings (published defaults).

    Attributes:
        lr_net: SGD learning rate of the network's inner training on the synthetic set.
        batch_train: batch size of that inner training.
        outer_loop: matching steps per outer iteration (0 = the reference value for the IPC).
        inner_loop: network epochs on the synthetic set between matching steps (0 = reference value).
        metric: gradient distance (``ours``, ``mse``, ``cos``).
        class_batching: per-class gradients by a ``loop`` over classes or one ``vmap`` call (see
            :func:`baselines.matching.per_class_gradients`; ``loop`` measured faster on CPU).
        bn_images_per_class: real images per class that set a BatchNorm network's statistics before each
            matching step (the reference's ``BNSizePC``; networks without BatchNorm ignore it).
    """

    iterations: int = budget_field(1000, zero_is_full=True)
    lr_img: float = 0.1
    init: Literal["real", "noise"] = "noise"
    dsa: bool = False
    lr_net: float = 0.01
    batch_train: int = 256
    outer_loop: int = budget_field(0, zero_is_full=True)
    inner_loop: int = budget_field(0, zero_is_full=True)
    metric: Literal["ours", "mse", "cos"] = "ours"
    class_batching: Literal["loop", "vmap"] = "loop"
    bn_images_per_class: int = 16


@dataclasses.dataclass
class DSAConfig(DCConfig):
    """DSA settings: DC with real initialisation and siamese augmentation."""

    init: Literal["real", "noise"] = "real"
    dsa: bool = True


def freeze_batchnorm_statistics(net: nn.Module, train: RealDataset, per_class: int, generator: torch.Generator,
                                device: torch.device) -> None:
    """DC's BatchNorm handling before matching (``main.py``, ``BNSizePC = 16``): one train-mode forward of
    ``per_class`` real images of every class updates the running statistics, then every BatchNorm layer is put
    in eval mode so the matching forward passes use (and keep) those statistics."""
    x, _ = train.sample_all_classes(per_class, generator)
    net.train()
    with torch.no_grad():
        net(x.to(device))
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@register_method("dc", config=DCConfig, paper="Zhao, Mopuri & Bilen, Dataset Condensation with Gradient "
                 "Matching, ICLR 2021", year=2021, kind="pixel", default_eval="dc")
class GradientMatching(PixelDistiller):
    """Per-class gradient matching along the training trajectory of fresh networks."""

    def _loops(self, ipc: int) -> tuple[int, int]:
        if self.config.outer_loop and self.config.inner_loop:
            return self.config.outer_loop, self.config.inner_loop
        return get_loops(ipc)

    def effective_budget(self, train: RealDataset, ipc: int) -> dict[str, float]:
        """Budget as it runs: the reference loops when ``outer_loop``/``inner_loop`` are 0."""
        outer, inner = self._loops(ipc)
        return {"outer_loop": outer, "inner_loop": inner}

    def init_state(self, train: RealDataset, ipc: int, generator: torch.Generator, seed: int) -> dict[str, Any]:
        self._loops(ipc)  # fail early for an IPC without reference loops
        return super().init_state(train, ipc, generator, seed)

    def step(self, it: int, state: dict[str, Any], train: RealDataset, generator: torch.Generator, seed: int
             ) -> dict[str, torch.Tensor]:
        cfg = self.config
        c = train.num_classes
        images = state["images"]
        ipc = self.images_per_class(state, train)
        outer_loop, inner_loop = self._loops(ipc)
        net = self.fresh_network(train, seed, it)
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        net.train()
        dsa = self.dsa_for(train)
        labels_syn = torch.arange(c, device=self.device).repeat_interleave(ipc).view(c, ipc)
        total = torch.zeros((), device=self.device)
        for ol in range(outer_loop):
            if has_bn:
                freeze_batchnorm_statistics(net, train, cfg.bn_images_per_class, generator, self.device)
            params = {k: v.detach() for k, v in net.named_parameters()}
            real, _ = train.sample_all_classes(cfg.batch_real, generator)
            real = real.to(self.device)
            n_real = real.shape[0] // c
            draw = dsa.draw_siamese(c, train.image_shape[-1], generator)
            real = dsa.apply(real, draw, torch.arange(c).repeat_interleave(n_real))
            syn = dsa.apply(images, draw, torch.arange(c).repeat_interleave(ipc))
            labels_real = torch.arange(c, device=self.device).repeat_interleave(n_real).view(c, n_real)
            with self.real_side():
                g_real = per_class_gradients(net, params, real.view(c, n_real, *real.shape[1:]), labels_real,
                                             mode=cfg.class_batching)
            g_real = {k: v.detach().float() for k, v in g_real.items()}
            g_syn = per_class_gradients(net, params, syn.view(c, ipc, *syn.shape[1:]), labels_syn,
                                        mode=cfg.class_batching)
            loss = gradient_distance(g_syn, g_real, cfg.metric, batch_dims=1)
            self.update_images(state, loss)
            total = total + loss.detach()
            if ol == outer_loop - 1:
                break
            inner = EvalProtocol(name="inner", epochs=inner_loop - 1, batch_size=cfg.batch_train, lr=cfg.lr_net,
                                 momentum=0.0, weight_decay=0.0, schedule="constant",
                                 dsa_strategy=dsa.strategy if cfg.dsa else "")
            train_network(net, images.detach(), labels_syn.reshape(-1), inner, generator, flip_ok=train.flip_ok,
                          device=self.device)
            net.train()
        return {"loss": total / outer_loop}


@register_method("dsa", config=DSAConfig, paper="Zhao & Bilen, Dataset Condensation with Differentiable Siamese "
                 "Augmentation, ICML 2021", year=2021, kind="pixel", default_eval="dsa")
class SiameseGradientMatching(GradientMatching):
    """DC with siamese differentiable augmentation and real initialisation."""
