"""One evaluation protocol for every method: train fresh networks on a synthetic set, test on the real test split.

Presets (reference §1.5, §1.6, §2.6, §1.8):

* ``dc`` - SGD lr 0.01, momentum 0.9, wd 5e-4, batch 256, lr x0.1 once at half, with DC's per-dataset rule
  (``get_daparam`` + ``main.py``): MNIST trains with DC augmentation ``crop_scale_rotate`` for 1000 epochs, a
  BatchNorm ConvNet (``convnet_bn``) with ``crop_noise`` for 1000 epochs, everything else without
  augmentation for 300 epochs (``dc_mnist`` is kept as an alias of ``dc``);
* ``cafe`` - CAFE's ``distill.py`` evaluation: as ``dc`` with 600 epochs where no augmentation applies;
* ``dsa`` - the same as ``dc`` with DSA (no flip for digits), 1000 epochs (DSA, DM, CAFE+DSA evaluations);
* ``mtt`` - ``dsa`` with the learning rate learned with the set (MTT/DATM);
* ``idc`` - 1000 epochs, batch 64, lr x0.2 at 2/3 and 5/6, DSA without cutout plus CutMix (p = 0.5);
* ``soft`` - ``dsa`` with soft labels (soft cross-entropy; DATM-style).

As in the reference loop, training runs ``epochs + 1`` passes and the step decay happens after pass
``epochs // 2 + 1`` with the optimiser re-created (momentum reset). Accuracy is measured once, after the last
epoch, on the full test split - never the best over epochs. Each run ``i`` initialises its network from
``derive_seed(seed, "eval", i)`` and draws its batches and augmentations from its own generator, so a run
gives the same number whether the runs are trained one after another or as one batched ensemble
(``torch.func.stack_module_state`` + ``vmap``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import resource
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import DSA, DCAugment, cutmix
from .blocking import block_rows, blocked_mean_backward
from .config import config_to_dict, from_dict, read_yaml
from .data import RealDataset
from .errors import GendistillError, NonFiniteLossError
from .nets import create_network
from .seeding import derive_seed, make_generator
from .synset import SyntheticSet

__all__ = ["PROTOCOLS", "EvalProtocol", "EvalResult", "dc_augmentation_for", "default_protocol", "evaluate",
           "get_protocol", "register_evaluator", "resolve_protocol", "split_accuracy", "train_network"]

# Method-specific evaluations (e.g. DD's learned-schedule training) registered by method packages:
# name -> fn(synset, test, *, runs, seed, model, device) -> EvalResult.
CUSTOM_EVALUATORS: dict[str, Any] = {}


def register_evaluator(name: str, fn: Any) -> None:
    """Register a method-specific evaluator usable as ``--protocol name``."""
    CUSTOM_EVALUATORS[name] = fn

FULL_DSA = "color_crop_cutout_flip_scale_rotate"


@dataclasses.dataclass
class EvalProtocol:
    """How a synthetic set is evaluated. Every field is echoed into each result.

    Attributes:
        name: preset name the protocol derives from.
        model: network-registry name of the evaluation network.
        epochs: training epochs (the loop runs ``epochs + 1`` passes, as the reference).
        batch_size: training batch size.
        lr: learning rate (ignored when ``lr_from_synset``).
        lr_from_synset: use the learning rate learned with the set (MTT/DATM).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        schedule: ``step_half`` (x0.1 once at half), ``multistep`` (x``gamma`` at ``milestones``), ``cosine``,
            ``constant``.
        milestones: fractions of training at which ``multistep`` decays.
        gamma: ``multistep`` decay factor.
        dsa_strategy: DSA families for training ("" = none); flip is dropped for digit datasets.
        dc_aug: DC's non-differentiable augmentation for training, e.g. ``crop_scale_rotate`` ("" = none).
        dc_aug_rule: choose ``dc_aug`` and the epochs by DC's per-dataset rule (:func:`dc_augmentation_for`):
            ``epochs_aug`` epochs when it picks an augmentation, ``epochs`` otherwise. Resolved by
            :func:`resolve_protocol` once the dataset and network are known; the result records both.
        epochs_aug: epochs when ``dc_aug_rule`` picks an augmentation (1000 in the reference).
        cutmix_prob: probability of CutMix per batch (0 = off).
        cutmix_beta: CutMix Beta parameter.
        label_loss: ``ce`` (hard), ``soft_ce`` or ``kl`` (soft labels).
        temperature: softmax temperature for soft labels.
        zca: the ZCA variant the set must live in (``none``, ``kornia``, ``kip``).
        runs: freshly initialised networks to train.
        ensemble: ``batched`` (one vmapped ensemble), ``sequential`` or ``auto`` (sequential on CPU, where it
            measured faster; batched on GPU for networks without batch norm).
        test_batch_size: batch size on the test split (no effect on results).
    """

    name: str = "dc"
    model: str = "convnet"
    epochs: int = 300
    batch_size: int = 256
    lr: float = 0.01
    lr_from_synset: bool = False
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["step_half", "multistep", "cosine", "constant"] = "step_half"
    milestones: tuple[float, ...] = (2 / 3, 5 / 6)
    gamma: float = 0.2
    dsa_strategy: str = ""
    dc_aug: str = ""
    dc_aug_rule: bool = False
    epochs_aug: int = 1000
    cutmix_prob: float = 0.0
    cutmix_beta: float = 1.0
    label_loss: Literal["ce", "soft_ce", "kl"] = "ce"
    temperature: float = 1.0
    zca: Literal["none", "kornia", "kip"] = "none"
    runs: int = 5
    ensemble: Literal["auto", "batched", "sequential"] = "auto"
    test_batch_size: int = 100

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.runs < 1 or self.batch_size < 1:
            raise ValueError("epochs must be >= 0 and runs, batch_size positive")


PROTOCOLS: dict[str, EvalProtocol] = {
    "dc": EvalProtocol(name="dc", dc_aug_rule=True),
    "cafe": EvalProtocol(name="cafe", epochs=600, dc_aug_rule=True),
    "dsa": EvalProtocol(name="dsa", epochs=1000, dsa_strategy=FULL_DSA),
    "mtt": EvalProtocol(name="mtt", epochs=1000, dsa_strategy=FULL_DSA, lr_from_synset=True),
    "idc": EvalProtocol(name="idc", epochs=1000, batch_size=64, schedule="multistep", milestones=(2 / 3, 5 / 6),
                        gamma=0.2, dsa_strategy="color_crop_flip_scale_rotate", cutmix_prob=0.5),
    "soft": EvalProtocol(name="soft", epochs=1000, dsa_strategy=FULL_DSA, label_loss="soft_ce"),
}


# Old names that still work: ``dc_mnist`` was DC's MNIST recipe before ``dc`` applied it per dataset.
PROTOCOL_ALIASES = {"dc_mnist": "dc"}

# DC's per-dataset evaluation augmentation (``get_daparam``): only MNIST is augmented.
DC_AUG_BY_DATASET = {"mnist": "crop_scale_rotate"}


def dc_augmentation_for(dataset: str, model: str) -> str:
    """DC's ``get_daparam`` rule: ``crop_noise`` for a BatchNorm ConvNet, ``crop_scale_rotate`` for MNIST,
    else none (``""``)."""
    key = model.lower()
    if key.startswith("convnet") and "bn" in key.split("_")[1:]:
        return "crop_noise"
    return DC_AUG_BY_DATASET.get(dataset, "")


def resolve_protocol(protocol: EvalProtocol, dataset: str) -> EvalProtocol:
    """Apply DC's per-dataset rule (when ``dc_aug_rule`` is set) for ``dataset`` and the protocol's network.

    The augmented epoch count (``epochs_aug``) replaces ``epochs`` only while ``epochs`` is still the preset's
    own value, so an explicit epoch count (``get_protocol("dc", epochs=50)``, a YAML file) is kept.
    """
    if not protocol.dc_aug_rule:
        return protocol
    aug = dc_augmentation_for(dataset, protocol.model)
    preset = PROTOCOLS.get(protocol.name)
    default_epochs = preset.epochs if preset is not None else protocol.epochs
    epochs = protocol.epochs_aug if aug and protocol.epochs == default_epochs else protocol.epochs
    return dataclasses.replace(protocol, dc_aug=aug, epochs=epochs)


def default_protocol(synset: SyntheticSet) -> str:
    """The evaluation protocol of the method that made ``synset`` (its registry ``default_eval``).

    Sets from unregistered methods (e.g. imported files) fall back on their labels: ``soft`` for soft labels,
    ``mtt`` for a set with a learned learning rate, else ``dc``.
    """
    from .methods import _METHODS, list_methods

    list_methods()  # registers every method (and the method packages' evaluators)
    method = synset.meta.get("method")
    if method in _METHODS:
        return _METHODS[method].default_eval
    if synset.soft:
        return "soft"
    return "mtt" if synset.lr is not None else "dc"


def get_protocol(name_or_path: str | Path, **overrides: Any) -> EvalProtocol:
    """A preset by name (``dc``, ``cafe``, ``dsa``, ``mtt``, ``idc``, ``soft``) or a YAML file, with field
    overrides. DC's per-dataset rule is resolved later, by :func:`evaluate` (see :func:`resolve_protocol`)."""
    key = PROTOCOL_ALIASES.get(str(name_or_path), str(name_or_path))
    if key in PROTOCOLS:
        base = config_to_dict(PROTOCOLS[key])
    elif key.endswith((".yaml", ".yml")):
        data = read_yaml(key)
        base = config_to_dict(PROTOCOLS[data.get("name", "dc")]) if data.get("name", "dc") in PROTOCOLS else {}
        base.update(data)
    else:
        raise GendistillError(f"unknown protocol {key!r}; use one of {', '.join(PROTOCOLS)} or a .yaml file")
    given = {k: v for k, v in overrides.items() if v is not None}
    if key.endswith((".yaml", ".yml")):
        given = {**data, **given}
    base.update(given)
    if "dc_aug" in given and "dc_aug_rule" not in given:
        base["dc_aug_rule"] = False  # an explicit augmentation replaces DC's per-dataset rule
    return from_dict(EvalProtocol, base)


