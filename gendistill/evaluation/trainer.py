"""The training loop every evaluation (and every method that trains a network on real data) shares.

:class:`_Trainer` trains M networks on one set, each with its own generator, sequentially or as one vmapped
ensemble; :func:`train_network` is the public entry for one network; :func:`split_accuracy` tests a network on a
whole split in inference mode.
"""

from __future__ import annotations

import copy
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from gendistill.data.datasets import RealDataset
from gendistill.evaluation.protocols import EvalProtocol
from gendistill.nn.augment import DSA, DCAugment, IDCAugment, ImageNetAugment, cutmix, resize_images
from gendistill.nn.blocking import block_rows, blocked_mean_backward, forward_in_blocks
from gendistill.nn.compiling import network_forward
from gendistill.nn.precision import with_autocast
from gendistill.utils.errors import GendistillError, NonFiniteLossError

__all__ = ["split_accuracy", "train_network"]


# ------------------------------------------------------------------------------------------- helpers
def _soft_targets(labels: torch.Tensor, temperature: float) -> torch.Tensor:
    probs_like = bool((labels >= 0).all()) and torch.allclose(labels.sum(1), torch.ones(len(labels)), atol=1e-3)
    return labels if probs_like else F.softmax(labels / temperature, dim=1)


def _loss(out: torch.Tensor, target: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    if target.dim() == 1:
        return F.cross_entropy(out, target)
    if kind == "mse":  # regression targets (KIP's labels): mean over classes and images, as KIP's transfer training
        return F.mse_loss(out, target)
    if kind == "kl":
        return F.kl_div(F.log_softmax(out / temperature, 1), target, reduction="batchmean") * temperature**2
    return -(target * F.log_softmax(out, 1)).sum(1).mean()


def _lr_at(protocol: EvalProtocol, base_lr: float, passes: int, epoch: int) -> float:
    """Learning rate for pass ``epoch`` (0-based) of ``passes``."""
    if protocol.schedule == "step_half":
        return base_lr * (0.1 if epoch > protocol.epochs // 2 + 1 else 1.0)
    if protocol.schedule == "multistep":
        return base_lr * protocol.gamma ** sum(epoch >= int(m * passes) for m in protocol.milestones)
    if protocol.schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * epoch / passes))
    return base_lr


def _needs_sequential(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()) or \
        type(net).__name__ == "_TimmWrapper"


