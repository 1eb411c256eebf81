"""Shared machinery of the pixel-optimisation methods: learnable synthetic images, their optimiser, init."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch

from gendistill.data.datasets import RealDataset
from gendistill.distiller import IterativeDistiller, budget_field
from gendistill.nn.augment import DSA, FULL_DSA
from gendistill.nn.nets import create_network
from gendistill.synset.format import SyntheticSet
from gendistill.utils.seeding import derive_seed

__all__ = ["FULL_DSA", "PixelConfig", "PixelDistiller", "initial_images"]


@dataclasses.dataclass
class PixelConfig:
    """Fields shared by DC, DSA, DM and CAFE.

    Attributes:
        iterations: outer iterations (the published budget by default).
        lr_img: learning rate of the synthetic images (SGD).
        momentum_img: SGD momentum of the synthetic images (0.5 in the reference code).
        batch_real: real images per class per iteration.
        init: ``real`` (random real images of each class) or ``noise`` (N(0, 1) in the model space).
        model: distillation network (network-registry name).
        dsa: use siamese DSA augmentation in the matching.
        dsa_strategy: DSA families (flip is dropped for digit datasets).
        amp_real: run the real side (frozen real features, real gradients) under bfloat16 autocast. Off by
            default (faithful fp32). On CPUs with avx512_bf16 (the development machine) it about doubles the
            convolution throughput; the synthetic side and the image updates stay in fp32.
        device: where to run.
    """

    iterations: int = budget_field(1000, zero_is_full=True)
    lr_img: float = 0.1
    momentum_img: float = 0.5
    batch_real: int = budget_field(256)
    init: Literal["real", "noise"] = "real"
    model: str = "convnet"
    dsa: bool = True
    dsa_strategy: str = FULL_DSA
    amp_real: bool = False
    device: str = "cpu"


def initial_images(train: RealDataset, ipc: int, init: str, generator: torch.Generator) -> torch.Tensor:
    """``[C*ipc, ...]`` class-major starting images: random real images of each class (``real``) or N(0, 1) noise
    in the model space (``noise``)."""
    c = train.num_classes
    if init == "real":
        idx = train.sample_indices(ipc, generator).reshape(-1)
        if idx.numel() != c * ipc:
            from gendistill.utils.errors import GendistillError

            raise GendistillError(f"--ipc {ipc} exceeds the real images of the smallest class of {train.name}")
        return train.images(idx).clone()
    return torch.randn(c * ipc, *train.image_shape, generator=generator)


class PixelDistiller(IterativeDistiller):
    """Base for methods that optimise the synthetic pixels directly with SGD (DC, DSA, DM, CAFE).

    The live state is ``{"images": leaf tensor [C*ipc, ...], "optimizer": SGD}``; class-major order, so the
    images of class ``c`` are ``images[c*ipc:(c+1)*ipc]``.
    """

    def init_state(self, train: RealDataset, ipc: int, generator: torch.Generator, seed: int) -> dict[str, Any]:
        return self._live_state(initial_images(train, ipc, self.config.init, generator).to(self.device), None)

    def _live_state(self, images: torch.Tensor, opt_state: dict | None) -> dict[str, Any]:
        images = images.detach().clone().requires_grad_(True)
        opt = torch.optim.SGD([images], lr=self.config.lr_img, momentum=self.config.momentum_img)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        return {"images": images, "optimizer": opt}

    def checkpoint_state(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"images": state["images"].detach(), "optimizer": state["optimizer"].state_dict()}

    def restore_state(self, saved: dict[str, Any]) -> dict[str, Any]:
        return self._live_state(saved["images"].to(self.device), saved["optimizer"])

    def finalize(self, state: dict[str, Any], train: RealDataset, ipc: int, seed: int) -> SyntheticSet:
        labels = torch.arange(train.num_classes).repeat_interleave(ipc)
        return self.make_synset(train, state["images"], labels, ipc, seed)

    # ---------------------------------------------------------------------------------------- helpers
    @staticmethod
    def images_per_class(state: dict[str, Any], train: RealDataset) -> int:
        """IPC of the live synthetic images (class-major, ``num_classes * ipc`` rows)."""
        return state["images"].shape[0] // train.num_classes

    def dsa_for(self, train: RealDataset) -> DSA:
        """The siamese augmentation of this run (disabled when ``dsa`` is off)."""
        return DSA.for_dataset(train.flip_ok, self.config.dsa_strategy) if self.config.dsa else DSA("none")

    def fresh_network(self, train: RealDataset, seed: int, it: int, **kwargs: Any) -> torch.nn.Module:
        """A randomly initialised network for iteration ``it`` (seeded, so resumed runs see the same nets)."""
        c, h, _ = train.image_shape
        net = create_network(self.config.model, c, train.num_classes, h, seed=derive_seed(seed, "net", it), **kwargs)
        return net.to(self.device)

    def real_side(self) -> torch.autocast:
        """Autocast context of the real side: bfloat16 when ``amp_real`` is set, a no-op otherwise."""
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.config.amp_real)

    def set_lr(self, state: dict[str, Any], lr: float) -> None:
        for group in state["optimizer"].param_groups:
            group["lr"] = lr

    def update_images(self, state: dict[str, Any], loss: torch.Tensor) -> None:
        opt = state["optimizer"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