@dataclasses.dataclass
class EvalResult:
    """Final-epoch test accuracies (%) of ``runs`` freshly trained networks, with the full protocol."""

    mean: float
    std: float
    accs: list[float]
    protocol: dict[str, Any]
    reduced: bool
    reduced_note: str
    wall_time_s: float
    seconds_per_run: float
    ensemble: str
    peak_memory_mb: float
    seed: int
    synset: dict[str, Any]
    protocol_source: str = "given"

    def summary(self) -> str:
        tag = " [reduced: " + self.reduced_note + "]" if self.reduced else ""
        p = self.protocol
        recipe = f"{p['name']}: {p['model']}, {p['epochs']} epochs"
        aug = "+".join(x for x in (p.get("dsa_strategy") and "dsa " + p["dsa_strategy"],
                                   p.get("dc_aug") and "dc-aug " + p["dc_aug"]) if x)
        recipe += f", {aug}" if aug else ", no augmentation"
        return f"{self.mean:.2f} ± {self.std:.2f} % over {len(self.accs)} runs ({recipe}){tag}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------- helpers
def _soft_targets(labels: torch.Tensor, temperature: float) -> torch.Tensor:
    probs_like = bool((labels >= 0).all()) and torch.allclose(labels.sum(1), torch.ones(len(labels)), atol=1e-3)
    return labels if probs_like else F.softmax(labels / temperature, dim=1)


