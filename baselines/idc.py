"""IDC - Dataset Condensation via Efficient Synthetic-Data Parameterization (Kim, Kim, Oh, Yun, Song, Jeong,
Ha & Song, ICML 2022; snu-mllab/Efficient-Dataset-Condensation ``condense.py``, ``argument.py``,
``misc/reproduce.py``).

Multi-formation: each stored image is a ``factor x factor`` mosaic; decoding (:mod:`gendistill.decoders`) cuts
it into ``factor**2`` crops upsampled bilinearly to full size, so a class of ``ipc`` stored images trains on
``factor**2 * ipc`` images (``factor = 1`` is IDC-I). IPC counts the stored images, as IDC counts them; the set
records ``meta["decoder"]`` so that every evaluation protocol trains on the decoded images.

Loop (``condense.py``): ``iterations`` outer iterations (``niter * 100 / inner_loop`` = 2000 in the
reproduce setting), each with a fresh ConvNet-3 trained by SGD (lr 0.01, momentum 0.9, wd 5e-4) and the
stored images clamped to the [0, 1] pixel box. ``inner_loop`` (100) times: for every class, gradient matching
of a real batch (64 images of the class) against the decoded synthetic images of the class (at most
``batch_syn_max`` = 128, randomly subsampled), both under one shared augmentation draw of ``aug_type``
(``color_crop_cutout``: colour, crop and cutout at every call, :class:`gendistill.augment.IDCAugment`), the
distance summed over the matched parameters - convolution weights only (biases, norm affine and the classifier
skipped: ``bias=False``, ``fc=False``) - with ``mse`` (CIFAR/SVHN) or ``l1`` (MNIST/Fashion-MNIST), and one
SGD step (momentum 0.5) on the images per class; then the network trains for one epoch of ``n_data`` real
images (batches of ``batch_real``, augmentation ``aug_type`` minus cutout, CutMix with p 0.5, beta 1).
``lr_img`` is multiplied by ``ipc / 10 * (size / base)**2`` (``tune_lr_img``; base 28 for MNIST, 32 for other
small datasets, 224 for ImageNet subsets - so Fashion-MNIST's 28-pixel images get x0.766 as in the reference).
Initialisation ``mix``: each stored image is a mosaic of ``factor**2`` real images of its class shrunk with
nearest ``F.interpolate``.

The model space: IDC optimises pixels in [0, 1] and normalises inside the loss; here the set lives in the
normalised space ``x = (p - mean) / std``. Per channel the pixel step ``-lr * dL/dp`` is ``-lr / std**2 *
dL/dx`` in that space, so the image learning rate is divided by ``std**2`` per channel and the clamp box is
``[(0 - mean) / std, (1 - mean) / std]``: the trajectory is the reference's, only expressed in normalised units.
The multi-formation padding is the normalised grey ``(0.5 - mean) / std`` (see :mod:`gendistill.decoders`).

Batching (no change to the math): the reference steps the images once per class with one SGD optimiser over
the whole tensor, so between two steps of class c the other classes' steps decay c's momentum buffer and move
its images by the momentum residue. Class c's gradient is therefore taken at ``x_c - lr * (m + ... + m**c) *
buf_c`` and after its own step the remaining ``C - 1 - c`` steps move it by ``lr * (m + ... + m**(C-1-c)) * B_c``
with ``B_c = m**(c+1) * buf_c + g_c``. :func:`sequential_class_sgd` applies these closed forms to every class at
once (one gradient computation for all classes, ``class_chunk`` classes per backward pass).

Labelled deviations: real images for ``mix``/``random`` initialisation are a seeded random draw per class (the
reference takes the first images of each class in dataset order); each network epoch draws a fresh random
subset of ``n_data`` training images (the reference continues one shuffled pass over the training set across
epochs); randomness comes from explicit generators.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gendistill.baselines.matching import per_class_gradients
from gendistill.data.datasets import RealDataset
from gendistill.distiller import IterativeDistiller, budget_field
from gendistill.evaluation.protocols import EvalProtocol, register_protocol
from gendistill.nn.augment import IDCAugment, cutmix
from gendistill.nn.blocking import block_rows, blocked_mean_backward
from gendistill.nn.nets import create_network
from gendistill.registry import register_method
from gendistill.synset.decoders import multiformation, normalised_grey
from gendistill.synset.format import SyntheticSet
from gendistill.utils.errors import ConfigError, GendistillError
from gendistill.utils.seeding import derive_seed

__all__ = ["IDCConfig", "IDCDistiller", "idc_distance", "matched_parameters", "mix_init", "sequential_class_sgd",
           "tune_lr_img"]

# ``tune_lr_img``'s reference image size per dataset (``argument.py``): 28 for MNIST, 224 for ImageNet, else 32.
IMSIZE_BASE = {"mnist": 28, "imagenette": 224, "imagewoof": 224, "imageidc": 224}


@dataclasses.dataclass
class IDCConfig:
    """IDC settings (defaults: the published CIFAR-10 setting, ``misc/reproduce.py``).

    Attributes:
        iterations: outer iterations, each with a fresh network (``niter * 100 / inner_loop`` = 2000).
        inner_loop: matching steps per outer iteration, each followed by one network epoch on real data.
        factor: multi-formation factor (stored images are factor x factor mosaics); 1 is IDC-I.
        init: ``mix`` (mosaics of factor**2 shrunk real images; for factor 1 the real images), ``random``
            (one real image per stored image) or ``noise`` (N(0.5, 0.25**2) pixels clamped to [0, 1]).
        lr_img: base learning rate of the images (pixel units; see ``scale_lr_img``).
        scale_lr_img: multiply ``lr_img`` by ``ipc / 10 * (size / base)**2`` as the reference ``tune_lr_img``.
        momentum_img: SGD momentum of the images.
        metric: gradient distance per matched parameter, summed: ``mse`` (sum of squares), ``l1`` (sum of
            absolute differences) or ``cos`` (1 - cosine per output channel, summed).
        bias: also match 1-D parameters (biases, norm affine).
        fc: also match 2-D parameters (the classifier).
        batch_real: real images per class per matching step, and the batch of the network's real-data epochs.
        batch_syn_max: at most this many decoded synthetic images per class per matching step (random subset).
        aug_type: augmentation of the matching (one draw per class shared by its real and synthetic images).
        n_data: real images per network epoch between matching steps (0 = the network is never trained).
        net_epoch: network epochs per matching step.
        lr_net: SGD learning rate of the network.
        momentum_net: SGD momentum of the network.
        weight_decay_net: SGD weight decay of the network.
        mixup_net: ``cut`` (CutMix, and cutout removed from the network's augmentation) or ``vanilla``.
        mix_p: probability of CutMix per batch of the network's training.
        beta: CutMix Beta parameter.
        model: network-registry name of the matching network.
        class_chunk: classes per backward pass of the matching (memory only; 0 = all classes at once).
        device: where to run.
    """

    iterations: int = budget_field(2000, zero_is_full=True)
    inner_loop: int = budget_field(100, zero_is_full=True)
    factor: int = 2
    init: Literal["mix", "random", "noise"] = "mix"
    lr_img: float = 5e-3
    scale_lr_img: bool = True
    momentum_img: float = 0.5
    metric: Literal["mse", "l1", "cos"] = "mse"
    bias: bool = False
    fc: bool = False
    batch_real: int = budget_field(64)
    batch_syn_max: int = 128
    aug_type: str = "color_crop_cutout"
    n_data: int = 2000
    net_epoch: int = 1
    lr_net: float = 0.01
    momentum_net: float = 0.9
    weight_decay_net: float = 5e-4
    mixup_net: Literal["cut", "vanilla"] = "cut"
    mix_p: float = 0.5
    beta: float = 1.0
    model: str = "convnet"
    class_chunk: int = 10
    device: str = "cpu"


# ------------------------------------------------------------------------------------------------ helpers
def tune_lr_img(lr_img: float, ipc: int, dataset: str, size: int) -> float:
    """The reference ``tune_lr_img``: ``lr_img * ipc / 10 * (size / base)**2`` (base 28 MNIST, 224 ImageNet,
    else 32)."""
    base = IMSIZE_BASE.get(dataset, 32)
    return lr_img * (ipc / 10) * (size / base) ** 2


def matched_parameters(net: nn.Module, bias: bool = False, fc: bool = False) -> dict[str, torch.Tensor]:
    """The parameters whose gradients IDC matches (``matchloss``): 1-D ones only with ``bias``, 2-D ones only
    with ``fc``, every other (convolution weights) always."""
    keep = {}
    for name, p in net.named_parameters():
        if (p.dim() == 1 and not bias) or (p.dim() == 2 and not fc):
            continue
        keep[name] = p.detach()
    return keep


def idc_distance(g_syn: dict[str, torch.Tensor], g_real: dict[str, torch.Tensor], metric: str,
                 batch_dims: int = 0) -> torch.Tensor:
    """IDC's ``dist`` summed over parameters (and ``batch_dims`` leading dims, e.g. classes): ``mse`` = sum of
    squared differences, ``l1`` = sum of absolute differences, ``cos`` = sum over output channels of 1 - cosine."""
    total = torch.zeros((), device=next(iter(g_syn.values())).device)
    for name, gs in g_syn.items():
        gr = g_real[name]
        if metric == "mse":
            total = total + (gs - gr).pow(2).sum()
        elif metric == "l1":
            total = total + (gs - gr).abs().sum()
        elif metric == "cos":
            s, r = gs.flatten(batch_dims + 1), gr.flatten(batch_dims + 1)  # rows: output channels
            total = total + (1 - (s * r).sum(-1) / (s.norm(dim=-1) * r.norm(dim=-1) + 1e-6)).sum()
        else:
            raise ConfigError(f"unknown IDC metric {metric!r}; use mse, l1 or cos")
    return total


def mix_init(real: torch.Tensor, factor: int) -> torch.Tensor:
    """IDC's ``mix`` initialisation: ``real`` ``[n, factor**2, ipc, C, H, H]`` (group k of ``ipc`` images per
    tile) -> ``[n * ipc, C, H, H]`` mosaics; tile ``k = i * factor + j`` holds image ``k`` shrunk with nearest
    ``F.interpolate`` (the first ``H % factor`` rows/columns of tiles are one pixel larger)."""
    n, f2, ipc, c, h, w = real.shape
    s, remained = h // factor, h % factor
    out = torch.empty(n, ipc, c, h, w, dtype=real.dtype, device=real.device)
    sizes = [s + 1 if i < remained else s for i in range(factor)]
    starts = [sum(sizes[:i]) for i in range(factor)]
    for i in range(factor):
        for j in range(factor):
            part = F.interpolate(real[:, i * factor + j].reshape(n * ipc, c, h, w), size=(sizes[i], sizes[j]))
            out[:, :, :, starts[i] : starts[i] + sizes[i], starts[j] : starts[j] + sizes[j]] = \
                part.view(n, ipc, c, sizes[i], sizes[j])
    return out.reshape(n * ipc, c, h, w)


def _geometric(m: float, k: int) -> float:
    """``m + m**2 + ... + m**k`` (0 for k = 0)."""
    return sum(m**i for i in range(1, k + 1))


def sequential_class_sgd(images: torch.Tensor, momentum: torch.Tensor, num_classes: int, lr: torch.Tensor | float,
                         m: float, grad_fn: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One round of per-class SGD steps (classes 0..C-1 in order, one optimiser over the whole class-major
    tensor, as the reference), computed for all classes at once.

    Args:
        images: ``[C * ipc, ...]`` current images.
        momentum: their SGD momentum buffer (zeros before the first step).
        num_classes: C.
        lr: learning rate (a scalar or a tensor broadcasting against ``images``, e.g. per channel).
        m: momentum.
        grad_fn: ``fn(x_eval) -> (grad, loss)``: the gradient of the summed per-class losses at ``x_eval`` (class
            c's loss may depend on class c's rows only) and the loss for logging.

    Returns:
        ``(images, momentum, loss)`` after the C steps.
    """
    c = num_classes
    ipc = images.shape[0] // c
    view = (-1,) + (1,) * (images.dim() - 1)

    def rows(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=images.dtype, device=images.device).repeat_interleave(ipc).view(view)

    before = rows([_geometric(m, k) for k in range(c)])
    own = rows([m ** (k + 1) for k in range(c)])
    after = rows([_geometric(m, c - 1 - k) for k in range(c)])
    keep = rows([m ** (c - 1 - k) for k in range(c)])
    x_eval = images - lr * before * momentum
    grad, loss = grad_fn(x_eval.detach())
    b = own * momentum + grad
    new_images = x_eval - lr * (1 + after) * b
    return new_images.detach(), (keep * b).detach(), loss


