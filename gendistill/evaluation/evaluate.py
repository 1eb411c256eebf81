"""Evaluate a synthetic set: train fresh networks on it under a protocol, test each on the real test split.

As in the reference loop, training runs ``epochs + 1`` passes (``extra_pass``; IDC's ``train.py`` runs
``epochs``). ``mean``/``std``/``accs`` are always final-epoch accuracies on the full test split; a protocol with
``eval_count`` > 0 also tests during training and reports the best of those tests separately (``best_*``).
Each run ``i`` initialises its network from ``derive_seed(seed, "eval", i)`` and draws its batches and
augmentations from its own generator, so a run gives the same number whether the runs are trained one after
another or as one batched ensemble (``torch.func.stack_module_state`` + ``vmap``).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from gendistill.data.datasets import RealDataset
from gendistill.evaluation.protocols import (
    CUSTOM_EVALUATORS,
    PROTOCOL_ALIASES,
    PROTOCOLS,
    EvalProtocol,
    _load_providers,
    applied_fields,
    default_protocol,
    get_protocol,
    resolve_protocol,
)
from gendistill.evaluation.selection import best_of_run_fields
from gendistill.evaluation.trainer import _accuracy_batched, _needs_sequential, _soft_targets, _Trainer, split_accuracy
from gendistill.nn.augment import DSA, IDCAugment
from gendistill.nn.compiling import compile_backend
from gendistill.nn.nets import create_network
from gendistill.nn.precision import autocast_dtype
from gendistill.synset.decoders import multiformation_factor
from gendistill.synset.format import SyntheticSet
from gendistill.utils.errors import GendistillError, NonFiniteLossError
from gendistill.utils.resources import peak_memory_mb
from gendistill.utils.seeding import derive_seed, make_generator

__all__ = ["EvalResult", "evaluate"]


@dataclasses.dataclass
class EvalResult:
    """Final-epoch test accuracies (%) of ``runs`` freshly trained networks, with the full protocol.

    ``best_mean``/``best_std``/``best_accs`` are the best-of-run statistic of papers that publish one
    (``best_over`` says which): protocols with ``eval_count`` > 0 test during training and keep per run the best of
    those tests and the test after the last epoch (``best_epochs``, 1-based; IDC, Minimax, DD-Ranking); a set
    distilled with best-of-run selection (:mod:`gendistill.evaluation.selection`; MTT, DATM) carries the best of its
    periodic evaluations under this protocol (``best_iteration``). ``mean``/``std``/``accs`` stay final-epoch.
    """

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
    teacher: dict[str, Any] | None = None
    best_mean: float | None = None
    best_std: float | None = None
    best_accs: list[float] | None = None
    best_epochs: list[int] | None = None
    best_over: str | None = None
    best_iteration: int | None = None
    compiled: str | None = None  # the torch.compile backend of the networks' forwards ($GENDISTILL_COMPILE), or None
    autocast: str | None = None  # "bf16" when the networks trained and tested under bfloat16 autocast, else None

    def summary(self) -> str:
        tag = " [reduced: " + self.reduced_note + "]" if self.reduced else ""
        p = self.protocol
        recipe = f"{p['name']}: {p['model']}, {p['epochs']} epochs"
        aug = "+".join(x for x in (p.get("dsa_strategy") and "dsa " + p["dsa_strategy"],
                                   p.get("dc_aug") and "dc-aug " + p["dc_aug"],
                                   p.get("resize_crop") and f"random-resized-crop {p['resize_crop']} px",
                                   (p.get("color_jitter") or p.get("lighting")) and "jitter+lighting") if x)
        recipe += f", {aug}" if aug else ", no augmentation"
        recipe += f", {self.autocast} autocast" if self.autocast else ""
        if self.best_mean is None:
            return f"{self.mean:.2f} ± {self.std:.2f} % over {len(self.accs)} runs ({recipe}){tag}"
        over = ("best distillation checkpoint on test" if self.best_over == "distillation checkpoints"
                else "best on test during training")
        return (f"final epoch {self.mean:.2f} ± {self.std:.2f} %, {over} "
                f"{self.best_mean:.2f} ± {self.best_std:.2f} % over {len(self.accs)} runs ({recipe}){tag}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)



def _teacher(protocol: EvalProtocol, train: RealDataset | None, test: RealDataset, device: Any,
             progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The protocol's teacher: ``protocol.teacher`` trained on the full real training split, cached like the
    set-quality report's network (its own seed, so it is not that network). Its record carries its own accuracy on
    ``test`` (``test_accuracy``, %): the labels' ceiling that every student of this regime learns from."""
    from gendistill.evaluation.features import FeatureSpec, cached_feature_network

    if train is None:
        raise GendistillError(f"protocol {protocol.name} relabels with a teacher trained on the real training split; "
                              "pass train= (gendistill eval and bench load it themselves)")
    if train.name != test.name or train.image_shape != test.image_shape:
        raise GendistillError(f"the teacher's training split ({train.name}) is not the test split's dataset "
                              f"({test.name})")
    spec = FeatureSpec(model=protocol.teacher, epochs=protocol.teacher_epochs, device=str(device))
    net, record = cached_feature_network(train, spec, derive_seed(0, "teacher", protocol.teacher), progress=progress,
                                         role=f"teacher-{protocol.teacher}")
    for p in net.parameters():
        p.requires_grad_(False)
    # on a copy: the test pass may change the network's memory format, and the relabelling must not see that
    accuracy = split_accuracy(copy.deepcopy(net), test, device=device)
    return net, {**record, "test_accuracy": round(accuracy, 2)}