def _loss(out: torch.Tensor, target: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    if target.dim() == 1:
        return F.cross_entropy(out, target)
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
                 device: torch.device, bar_per_batch: bool = False) -> None:
        self.p, self.x, self.y, self.lr, self.dsa, self.device = protocol, x, y, lr, dsa, device
        self.passes = protocol.epochs + 1
        self.batches_per_pass = -(-x.shape[0] // protocol.batch_size)
        self.bar_per_batch = bar_per_batch
        self.dc_aug = DCAugment(protocol.dc_aug) if protocol.dc_aug else None

    def _batch(self, perm: torch.Tensor, start: int, gen: torch.Generator):
        idx = perm[start : start + self.p.batch_size].to(self.device)
        xb, yb = self.x[idx], self.y[idx]
        if self.dsa.enabled:
            xb = self.dsa(xb, gen)
        if self.dc_aug is not None:
            xb = self.dc_aug(xb, gen)
        yb2, lam = yb, 1.0
        if self.p.cutmix_prob > 0:
            xb, yb, yb2, lam = cutmix(xb, yb, gen, self.p.cutmix_beta, self.p.cutmix_prob)
        return xb, yb, yb2, lam

    def _batch_loss(self, out, yb, yb2, lam):
        loss = _loss(out, yb, self.p.label_loss, self.p.temperature)
        if lam < 1.0:
            loss = lam * loss + (1 - lam) * _loss(out, yb2, self.p.label_loss, self.p.temperature)
        return loss

    def _optimizer(self, params, lr):
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

    def train_sequential(self, net: nn.Module, gen: torch.Generator, progress) -> torch.Tensor:
        net.train()
        opt = self._optimizer(net.parameters(), _lr_at(self.p, self.lr, self.passes, 0))
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        n = self.x.shape[0]
        for epoch in range(self.passes):
            opt = self._schedule(opt, net.parameters(), epoch)
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, self.p.batch_size):
                xb, yb, yb2, lam = self._batch(perm, start, gen)
                opt.zero_grad(set_to_none=True)
                loss = blocked_mean_backward(functools.partial(self._batch_loss, lam=lam), net, xb, yb, yb2,
                                             rows=block_rows(net, xb))
                bad |= ~torch.isfinite(loss)
                opt.step()
                if self.bar_per_batch:
                    progress.update(1)
            if not self.bar_per_batch:
                progress.update(1)
        return bad

    def train_batched(self, nets: list[nn.Module], gens: list[torch.Generator], progress):
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
        return params, buffers, base, bad


