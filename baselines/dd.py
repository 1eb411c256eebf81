"""DD - Dataset Distillation (Wang, Zhu, Torralba & Efros, arXiv 1811.10959, 2018).

Learnables: synthetic images (``distill_steps`` blocks, each with ``ipc / distill_steps`` images per class and
fixed hard labels) and one learning rate per unrolled step, ``eta_t = softplus(rho_t)`` initialised to
``lr_init``. Each iteration draws a fresh network theta_0 (unknown-init setting), initialised as the reference's
default ``--init xavier`` (Xavier-normal, gain 1, zero biases; reference details §1), unrolls
``theta_{t+1} = theta_t - eta_t * grad l(x_{t mod steps}; theta_t)`` for ``distill_steps * distill_epochs``
steps with ``torch.func.functional_call``, and takes an Adam step (lr 0.01, betas (0.5, 0.999)) on the images
and learning rates from the loss of theta_T on a real batch, back-propagated through the whole unroll (memory
grows with the number of steps).

Real batches follow the reference's ``DataLoader(shuffle=True)``: ``epochs`` (400) passes over the training set,
each a fresh permutation cut into ``ceil(N / batch_real)`` batches of 1024 (the last one smaller), so MNIST gives
400 x 59 = 23600 iterations and CIFAR-10 400 x 49 = 19600. ``StepLR(decay_epochs=40, 0.5)`` is stepped at the
start of every epoch before its first update, as the reference does, so epoch ``e`` (0-based) runs at
``lr_img * 0.5 ** ((e + 1) // 40)``. Networks: LeNet for MNIST, ``alexcifarnet`` for CIFAR.

Besides the shared protocol, :func:`evaluate_learned_schedule` evaluates the set DD's own way: fresh networks
(initialised like the distillation networks) trained only by the learned unroll (registered as the ``dd``
evaluator: ``gendistill eval --protocol dd``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from gendistill.data.datasets import RealDataset
from gendistill.distiller import IterativeDistiller, budget_field
from gendistill.evaluation.evaluate import EvalResult
from gendistill.evaluation.protocols import register_evaluator
from gendistill.evaluation.trainer import split_accuracy
from gendistill.nn.nets import create_network, xavier_init_
from gendistill.registry import register_method
from gendistill.synset.format import SyntheticSet
from gendistill.utils.errors import ConfigError, GendistillError
from gendistill.utils.seeding import derive_seed, make_generator

__all__ = ["DDConfig", "DatasetDistillation", "dd_network", "evaluate_learned_schedule", "unrolled_loss"]


@dataclasses.dataclass
class DDConfig:
    """DD settings (published MNIST defaults: 400 epochs of 1024-image real batches).

    Attributes:
        iterations: outer Adam steps (0 = ``epochs`` x batches per epoch, the reference's count; a smaller
            number stops early, a reduced budget).
        epochs: passes over the real training set.
        distill_steps: image blocks (0 = ipc, i.e. one image per class per step).
        distill_epochs: passes over the blocks in the unroll.
        lr_init: initial per-step learning rate.
        lr_img: Adam learning rate on images and learning rates.
        beta1: Adam beta1.
        beta2: Adam beta2.
        decay_epochs: epochs between x``decay`` steps of the Adam learning rate (StepLR).
        decay: decay factor.
        batch_real: real images per outer step (consecutive slices of a per-epoch permutation).
        model: network unrolled through (LeNet for MNIST, ``alexcifarnet`` for CIFAR in the paper).
        init: network initialisation: ``xavier`` (the reference default) or ``default`` (PyTorch's).
        init_gain: Xavier gain (the reference's ``--init_param``).
        device: where to run.
    """

    iterations: int = budget_field(0, zero_is_full=True)
    epochs: int = budget_field(400)
    distill_steps: int = 0
    distill_epochs: int = 3
    lr_init: float = 0.02
    lr_img: float = 0.01
    beta1: float = 0.5
    beta2: float = 0.999
    decay_epochs: int = 40
    decay: float = 0.5
    batch_real: int = budget_field(1024)
    model: str = "lenet"
    init: Literal["xavier", "default"] = "xavier"
    init_gain: float = 1.0
    device: str = "cpu"


def dd_network(name: str, channels: int, num_classes: int, image_size: int, seed: int, init: str = "xavier",
               gain: float = 1.0) -> torch.nn.Module:
    """A network as DD creates it: the registry's architecture, re-initialised by ``init``."""
    net = create_network(name, channels, num_classes, image_size, seed=seed)
    if init == "xavier":
        from gendistill.utils.seeding import seeded

        with seeded(derive_seed(seed, "xavier")):
            xavier_init_(net, gain)
    elif init != "default":
        raise ConfigError(f"unknown DD init {init!r}; use xavier or default")
    return net


def unrolled_loss(net: torch.nn.Module, params0: dict[str, torch.Tensor], images: torch.Tensor,
                  labels: torch.Tensor, raw_lrs: torch.Tensor, real_x: torch.Tensor, real_y: torch.Tensor
                  ) -> torch.Tensor:
    """Loss on ``(real_x, real_y)`` after the unrolled GD steps; differentiable w.r.t. images and raw_lrs.

    Args:
        net: architecture (its own parameters are ignored).
        params0: initial parameters (leaves requiring grad).
        images: ``[steps, m, C, H, W]`` synthetic blocks.
        labels: ``[steps, m]`` their labels.
        raw_lrs: ``[T]`` pre-softplus learning rates, T a multiple of ``steps``.
        real_x: real images of the outer loss.
        real_y: their labels.
    """
    params = params0
    steps = images.shape[0]
    for t in range(raw_lrs.shape[0]):
        loss = F.cross_entropy(functional_call(net, params, (images[t % steps],)), labels[t % steps])
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        lr = F.softplus(raw_lrs[t])
        params = {k: p - lr * g for (k, p), g in zip(params.items(), grads, strict=True)}
    return F.cross_entropy(functional_call(net, params, (real_x,)), real_y)


@register_method("dd", config=DDConfig, paper="Wang, Zhu, Torralba & Efros, Dataset Distillation, 2018",
                 year=2018, kind="pixel", label_kind="learned-lr", default_eval="dd")
class DatasetDistillation(IterativeDistiller):
    """Synthetic images and per-step learning rates learned through an unrolled inner loop."""

    def _steps(self, ipc: int) -> int:
        steps = self.config.distill_steps or ipc
        if ipc % steps:
            raise ConfigError(f"ipc {ipc} must be a multiple of distill_steps {steps}")
        return steps

    def _net(self, train: RealDataset, seed: int, it: int) -> torch.nn.Module:
        c, h, _ = train.image_shape
        net = dd_network(self.config.model, c, train.num_classes, h, derive_seed(seed, "net", it),
                         self.config.init, self.config.init_gain)
        if any(True for _ in net.buffers()):
            raise ConfigError(f"DD unrolls networks without buffers (e.g. lenet, convnet); got {self.config.model}")
        return net.to(self.device)

    def batches_per_epoch(self, train: RealDataset) -> int:
        return math.ceil(len(train) / self.config.batch_real)

    def total_iterations(self, train: RealDataset) -> int:
        """``iterations`` when set, else ``epochs`` x batches per epoch (the reference's count)."""
        return self.config.iterations or self.config.epochs * self.batches_per_epoch(train)

    def effective_budget(self, train: RealDataset, ipc: int) -> dict[str, float]:
        """Budget as it runs: the computed iteration count when ``iterations`` is 0."""
        return {"iterations": self.total_iterations(train)}

    def real_batch(self, it: int, train: RealDataset, seed: int) -> torch.Tensor:
        """Indices of iteration ``it``'s real batch: slice ``it % B`` of epoch ``it // B``'s permutation."""
        per_epoch = self.batches_per_epoch(train)
        epoch, b = divmod(it, per_epoch)
        perm = torch.randperm(len(train), generator=make_generator(derive_seed(seed, "dd-epoch", epoch)))
        return perm[b * self.config.batch_real : (b + 1) * self.config.batch_real]

    def image_lr(self, it: int, train: RealDataset) -> float:
        """Adam lr of iteration ``it``: StepLR stepped at the start of each epoch, before its updates."""
        epoch = it // self.batches_per_epoch(train)
        return self.config.lr_img * self.config.decay ** ((epoch + 1) // max(self.config.decay_epochs, 1))

    def init_state(self, train: RealDataset, ipc: int, generator: torch.Generator, seed: int) -> dict[str, Any]:
        steps = self._steps(ipc)
        per_step = train.num_classes * (ipc // steps)
        images = torch.randn(steps, per_step, *train.image_shape, generator=generator)
        raw = torch.full((steps * self.config.distill_epochs,), math.log(math.expm1(self.config.lr_init)))
        return self._live(images.to(self.device), raw.to(self.device), None)

    def _live(self, images: torch.Tensor, raw: torch.Tensor, opt_state: dict | None) -> dict[str, Any]:
        images = images.detach().clone().requires_grad_(True)
        raw = raw.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([images, raw], lr=self.config.lr_img, betas=(self.config.beta1, self.config.beta2))
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        return {"images": images, "raw_lrs": raw, "optimizer": opt}

    def checkpoint_state(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"images": state["images"].detach(), "raw_lrs": state["raw_lrs"].detach(),
                "optimizer": state["optimizer"].state_dict()}

    def restore_state(self, saved: dict[str, Any]) -> dict[str, Any]:
        return self._live(saved["images"].to(self.device), saved["raw_lrs"].to(self.device), saved["optimizer"])

    def _labels(self, num_classes: int, per_step: int, steps: int) -> torch.Tensor:
        k = per_step // num_classes
        return torch.arange(num_classes, device=self.device).repeat_interleave(k).expand(steps, per_step)

    def step(self, it: int, state: dict[str, Any], train: RealDataset, generator: torch.Generator, seed: int
             ) -> dict[str, torch.Tensor]:
        images, raw = state["images"], state["raw_lrs"]
        net = self._net(train, seed, it)
        params0 = {k: v.detach().requires_grad_(True) for k, v in net.named_parameters()}
        idx = self.real_batch(it, train, seed)
        real_x, real_y = train.images(idx).to(self.device), train.labels[idx].to(self.device)
        labels = self._labels(train.num_classes, images.shape[1], images.shape[0])
        loss = unrolled_loss(net, params0, images, labels, raw, real_x, real_y)
        opt = state["optimizer"]
        for group in opt.param_groups:
            group["lr"] = self.image_lr(it, train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "mean_lr": F.softplus(raw.detach()).mean()}

    def finalize(self, state: dict[str, Any], train: RealDataset, ipc: int, seed: int) -> SyntheticSet:
        images = state["images"].detach()
        steps, per_step = images.shape[:2]
        labels = self._labels(train.num_classes, per_step, steps).reshape(-1)
        lrs = F.softplus(state["raw_lrs"].detach()).cpu().tolist()
        return self.make_synset(train, images.reshape(-1, *images.shape[2:]), labels, ipc, seed,
                                meta={"dd_steps": steps, "dd_lrs": lrs, "dd_model": self.config.model,
                                      "dd_init": self.config.init, "dd_init_gain": self.config.init_gain})


def evaluate_learned_schedule(synset: SyntheticSet, test: RealDataset, *, runs: int = 5, seed: int = 0,
                              model: str | None = None, device: str = "cpu", **_: Any) -> EvalResult:
    """DD's own evaluation: fresh networks trained only by the learned unroll, then tested."""
    if "dd_lrs" not in synset.meta:
        raise GendistillError("this set has no learned step schedule (dd_lrs); use a shared protocol instead")
    steps = int(synset.meta["dd_steps"])
    lrs = torch.tensor(synset.meta["dd_lrs"])
    name = model or synset.meta.get("dd_model", "lenet")
    images = synset.images.view(steps, -1, *synset.images.shape[1:]).to(device)
    labels = synset.labels.view(steps, -1).to(device)
    c, h, _ = test.image_shape
    start = time.perf_counter()
    accs = []
    init, gain = synset.meta.get("dd_init", "default"), float(synset.meta.get("dd_init_gain", 1.0))
    for i in range(runs):
        net = dd_network(name, c, test.num_classes, h, derive_seed(seed, "eval", i), init, gain).to(device)
        params = dict(net.named_parameters())
        with torch.no_grad():
            for t in range(len(lrs)):
                with torch.enable_grad():
                    loss = F.cross_entropy(net(images[t % steps]), labels[t % steps])
                    grads = torch.autograd.grad(loss, list(params.values()))
                for p, g in zip(params.values(), grads, strict=True):
                    p -= lrs[t] * g
        accs.append(split_accuracy(net, test, device=device))
    wall = time.perf_counter() - start
    protocol = {"name": "dd", "model": name, "init": init, "epochs": 0, "steps": len(lrs), "lr": "learned per step",
                "lr_from_synset": True, "schedule": "learned", "label_loss": "ce", "dsa_strategy": "",
                "cutmix_prob": 0.0, "zca": "none", "runs": runs}
    return EvalResult(float(np.mean(accs)), float(np.std(accs)), accs, protocol, False, "", wall, wall / runs,
                      "sequential", 0.0, seed, {"method": synset.meta.get("method"), "dataset": test.name,
                                                 "ipc": synset.ipc, "label_kind": "hard"})


register_evaluator("dd", evaluate_learned_schedule)