class _Trainer:
    """Trains M networks on the same synthetic set, each with its own generator (batched or one by one)."""

    def __init__(self, protocol: EvalProtocol, x: torch.Tensor, y: torch.Tensor, lr: float, dsa: DSA,
                 device: torch.device, bar_per_batch: bool = False,
                 pixel_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                 teacher: nn.Module | None = None, autocast: torch.dtype | None = None) -> None:
        """``pixel_stats``: the ``(mean, std)`` mapping [0, 1] pixels to the space of ``x`` (for colour jitter and
        lighting; ``None`` treats ``x`` as pixels). ``teacher``: relabels every augmented batch (its softmax at the
        protocol's temperature replaces the labels). ``autocast``: the sequential training forwards run under
        autocast in this dtype (:mod:`gendistill.nn.precision`)."""
        self.p, self.x, self.y, self.lr, self.dsa, self.device = protocol, x, y, lr, dsa, device
        self.autocast = autocast
        self.teacher = teacher.eval() if teacher is not None else None
        self.passes = protocol.epochs + int(protocol.extra_pass)
        self.batches_per_pass = -(-x.shape[0] // protocol.batch_size)
        self.bar_per_batch = bar_per_batch
        self.dc_aug = DCAugment(protocol.dc_aug) if protocol.dc_aug else None
        self.imagenet_aug: ImageNetAugment | None = None
        colour = protocol.color_jitter > 0 or protocol.lighting > 0
        if colour and x.shape[1] != 3:
            raise GendistillError(f"protocol {protocol.name}: colour jitter and lighting need RGB images, "
                                  f"got {x.shape[1]} channel(s); set color_jitter=0 lighting=0")
        if protocol.resize_crop or colour:
            mean, std = pixel_stats if pixel_stats is not None else ((0.0,) * 3, (1.0,) * 3)
            if protocol.resize_crop:
                self.x = resize_images(x, protocol.resize_crop)  # IDC's Resize + CenterCrop before the crop
            self.imagenet_aug = ImageNetAugment(protocol.resize_crop, tuple(protocol.crop_scale),
                                                protocol.color_jitter, protocol.lighting, mean, std)

    def _batch(self, perm: torch.Tensor, start: int, gen: torch.Generator):
        idx = perm[start : start + self.p.batch_size].to(self.device)
        xb, yb = self.x[idx], self.y[idx]
        if self.imagenet_aug is not None:  # the reference's loader transform, before DSA and CutMix
            xb = self.imagenet_aug(xb, gen)
        if self.dsa.enabled:
            xb = self.dsa(xb, gen)
        if self.dc_aug is not None:
            xb = self.dc_aug(xb, gen)
        yb2, lam = yb, 1.0
        if self.p.cutmix_prob > 0:
            xb, yb, yb2, lam = cutmix(xb, yb, gen, self.p.cutmix_beta, self.p.cutmix_prob)
        if self.teacher is not None:  # the teacher labels the view the student sees (mixed image included)
            with torch.no_grad():
                logits = forward_in_blocks(self.teacher, xb, block_rows(self.teacher, xb))
                yb = F.softmax(logits / self.p.temperature, dim=1)
            yb2, lam = yb, 1.0
        return xb, yb, yb2, lam

    def _batch_loss(self, out, yb, yb2, lam):
        loss = _loss(out, yb, self.p.label_loss, self.p.temperature)
        if lam < 1.0:
            loss = lam * loss + (1 - lam) * _loss(out, yb2, self.p.label_loss, self.p.temperature)
        return loss

    def _optimizer(self, params, lr):
        if self.p.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=self.p.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=self.p.momentum, weight_decay=self.p.weight_decay)

    def _schedule(self, opt, params, epoch: int):
        """Apply the lr schedule at the start of pass ``epoch``; returns the optimiser to use."""
        new_lr = _lr_at(self.p, self.lr, self.passes, epoch)
        if epoch == 0 or new_lr == _lr_at(self.p, self.lr, self.passes, epoch - 1):
            return opt
        if self.p.schedule == "step_half":
            return self._optimizer(params, new_lr)  # the reference re-creates SGD (momentum reset)
        for group in opt.param_groups:
            group["lr"] = new_lr
        return opt

    def train_sequential(self, net: nn.Module, gen: torch.Generator, progress, on_epoch=None) -> torch.Tensor:
        """Train ``net``; ``on_epoch(pass_index)`` (0-based) runs after every pass when given."""
        net.train()
        opt = self._optimizer(net.parameters(), _lr_at(self.p, self.lr, self.passes, 0))
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        n = self.x.shape[0]
        # compiled when $GENDISTILL_COMPILE asks for it; under bfloat16 autocast when the evaluation asks for it
        forward = with_autocast(network_forward(net), self.device, self.autocast)
        for epoch in range(self.passes):
            opt = self._schedule(opt, net.parameters(), epoch)
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, self.p.batch_size):
                xb, yb, yb2, lam = self._batch(perm, start, gen)
                opt.zero_grad(set_to_none=True)
                loss = blocked_mean_backward(functools.partial(self._batch_loss, lam=lam), forward, xb, yb, yb2,
                                             rows=block_rows(net, xb))
                bad |= ~torch.isfinite(loss)
                opt.step()
                if self.bar_per_batch:
                    progress.update(1)
            if not self.bar_per_batch:
                progress.update(1)
            if on_epoch is not None:
                on_epoch(epoch)
        return bad

    def train_batched(self, nets: list[nn.Module], gens: list[torch.Generator], progress, on_epoch=None):
        """Train the ensemble; ``on_epoch(pass_index, params, buffers, base)`` runs after every pass when given."""
        from torch.func import functional_call, stack_module_state

        params, buffers = stack_module_state(nets)
        base = copy.deepcopy(nets[0]).to("meta")
        m = len(nets)

        def run(p, b, xb):
            return functional_call(base, (p, b), (xb,))

        vrun = torch.vmap(run)
        opt = self._optimizer(params.values(), _lr_at(self.p, self.lr, self.passes, 0))
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        n = self.x.shape[0]
        for epoch in range(self.passes):
            opt = self._schedule(opt, params.values(), epoch)
            perms = [torch.randperm(n, generator=g) for g in gens]
            for start in range(0, n, self.p.batch_size):
                batches = [self._batch(perms[i], start, gens[i]) for i in range(m)]
                xb = torch.stack([b[0] for b in batches])
                out = vrun(params, buffers, xb)
                # Sum of the per-model mean losses: each model's gradient equals its sequential gradient.
                loss = sum(self._batch_loss(out[i], *batches[i][1:]) for i in range(m))
                bad |= ~torch.isfinite(loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            progress.update(m)
            if on_epoch is not None:
                on_epoch(epoch, params, buffers, base)
        return params, buffers, base, bad


def split_accuracy(net: nn.Module, test: RealDataset, batch_size: int = 100, device: str | torch.device = "cpu",
                   progress: bool = False, image_size: int = 0, autocast: torch.dtype | None = None) -> float:
    """Top-1 accuracy (%) of ``net`` on the whole split (eval mode, inference mode); ``image_size`` > 0 resizes
    each batch to it first (:func:`gendistill.augment.resize_images`); ``autocast``: the forwards run under autocast
    in this dtype."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    # channels_last, and rows passed in cache-sized blocks (gendistill.nn.blocking), are each faster for CPU
    # inference: a 10,000-image MNIST pass of ConvNet-3 in blocks is 1.38x faster than in whole channels_last
    # batches of 100 (scripts/perf/micro_ideas.py --more; docs/performance.md).
    # Also under bfloat16 autocast, where ConvNet's instance norm runs in float32 (gendistill.nn.nets.InstanceNorm):
    # a bfloat16 group norm was ~6x slower channels-last (2,000 images through ConvNet-3: 1.14 s against 0.17 s).
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    net.eval().to(memory_format=fmt)
    correct = torch.zeros((), dtype=torch.long, device=device)
    forward = with_autocast(network_forward(net), device, autocast)
    with torch.inference_mode():
        for xb, yb in tqdm(test.batches(batch_size), total=-(-len(test) // batch_size), unit="batch",
                           desc=f"test pass ({len(test)} images)", disable=not progress, leave=False):
            xb = resize_images(xb.to(device), image_size) if image_size else xb.to(device)
            xb = xb.contiguous(memory_format=fmt)
            correct += (forward_in_blocks(forward, xb, block_rows(net, xb)).argmax(1) == yb.to(device)).sum()
    return 100.0 * int(correct) / len(test)


def _accuracy_batched(params, buffers, base, test: RealDataset, batch_size: int, device, image_size: int = 0
                      ) -> list[float]:
    from torch.func import functional_call

    base.eval()
    m = next(iter(params.values())).shape[0]
    correct = torch.zeros(m, dtype=torch.long, device=device)
    vrun = torch.vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))
    with torch.inference_mode():
        for xb, yb in test.batches(batch_size):
            xb = resize_images(xb.to(device), image_size) if image_size else xb.to(device)
            out = vrun({k: v.detach() for k, v in params.items()}, buffers, xb)
            correct += (out.argmax(2) == yb.to(device).unsqueeze(0)).sum(1)
    return [100.0 * c / len(test) for c in correct.tolist()]




def train_network(net: nn.Module, x: torch.Tensor, y: torch.Tensor, protocol: EvalProtocol,
                  generator: torch.Generator, *, flip_ok: bool = True, device: str | torch.device = "cpu",
                  progress: bool = False, desc: str = "train") -> nn.Module:
    """Train ``net`` in place on ``(x, y)`` with the protocol's optimiser, schedule and augmentation.

    The same loop the evaluator uses; methods use it to train feature extractors or inner networks on real data.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    aug_cls = IDCAugment if protocol.aug_mode == "idc" else DSA
    dsa = aug_cls.for_dataset(flip_ok, protocol.dsa_strategy) if protocol.dsa_strategy else DSA("none")
    trainer = _Trainer(protocol, x.to(device), y.to(device), protocol.lr, dsa, device, bar_per_batch=True)
    with tqdm(total=trainer.passes * trainer.batches_per_pass, desc=desc, unit="batch", disable=not progress,
              leave=False) as bar:
        if bool(trainer.train_sequential(net.to(device), generator, bar)):
            raise NonFiniteLossError("training loss became NaN/inf; lower the learning rate")
    return net.eval()