# ------------------------------------------------------------------------------------------------ method
def idc_rule_for(dataset: str, factor: int = 1, ipc: int = 0) -> dict[str, Any]:
    """IDC's per-dataset evaluation changes (``argument.py`` ll. 266-295 and ``misc/reproduce.py`` of
    snu-mllab/Efficient-Dataset-Condensation), as field overrides of the ``idc`` preset: MNIST sets made with
    multi-formation (factor > 1) train without CutMix; SVHN IDC-I (factor 1) sets at IPC 1 train without CutMix
    and keep cutout. Flip is dropped for digits by the DSA rule (``flip_ok``); Fashion-MNIST keeps flip and CutMix.
    """
    if dataset == "mnist" and factor > 1:
        return {"cutmix_prob": 0.0}
    if dataset == "svhn" and factor == 1 and ipc == 1:
        return {"cutmix_prob": 0.0, "dsa_strategy": "color_crop_cutout_scale_rotate"}
    return {}


def _idc_rule(protocol: EvalProtocol, dataset: str, *, factor: int = 1, ipc: int = 0, num_classes: int = 10
              ) -> EvalProtocol:
    return dataclasses.replace(protocol, **idc_rule_for(dataset, factor, ipc)) if protocol.idc_rule else protocol


# IDC's evaluation: 1000 epochs, batch 64, lr x0.2 at 2/3 and 5/6, IDC's DiffAug composition plus CutMix (p = 0.5),
# with IDC's per-dataset rule (:func:`idc_rule_for`). IDC's train.py tests every epochs // 100 epochs and records the
# best (``is_best``): ``best_mean`` reports that figure next to the final-epoch ``mean`` (the headline).
register_protocol(EvalProtocol(name="idc", epochs=1000, batch_size=64, schedule="multistep", milestones=(2 / 3, 5 / 6),
                               gamma=0.2, dsa_strategy="color_crop_flip_scale_rotate", cutmix_prob=0.5,
                               aug_mode="idc", idc_rule=True, extra_pass=False, eval_count=100), resolve=_idc_rule)