def _check_compatible(synset: SyntheticSet, test: RealDataset, protocol: EvalProtocol, relabelled: bool = False
                      ) -> None:
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
    if (protocol.color_jitter > 0 or protocol.lighting > 0) and synset.preprocessing.zca is not None:
        raise GendistillError(f"protocol {protocol.name} jitters colours in pixel space, which a ZCA-whitened set "
                              "does not have; set color_jitter=0 lighting=0")
    if synset.soft and protocol.label_loss == "ce" and not relabelled:
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
    train: RealDataset | None = None,
    teacher_epochs: int | None = None,
    eval_count: int | None = None,
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
        train: the real training split, needed by protocols with a ``teacher`` (trained on it once, cached).
        teacher_epochs: override the teacher's training epochs (protocols with a ``teacher``); fewer than the
            preset's marks the result as reduced.
        eval_count: override how often the protocol tests during training for its best-of figure (fewer than the
            preset's, but not 0, marks the result as reduced; 0 drops the best-of figure; the final-epoch headline is
            unaffected either way).
    """
    from tqdm.auto import tqdm

    source = "given"
    if protocol is None:
        protocol = default_protocol(synset)
        source = f"default of method {synset.meta.get('method')}"
    if isinstance(protocol, str):
        protocol = PROTOCOL_ALIASES.get(protocol, protocol)
        if protocol not in CUSTOM_EVALUATORS and protocol not in PROTOCOLS:
            _load_providers()  # method modules register their evaluators on import
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
    set_rule = {"factor": multiformation_factor(synset.meta), "ipc": synset.ipc, "num_classes": synset.num_classes}
    proto = resolve_protocol(dataclasses.replace(proto, model=model or proto.model), test.name, **set_rule)
    proto = dataclasses.replace(proto, runs=runs or proto.runs, epochs=epochs or proto.epochs)
    if teacher_epochs is not None and proto.teacher:
        if teacher_epochs < 1:
            raise GendistillError(f"teacher_epochs must be at least 1, got {teacher_epochs}")
        proto = dataclasses.replace(proto, teacher_epochs=teacher_epochs)
    if eval_count is not None:
        if eval_count < 0:
            raise GendistillError(f"eval_count must be 0 or more, got {eval_count}")
        proto = dataclasses.replace(proto, eval_count=eval_count)
    if preset is not None:
        preset = resolve_protocol(dataclasses.replace(preset, model=proto.model), test.name, **set_rule)
    if proto.resize_crop == -1:  # RandomResizedCrop back to the image's own size
        proto = dataclasses.replace(proto, resize_crop=test.image_shape[-1])
    teacher = teacher_record = None
    if proto.teacher:
        teacher, teacher_record = _teacher(proto, train, test, device, progress)
    elif synset.soft and synset.meta.get("kip_label_space") == "centred" and proto.label_loss != "mse":
        # KIP's learned labels are regression targets (about one-hot - 1/C), not logits: a softmax of them would give
        # the true class 0.23 with 10 classes and 0.03 with 100. Train on them with MSE, as the KIP papers do.
        proto = dataclasses.replace(proto, label_loss="mse")
    _check_compatible(synset, test, proto, teacher is not None)
    notes = []
    if preset is not None and proto.epochs < preset.epochs:
        notes.append(f"epochs {proto.epochs} of {preset.epochs}")
    if preset is not None and proto.runs < preset.runs:
        notes.append(f"runs {proto.runs} of {preset.runs}")
    if preset is not None and proto.teacher and proto.teacher_epochs < preset.teacher_epochs:
        notes.append(f"teacher trained {proto.teacher_epochs} of {preset.teacher_epochs} epochs")
    if preset is not None and 0 < proto.eval_count < preset.eval_count:  # 0: no best-of figure, nothing reduced
        notes.append(f"tested {proto.eval_count} of {preset.eval_count} times during training (best-of figure)")
    test, subset_notes = _test_subset(test, test_subset, seed)
    notes += subset_notes
    device = torch.device(device)
    x, y = synset.materialize()
    x = x.detach().to(device)
    if teacher is not None:
        y = (y.argmax(1) if y.dim() == 2 else y).to(device)  # not trained on: the teacher relabels every view
    elif synset.soft:
        y = (y.float() if proto.label_loss == "mse" else _soft_targets(y.float(), proto.temperature)).to(device)
    else:
        y = y.to(device)
    lr = float(synset.lr) if proto.lr_from_synset else proto.lr
    aug_cls = IDCAugment if proto.aug_mode == "idc" else DSA
    dsa = aug_cls.for_dataset(test.flip_ok, proto.dsa_strategy) if proto.dsa_strategy else DSA("none")
    proto = dataclasses.replace(proto, dsa_strategy=dsa.strategy if dsa.enabled else "")  # what actually runs
    c, h, _ = test.image_shape
    h = proto.resize_crop or h  # ImageNet-style protocols train and test at resize_crop
    seeds = [derive_seed(seed, "eval", i) for i in range(proto.runs)]
    nets = [create_network(proto.model, c, test.num_classes, h, seed=s).to(device) for s in seeds]
    gens = [make_generator(derive_seed(s, "data")) for s in seeds]
    mode = proto.ensemble
    if mode == "auto":  # measured on 2 CPU cores: sequential is ~2x faster than the vmapped ensemble
        mode = ("sequential" if _needs_sequential(nets[0]) or teacher is not None or device.type == "cpu"
                else "batched")
    if mode == "batched" and (_needs_sequential(nets[0]) or teacher is not None):
        raise GendistillError(f"{proto.model} has batch-norm statistics or a teacher; use ensemble=sequential")
    # bfloat16 autocast ($GENDISTILL_AUTOCAST: auto by default, --bf16, --fp32) reaches the sequential networks; the
    # vmapped ensemble stays fp32
    amp = autocast_dtype(device, nets[0]) if mode != "batched" else None
    trainer = _Trainer(proto, x, y, lr, dsa, device,
                       pixel_stats=(synset.preprocessing.mean, synset.preprocessing.std),
                       teacher=teacher.to(device) if teacher is not None else None, autocast=amp)
    size = proto.resize_crop
    every = max(1, proto.epochs // proto.eval_count) if proto.eval_count else 0
    history: list[list[tuple[int, float]]] = [[] for _ in seeds]  # (1-based epoch, test accuracy) per run

    def due(epoch: int) -> bool:  # a test after pass ``epoch`` (0-based); the last pass is tested below anyway
        return bool(every) and (epoch + 1) % every == 0 and epoch + 1 < trainer.passes

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the peak of this evaluation, not of the process so far
    start = time.perf_counter()
    bar = tqdm(total=proto.runs * trainer.passes, unit="pass", disable=not progress, leave=False,
               desc=f"eval {proto.model} ({proto.name}: {proto.runs} runs x {proto.epochs} epochs"
                    f"{' + 1 pass' if proto.extra_pass else ''})")
    if mode == "batched":
        def test_ensemble(epoch: int, params, buffers, base) -> None:
            if due(epoch):
                for i, acc in enumerate(_accuracy_batched(params, buffers, base, test, proto.test_batch_size,
                                                          device, size)):
                    history[i].append((epoch + 1, acc))
                base.train()

        params, buffers, base, bad = trainer.train_batched(nets, gens, bar, on_epoch=test_ensemble if every else None)
        if bool(bad):
            raise NonFiniteLossError("evaluation loss became NaN/inf: the synthetic set has extreme values or the "
                                     "lr is too high; check the set (gendistill export) or lower the lr")
        accs = _accuracy_batched(params, buffers, base, test, proto.test_batch_size, device, size)
    else:
        accs = []
        for i, (net, gen) in enumerate(zip(nets, gens, strict=True)):
            def test_net(epoch: int, net: nn.Module = net, i: int = i) -> None:
                if due(epoch):
                    history[i].append((epoch + 1, split_accuracy(net, test, proto.test_batch_size, device,
                                                                 image_size=size, autocast=amp)))
                    net.train().to(memory_format=torch.contiguous_format)  # as it trained before the test

            if bool(trainer.train_sequential(net, gen, bar, on_epoch=test_net if every else None)):
                raise NonFiniteLossError("evaluation loss became NaN/inf: the synthetic set has extreme values or "
                                         "the lr is too high; check the set or lower the lr")
            accs.append(split_accuracy(net, test, proto.test_batch_size, device, progress=progress, image_size=size,
                                       autocast=amp))
    bar.close()
    best: dict[str, Any] = {}
    if every:  # the first test reaching the maximum, as the reference's ``acc1 > best_acc1``
        runs_best = [max([*h, (trainer.passes, float(a))], key=lambda t: t[1]) for h, a in zip(history, accs,
                                                                                              strict=True)]
        best_accs = [float(b[1]) for b in runs_best]
        best = {"best_mean": float(np.mean(best_accs)), "best_std": float(np.std(best_accs)), "best_accs": best_accs,
                "best_epochs": [int(b[0]) for b in runs_best], "best_over": "epochs"}
    else:  # a set distilled with best-of-run selection under this protocol (MTT, DATM)
        best = best_of_run_fields(synset.meta, proto.name)
        if best.get("best_reduced_note"):
            notes.append(f"best-of-run evaluations: {best.pop('best_reduced_note')}")
    wall = time.perf_counter() - start
    peak = peak_memory_mb(device)
    return EvalResult(
        mean=float(np.mean(accs)), std=float(np.std(accs)), accs=[float(a) for a in accs],
        protocol=applied_fields(proto), reduced=bool(notes), reduced_note="; ".join(notes), wall_time_s=wall,
        seconds_per_run=wall / proto.runs, ensemble=mode, peak_memory_mb=peak, seed=seed,
        synset={"method": synset.meta.get("method"), "dataset": synset.meta.get("dataset", test.name),
                "preset": synset.meta.get("preset"), "reduced_budget": bool(synset.meta.get("reduced_budget")),
                "ipc": synset.ipc, "num_images": len(synset), "num_train_images": int(x.shape[0]),
                "decoder": synset.meta.get("decoder"), "label_kind": "soft" if synset.soft else
                  "hardened" if synset.meta.get("labels_hardened") else "hard",
                "preprocessing": synset.preprocessing.describe()},
        protocol_source=source, teacher=teacher_record, compiled=compile_backend() if mode != "batched" else None,
        autocast="bf16" if amp is not None else None,
        **best,
    )