def split_accuracy(net: nn.Module, test: RealDataset, batch_size: int = 100, device: str | torch.device = "cpu",
                   progress: bool = False) -> float:
    """Top-1 accuracy (%) of ``net`` on the whole split (eval mode, inference mode)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    # channels_last with small batches is ~2x faster for CPU inference (measured; see scripts/bench_eval.py).
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    net.eval().to(memory_format=fmt)
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.inference_mode():
        for xb, yb in tqdm(test.batches(batch_size), total=-(-len(test) // batch_size), unit="batch",
                           desc=f"test pass ({len(test)} images)", disable=not progress, leave=False):
            correct += (net(xb.to(device).contiguous(memory_format=fmt)).argmax(1) == yb.to(device)).sum()
    return 100.0 * int(correct) / len(test)


def _accuracy_batched(params, buffers, base, test: RealDataset, batch_size: int, device) -> list[float]:
    from torch.func import functional_call

    base.eval()
    m = next(iter(params.values())).shape[0]
    correct = torch.zeros(m, dtype=torch.long, device=device)
    vrun = torch.vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))
    with torch.inference_mode():
        for xb, yb in test.batches(batch_size):
            out = vrun({k: v.detach() for k, v in params.items()}, buffers, xb.to(device))
            correct += (out.argmax(2) == yb.to(device).unsqueeze(0)).sum(1)
    return [100.0 * c / len(test) for c in correct.tolist()]


def _check_compatible(synset: SyntheticSet, test: RealDataset, protocol: EvalProtocol) -> None:
    if tuple(synset.images.shape[1:]) != tuple(test.image_shape):
        raise GendistillError(f"synthetic images are {tuple(synset.images.shape[1:])} but the test split of "
                              f"{test.name} is {tuple(test.image_shape)}; evaluate on the dataset it was made from")
    if synset.num_classes != test.num_classes:
        raise GendistillError(f"synthetic set has {synset.num_classes} classes, {test.name} has {test.num_classes}")
    if not synset.preprocessing.same_space(test.preprocessing):
        raise GendistillError(
            f"the synthetic set lives in a different space ({synset.preprocessing.describe()}) than the test split "
            f"({test.preprocessing.describe()}); load the dataset with the same normalisation/ZCA (e.g. --zca)"
        )
    want = protocol.zca
    have = synset.preprocessing.zca.variant if synset.preprocessing.zca is not None else "none"
    if want != have:
        raise GendistillError(f"protocol {protocol.name} expects ZCA '{want}' but the set uses '{have}'; "
                              f"pass --set zca={have} if that is intended")
    if synset.soft and protocol.label_loss == "ce":
        raise GendistillError("the set has soft labels; evaluate with --protocol soft (or label_loss=kl)")
    if protocol.lr_from_synset and synset.lr is None:
        raise GendistillError(f"protocol {protocol.name} uses the learned lr, but the set has none; use dsa")


def _test_subset(test: RealDataset, size: int | None, seed: int) -> tuple[RealDataset, list[str]]:
    """A class-balanced, seeded subset of about ``size`` test images (and the note that labels it reduced)."""
    if not size:
        return test, []
    per_class = max(1, min(size // test.num_classes, int(test.class_counts.min())))
    subset = test.subset(test.sample_indices(per_class, make_generator(derive_seed(seed, "test-subset"))).reshape(-1))
    return subset, [f"test subset {len(subset)} of {len(test)} images"]


def evaluate(
    synset: SyntheticSet,
    test: RealDataset,
    protocol: EvalProtocol | str | None = None,
    *,
    model: str | None = None,
    runs: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    test_subset: int | None = None,
) -> EvalResult:
    """Train ``runs`` fresh networks on ``synset`` under ``protocol`` and test each on ``test``.

    Args:
        synset: the synthetic set.
        test: the real test split, in the same preprocessing space as the set.
        protocol: a preset name, a method evaluator's name (e.g. ``dd``), a YAML file or an
            :class:`EvalProtocol`; ``None`` takes the default of the method that made the set
            (:func:`default_protocol`), recorded as ``protocol_source``.
        model: override the evaluation network.
        runs: override the number of networks.
        epochs: override the epochs; fewer than the preset's marks the result as reduced.
        seed: base seed; run ``i`` uses ``derive_seed(seed, "eval", i)``.
        device: where to train.
        progress: show progress bars (training passes, test pass).
        test_subset: test on a class-balanced subset of this many images (seeded by ``seed``; a reduced,
            labelled result) instead of the whole test split.
    """
    from tqdm.auto import tqdm

    source = "given"
    if protocol is None:
        protocol = default_protocol(synset)
        source = f"default of method {synset.meta.get('method')}"
    if isinstance(protocol, str):
        protocol = PROTOCOL_ALIASES.get(protocol, protocol)
        if protocol not in CUSTOM_EVALUATORS:
            from .methods import list_methods

            list_methods()  # method packages register their evaluators on import
        if protocol in CUSTOM_EVALUATORS:
            test, notes = _test_subset(test, test_subset, seed)
            result = CUSTOM_EVALUATORS[protocol](synset, test, runs=runs or 5, seed=seed, model=model,
                                                 device=str(device))
            if epochs is not None:
                result.protocol["epochs_override_ignored"] = epochs  # the method's own schedule has no epochs
            if notes:
                result.reduced = True
                result.reduced_note = "; ".join(filter(None, [result.reduced_note, *notes]))
            result.protocol_source = source
            return result
    preset = PROTOCOLS.get(protocol) if isinstance(protocol, str) else PROTOCOLS.get(protocol.name)
    proto = get_protocol(protocol) if isinstance(protocol, str) else copy.deepcopy(protocol)
    if isinstance(protocol, str) and synset.preprocessing.zca is not None:  # a preset adopts the set's ZCA
        proto = dataclasses.replace(proto, zca=synset.preprocessing.zca.variant)
    proto = resolve_protocol(dataclasses.replace(proto, model=model or proto.model), test.name)
    proto = dataclasses.replace(proto, runs=runs or proto.runs, epochs=epochs or proto.epochs)
    if preset is not None:
        preset = resolve_protocol(dataclasses.replace(preset, model=proto.model), test.name)
    _check_compatible(synset, test, proto)
    notes = []
    if preset is not None and proto.epochs < preset.epochs:
        notes.append(f"epochs {proto.epochs} of {preset.epochs}")
    if preset is not None and proto.runs < preset.runs:
        notes.append(f"runs {proto.runs} of {preset.runs}")
    test, subset_notes = _test_subset(test, test_subset, seed)
    notes += subset_notes
    device = torch.device(device)
    x, y = synset.materialize()
    x = x.detach().to(device)
    y = _soft_targets(y.float(), proto.temperature).to(device) if synset.soft else y.to(device)
    lr = float(synset.lr) if proto.lr_from_synset else proto.lr
    dsa = DSA.for_dataset(test.flip_ok, proto.dsa_strategy) if proto.dsa_strategy else DSA("none")
    proto = dataclasses.replace(proto, dsa_strategy=dsa.strategy if dsa.enabled else "")  # what actually runs
    c, h, _ = test.image_shape
    seeds = [derive_seed(seed, "eval", i) for i in range(proto.runs)]
    nets = [create_network(proto.model, c, test.num_classes, h, seed=s).to(device) for s in seeds]
    gens = [make_generator(derive_seed(s, "data")) for s in seeds]
    mode = proto.ensemble
    if mode == "auto":  # measured on 2 CPU cores: sequential is ~2x faster than the vmapped ensemble
        mode = "sequential" if _needs_sequential(nets[0]) or device.type == "cpu" else "batched"
    if mode == "batched" and _needs_sequential(nets[0]):
        raise GendistillError(f"{proto.model} has batch-norm statistics; use ensemble=sequential")
    trainer = _Trainer(proto, x, y, lr, dsa, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the peak of this evaluation, not of the process so far
    start = time.perf_counter()
    bar = tqdm(total=proto.runs * trainer.passes, unit="pass", disable=not progress, leave=False,
               desc=f"eval {proto.model} ({proto.name}: {proto.runs} runs x {proto.epochs} epochs + 1 pass)")
    if mode == "batched":
        params, buffers, base, bad = trainer.train_batched(nets, gens, bar)
        if bool(bad):
            raise NonFiniteLossError("evaluation loss became NaN/inf: the synthetic set has extreme values or the "
                                     "lr is too high; check the set (gendistill export) or lower the lr")
        accs = _accuracy_batched(params, buffers, base, test, proto.test_batch_size, device)
    else:
        accs = []
        for net, gen in zip(nets, gens, strict=True):
            if bool(trainer.train_sequential(net, gen, bar)):
                raise NonFiniteLossError("evaluation loss became NaN/inf: the synthetic set has extreme values or "
                                         "the lr is too high; check the set or lower the lr")
            accs.append(split_accuracy(net, test, proto.test_batch_size, device, progress=progress))
    bar.close()
    wall = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return EvalResult(
        mean=float(np.mean(accs)), std=float(np.std(accs)), accs=[float(a) for a in accs],
        protocol=config_to_dict(proto), reduced=bool(notes), reduced_note="; ".join(notes), wall_time_s=wall,
        seconds_per_run=wall / proto.runs, ensemble=mode, peak_memory_mb=peak, seed=seed,
        synset={"method": synset.meta.get("method"), "dataset": synset.meta.get("dataset", test.name),
                "preset": synset.meta.get("preset"), "reduced_budget": bool(synset.meta.get("reduced_budget")),
                "ipc": synset.ipc, "num_images": len(synset), "label_kind": "soft" if synset.soft else "hard",
                "preprocessing": synset.preprocessing.describe()},
        protocol_source=source,
    )


def train_network(net: nn.Module, x: torch.Tensor, y: torch.Tensor, protocol: EvalProtocol,
                  generator: torch.Generator, *, flip_ok: bool = True, device: str | torch.device = "cpu",
                  progress: bool = False, desc: str = "train") -> nn.Module:
    """Train ``net`` in place on ``(x, y)`` with the protocol's optimiser, schedule and augmentation.

    The same loop the evaluator uses; methods use it to train feature extractors or inner networks on real data.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    dsa = DSA.for_dataset(flip_ok, protocol.dsa_strategy) if protocol.dsa_strategy else DSA("none")
    trainer = _Trainer(protocol, x.to(device), y.to(device), protocol.lr, dsa, device, bar_per_batch=True)
    with tqdm(total=trainer.passes * trainer.batches_per_pass, desc=desc, unit="batch", disable=not progress,
              leave=False) as bar:
        if bool(trainer.train_sequential(net.to(device), generator, bar)):
            raise NonFiniteLossError("training loss became NaN/inf; lower the learning rate")
    return net.eval()