@register_method("idc", config=IDCConfig, paper="Kim et al., Dataset Condensation via Efficient Synthetic-Data "
                 "Parameterization, ICML 2022", year=2022, kind="pixel", default_eval="idc")
class IDCDistiller(IterativeDistiller):
    """Gradient matching of multi-formation mosaics against networks trained on real data."""

    # ------------------------------------------------------------------------------------ set-up
    def _check(self, train: RealDataset, ipc: int) -> None:
        cfg = self.config
        if cfg.factor < 1 or cfg.inner_loop < 1 or cfg.batch_real < 1:
            raise ConfigError("factor, inner_loop and batch_real must be >= 1")
        if train.preprocessing.zca is not None:
            raise GendistillError("IDC optimises pixels under per-channel normalisation; load the data without --zca")
        _, h, w = train.image_shape
        if h != w:
            raise GendistillError(f"IDC needs square images; {train.name} is {h}x{w}")

    def _space(self, train: RealDataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-channel ``(lo, hi, 1/std**2)`` of the model space, shaped ``[1, C, 1, 1]``."""
        mean = torch.tensor(train.preprocessing.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(train.preprocessing.std, device=self.device).view(1, -1, 1, 1)
        return -mean / std, (1 - mean) / std, std.pow(-2)

    def lr_img(self, train: RealDataset, ipc: int) -> float:
        """The image learning rate in pixel units (after ``tune_lr_img`` when ``scale_lr_img``)."""
        cfg = self.config
        return tune_lr_img(cfg.lr_img, ipc, train.name, train.image_shape[-1]) if cfg.scale_lr_img else cfg.lr_img

    def init_state(self, train: RealDataset, ipc: int, generator: torch.Generator, seed: int) -> dict[str, Any]:
        self._check(train, ipc)
        cfg = self.config
        c = train.num_classes
        shape = train.image_shape
        if cfg.init == "noise":
            pixels = (torch.randn(c * ipc, *shape, generator=generator) / 4 + 0.5).clamp(0, 1)
            images = train.preprocessing.apply(pixels)
        else:
            per = ipc * cfg.factor**2 if cfg.init == "mix" else ipc
            idx = train.sample_indices(per, generator)
            if idx.shape[1] < per:
                raise GendistillError(f"--ipc {ipc} with init {cfg.init} (factor {cfg.factor}) needs {per} real "
                                      f"images per class; the smallest class of {train.name} has fewer")
            real = train.images(idx.reshape(-1)).view(c, -1, *shape)
            images = mix_init(real.view(c, cfg.factor**2, ipc, *shape), cfg.factor) if cfg.init == "mix" else \
                real.reshape(c * ipc, *shape)
        images = images.to(self.device).float()
        return {"images": images.clone(), "momentum": torch.zeros_like(images)}

    def finalize(self, state: dict[str, Any], train: RealDataset, ipc: int, seed: int) -> SyntheticSet:
        labels = torch.arange(train.num_classes).repeat_interleave(ipc)
        meta: dict[str, Any] = {"lr_img_effective": self.lr_img(train, ipc)}
        if self.config.factor > 1:
            meta["decoder"] = {"name": "multiformation", "factor": self.config.factor}
        return self.make_synset(train, state["images"], labels, ipc, seed, meta=meta)

    # ------------------------------------------------------------------------------------ iteration
    def fresh_network(self, train: RealDataset, seed: int, it: int) -> nn.Module:
        c, h, _ = train.image_shape
        net = create_network(self.config.model, c, train.num_classes, h, seed=derive_seed(seed, "net", it))
        return net.to(self.device)

    def step(self, it: int, state: dict[str, Any], train: RealDataset, generator: torch.Generator, seed: int
             ) -> dict[str, torch.Tensor]:
        cfg = self.config
        c = train.num_classes
        ipc = state["images"].shape[0] // c
        lo, hi, inv_var = self._space(train)
        lr = self.lr_img(train, ipc) * inv_var  # pixel-space SGD expressed in the normalised space
        state["images"] = torch.maximum(torch.minimum(state["images"], hi), lo)  # the [0, 1] pixel box
        net = self.fresh_network(train, seed, it)
        net.train()
        opt_net = torch.optim.SGD(net.parameters(), lr=cfg.lr_net, momentum=cfg.momentum_net,
                                  weight_decay=cfg.weight_decay_net)
        match_aug = IDCAugment.for_dataset(train.flip_ok, cfg.aug_type)
        net_strategy = "_".join(f for f in match_aug.families if not (cfg.mixup_net == "cut" and f == "cutout"))
        net_aug = IDCAugment(net_strategy or "none")
        grey = normalised_grey(train.preprocessing, self.device)
        total = torch.zeros((), device=self.device)
        for _ in range(cfg.inner_loop):
            params = matched_parameters(net, cfg.bias, cfg.fc)
            grad_fn = functools.partial(self._matching_grad, net=net, params=params, train=train, ipc=ipc,
                                        generator=generator, aug=match_aug, grey=grey)
            state["images"], state["momentum"], loss = sequential_class_sgd(
                state["images"], state["momentum"], c, lr, cfg.momentum_img, grad_fn)
            total = total + loss
            if cfg.n_data > 0:
                for _ in range(cfg.net_epoch):
                    self._train_net_epoch(net, opt_net, train, generator, net_aug)
        return {"loss": total / (c * cfg.inner_loop)}

    def _matching_grad(self, x_eval: torch.Tensor, *, net: nn.Module, params: dict[str, torch.Tensor],
                       train: RealDataset, ipc: int, generator: torch.Generator, aug: IDCAugment,
                       grey: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient w.r.t. the images of the per-class matching losses (summed), evaluated at ``x_eval``."""
        cfg = self.config
        c = train.num_classes
        shape = x_eval.shape[1:]
        f2 = cfg.factor**2
        n_dec = f2 * ipc
        n_syn = min(n_dec, cfg.batch_syn_max) if cfg.batch_syn_max > 0 else n_dec
        # every draw up front, so the chunking of the backward passes cannot change the random stream
        real, _ = train.sample_all_classes(cfg.batch_real, generator)
        n_real = real.shape[0] // c
        pick = torch.rand(c, n_dec, generator=generator).argsort(1)[:, :n_syn] if n_syn < n_dec else None
        draw = aug.draw_siamese(c, shape[-1], generator)
        real = real.to(self.device)
        grad = torch.zeros_like(x_eval)
        total = torch.zeros((), device=self.device)
        chunk = cfg.class_chunk if cfg.class_chunk > 0 else c
        for start in range(0, c, chunk):
            cls = torch.arange(start, min(start + chunk, c))
            k = len(cls)
            leaf = x_eval[start * ipc : (start + k) * ipc].detach().requires_grad_(True)
            dec = multiformation(leaf, cfg.factor, grey)  # [f2 * k * ipc] crop-major
            dec = dec.view(f2, k, ipc, *shape).transpose(0, 1).reshape(k, n_dec, *shape)  # per class, crop-major
            if pick is not None:
                dec = dec[torch.arange(k, device=self.device).unsqueeze(1), pick[cls].to(self.device)]
            syn = aug.apply(dec.reshape(k * n_syn, *shape), draw, cls.repeat_interleave(n_syn))
            real_c = real[start * n_real : (start + k) * n_real]
            real_c = aug.apply(real_c, draw, cls.repeat_interleave(n_real))
            y_real = cls.to(self.device).unsqueeze(1).expand(k, n_real)
            y_syn = cls.to(self.device).unsqueeze(1).expand(k, n_syn)
            g_real = per_class_gradients(net, params, real_c.view(k, n_real, *shape), y_real)
            g_real = {name: g.detach() for name, g in g_real.items()}
            g_syn = per_class_gradients(net, params, syn.view(k, n_syn, *shape), y_syn)
            loss = idc_distance(g_syn, g_real, cfg.metric, batch_dims=1)
            (g,) = torch.autograd.grad(loss, [leaf])
            grad[start * ipc : (start + k) * ipc] = g
            total = total + loss.detach()
        return grad, total

    def _train_net_epoch(self, net: nn.Module, opt: torch.optim.Optimizer, train: RealDataset,
                         generator: torch.Generator, aug: IDCAugment) -> None:
        """``train_epoch`` with ``n_data``: batches of ``batch_real`` random real images until ``n_data`` are
        seen (at most one pass), augmentation and CutMix (with ``mixup_net = cut``)."""
        cfg = self.config
        n = min(math.ceil(cfg.n_data / cfg.batch_real) * cfg.batch_real, len(train))
        idx = torch.randperm(len(train), generator=generator)[:n]
        net.train()
        for start in range(0, n, cfg.batch_real):
            b = idx[start : start + cfg.batch_real]
            xb, yb = train.images(b).to(self.device), train.labels[b].to(self.device)
            with torch.no_grad():
                xb = aug(xb, generator)
            yb2, lam = yb, 1.0
            if cfg.mixup_net == "cut":
                xb, yb, yb2, lam = cutmix(xb, yb, generator, cfg.beta, cfg.mix_p)
            opt.zero_grad(set_to_none=True)
            blocked_mean_backward(functools.partial(_mixed_ce, lam=lam), net, xb, yb, yb2, rows=block_rows(net, xb))
            opt.step()


def _mixed_ce(out: torch.Tensor, ya: torch.Tensor, yb: torch.Tensor, lam: float) -> torch.Tensor:
    loss = F.cross_entropy(out, ya)
    return loss if lam >= 1.0 else lam * loss + (1 - lam) * F.cross_entropy(out, yb)
