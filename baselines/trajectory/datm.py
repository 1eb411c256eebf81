"""DATM - Towards Lossless Dataset Distillation via Difficulty-Aligned Trajectory Matching (Guo, Wang, Cazenavette,
Li, Zhang & You, ICLR 2024). MTT (:mod:`baselines.mtt`, imported, not copied) with (reference §2.8, details §4,
NUS-HPC-AI-Lab/DATM ``distill/DATM.py``, ``buffer/buffer_FTD.py``, ``configs/*/ConvIN``):

1. experts trained with GSAM (FTD flat trajectories: constant lr, rho 0.01, alpha 0.3, adaptive; 100 epochs);
2. the difficulty-aligned window: start epochs ~ U{T-, ..., upper - 1} where, with sequential generation, the
   upper bound grows T + (T+ - T) * it / expansion_end_epoch, capped at T+ (T+ fixed otherwise);
3. ``init: samples_predicted_correctly``: for every class, real images in random order that the first expert
   (at ``label_epoch``, default the final snapshot) classifies correctly, then those of the next expert, ...;
   each image's label starts as the mean logits of all experts that classify it correctly; the labels are
   learned with their own SGD (``lr_y``, momentum 0.9). ``init: real``: random real images, each labelled with
   the raw logits of expert 0 (at ``label_epoch``; the reference's ``buffer[0][-1]``);
4. the student's loss is soft cross-entropy -sum_k softmax(y)_k log softmax(f(x))_k; images, lr and labels are
   updated only when the matching loss is at most ``threshold``.

Evaluation: the ``datm`` protocol (soft cross-entropy, the learned lr, batch 128, DSA, 1000 epochs). The TESLA
gradient (``grad: tesla``, as the reference's ``DATM_tesla.py`` computes it: the adjoint held at lambda_N, the
detached TESLA gradient; ``grad: exact_sweep`` is the exact constant-memory gradient) also differentiates the labels.

Deviation (labelled in the set's metadata as ``init_fallback``): where the experts classify fewer than ``ipc``
images of a class correctly (the reference then loops forever) the remaining images are taken in the same
random order, and an image no expert classifies correctly starts from the mean label of its class's correctly
classified images (else the mean logits of all experts; the reference would divide by zero).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
import torch.nn.functional as F

from gendistill.baselines.base import initial_images
from gendistill.baselines.trajectory.mtt import FlatNetwork, MatchingTrainingTrajectories, MTTConfig
from gendistill.data.datasets import RealDataset
from gendistill.distiller import budget_field
from gendistill.evaluation.protocols import EvalProtocol, register_protocol
from gendistill.nn.augment import FULL_DSA
from gendistill.registry import register_method
from gendistill.synset.format import SyntheticSet
from gendistill.utils.errors import ConfigError, GendistillError

__all__ = ["DATMConfig", "DifficultyAlignedTrajectoryMatching", "expert_logits", "initial_soft_labels",
           "select_correctly_classified", "soft_cross_entropy"]


@dataclasses.dataclass
class DATMConfig(MTTConfig):
    """DATM settings (defaults: the CIFAR-10 IPC 10 config; presets per dataset/IPC).

    Attributes:
        current_max_start_epoch: T, the initial upper bound of the start epochs (sequential generation).
        sequential_generation: grow the upper bound from T to T+ over ``expansion_end_epoch`` iterations.
        expansion_end_epoch: iterations over which the upper bound grows.
        lr_y: SGD learning rate of the soft labels.
        momentum_y: SGD momentum of the soft labels.
        threshold: skip the update when the matching loss exceeds this.
        init: ``samples_predicted_correctly`` (DATM) or ``real``.
        label_epoch: expert snapshot used for the selection and the labels (-1 = the final epoch).
    """

    iterations: int = budget_field(10000, zero_is_full=True)
    syn_steps: int = budget_field(80)
    expert_epochs: int = 2
    min_start_epoch: int = 0
    current_max_start_epoch: int = 10
    max_start_epoch: int = 20
    sequential_generation: bool = True
    expansion_end_epoch: int = 1000
    lr_img: float = 100.0
    lr_lr: float = 1e-5
    lr_teacher: float = 0.01
    lr_y: float = 2.0
    momentum_y: float = 0.9
    threshold: float = 1.0
    batch_syn: int = budget_field(100, zero_is_full=True)
    init: Literal["samples_predicted_correctly", "real"] = "samples_predicted_correctly"
    label_epoch: int = -1
    buffer_epochs: int = budget_field(100)
    buffer_optimizer: Literal["sgd", "gsam"] = "gsam"


def soft_cross_entropy(out: torch.Tensor, label_logits: torch.Tensor) -> torch.Tensor:
    """DATM's ``SoftCrossEntropy``: ``-sum_k softmax(y)_k log softmax(out)_k``, averaged over the batch."""
    return -(F.softmax(label_logits, 1) * F.log_softmax(out, 1)).sum(1).mean()


@torch.no_grad()
def expert_logits(student: FlatNetwork, params: torch.Tensor, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Logits of the expert ``params`` on ``images`` (in batches of ``batch``), the network in eval mode (its
    previous mode restored after)."""
    was_training = student.net.training
    student.net.eval()
    try:
        return torch.cat([student(params, images[s : s + batch]) for s in range(0, images.shape[0], batch)])
    finally:
        student.net.train(was_training)


def select_correctly_classified(train: RealDataset, ipc: int, student: FlatNetwork, experts: list[torch.Tensor],
                                generator: torch.Generator, device: torch.device, batch: int = 256
                                ) -> tuple[torch.Tensor, dict[int, int]]:
    """DATM's ``samples_predicted_correctly``: ``ipc`` real images per class (class-major indices).

    Each class's images are scanned in one random order, ``batch`` at a time, keeping those the current expert
    classifies correctly; when a class is exhausted the scan restarts with the next expert (earlier picks kept).
    Returns the indices and, per class, how many had to be filled without any expert agreeing (deviation).
    """
    table = train.class_index
    keys = torch.rand(table.shape, generator=generator).masked_fill(table < 0, 2.0)
    order = torch.gather(table, 1, keys.argsort(1))
    c_all = train.num_classes
    chosen: list[list[int]] = [[] for _ in range(c_all)]
    for params in experts:
        for start in range(0, order.shape[1], batch):
            need = [c for c in range(c_all) if len(chosen[c]) < ipc]
            if not need:
                break
            block = order[need, start : start + batch]
            idx = block[block >= 0]
            if idx.numel() == 0:
                continue
            pred = expert_logits(student, params, train.images(idx).to(device)).argmax(1).cpu()
            label = train.labels[idx]
            hits = idx[pred == label]
            hit_labels = label[pred == label]
            for c in need:
                for i in hits[hit_labels == c].tolist():
                    if len(chosen[c]) == ipc:
                        break
                    if i not in chosen[c]:
                        chosen[c].append(i)
        if all(len(ch) == ipc for ch in chosen):
            break
    fallback = {}
    for c in range(c_all):
        short = ipc - len(chosen[c])
        if short:
            rest = [i for i in order[c][order[c] >= 0].tolist() if i not in chosen[c]][:short]
            if len(rest) < short:
                raise GendistillError(f"--ipc {ipc} exceeds the real images of class {c} of {train.name}")
            chosen[c] += rest
            fallback[c] = short
    return torch.tensor([i for ch in chosen for i in ch]), fallback


def initial_soft_labels(student: FlatNetwork, experts: list[torch.Tensor], images: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's mean logits over the experts that classify it correctly (``labels`` = true classes).

    Returns ``(label_logits [N, C], correct_experts [N])``. An image no expert classifies correctly (possible only
    after the selection's fallback) gets the mean label of its class's correctly classified images - a vector
    whose argmax is still the class - or, when its class has none, the mean logits of all experts (deviation,
    see the module docstring).
    """
    logits = torch.stack([expert_logits(student, p, images) for p in experts])  # [E, N, C]
    labels = labels.to(logits.device)
    correct = (logits.argmax(2) == labels.unsqueeze(0)).to(logits.dtype)  # [E, N]
    count = correct.sum(0)
    mean_correct = (logits * correct.unsqueeze(2)).sum(0) / count.clamp_min(1).unsqueeze(1)
    ok = (count > 0).to(logits.dtype)
    num_classes = logits.shape[2]
    proto_sum = torch.zeros(num_classes, num_classes, dtype=logits.dtype, device=logits.device)
    proto_sum.index_add_(0, labels, mean_correct * ok.unsqueeze(1))
    proto_n = torch.zeros(num_classes, dtype=logits.dtype, device=logits.device).index_add_(0, labels, ok)
    proto = proto_sum / proto_n.clamp_min(1).unsqueeze(1)
    fallback = torch.where((proto_n[labels] > 0).unsqueeze(1), proto[labels], logits.mean(0))
    return torch.where((count > 0).unsqueeze(1), mean_correct, fallback), count


# DATM's evaluate_synset: soft cross-entropy on the learned label logits, the learned lr, batch 128.
register_protocol(EvalProtocol(name="datm", epochs=1000, batch_size=128, dsa_strategy=FULL_DSA, lr_from_synset=True,
                               label_loss="soft_ce"))


@register_method("datm", config=DATMConfig, paper="Guo, Wang, Cazenavette, Li, Zhang & You, Towards Lossless "
                 "Dataset Distillation via Difficulty-Aligned Trajectory Matching, ICLR 2024", year=2024,
                 kind="pixel", label_kind="soft", default_eval="datm")
class DifficultyAlignedTrajectoryMatching(MatchingTrainingTrajectories):
    """MTT with GSAM experts, a growing difficulty window, learned soft labels and skipped bad updates."""

    def start_window(self, it: int) -> tuple[int, int]:
        cfg = self.config
        lo, hi = cfg.min_start_epoch, cfg.max_start_epoch
        if cfg.sequential_generation:
            first = min(cfg.current_max_start_epoch, hi)
            hi = min(first + int((hi - first) * it / max(cfg.expansion_end_epoch, 1)), hi)
        return lo, hi

    def _check_config(self, epochs: int | None) -> None:
        super()._check_config(epochs)
        cfg = self.config
        if cfg.sequential_generation and cfg.current_max_start_epoch <= cfg.min_start_epoch:
            raise ConfigError(f"current_max_start_epoch {cfg.current_max_start_epoch} must exceed min_start_epoch "
                              f"{cfg.min_start_epoch} (the first window would be empty); raise it or set "
                              "sequential_generation=false")
        if epochs is not None and not -(epochs + 1) <= cfg.label_epoch <= epochs:
            raise ConfigError(f"label_epoch {cfg.label_epoch} is outside {-(epochs + 1)}..{epochs} for a buffer of "
                              f"{epochs} epochs (-1 = the final snapshot)")

    def _expert_params(self, epoch: int) -> list[torch.Tensor]:
        return [self.buffer.snapshot(e, epoch).to(self.device) for e in range(self.buffer.num_experts)]

    def init_state(self, train: RealDataset, ipc: int, generator: torch.Generator, seed: int) -> dict[str, Any]:
        cfg = self.config
        self._reset()
        self._check_zca(train)
        self.buffer = self._open_buffer(train)
        epoch = cfg.label_epoch % (self.buffer.epochs + 1)
        student = self._student(train)
        hard = torch.arange(train.num_classes).repeat_interleave(ipc)
        if cfg.init == "samples_predicted_correctly":
            experts = self._expert_params(epoch)
            idx, fallback = select_correctly_classified(train, ipc, student, experts, generator, self.device)
            images = train.images(idx).clone()
            labels, correct = initial_soft_labels(student, experts, images.to(self.device), hard)
        else:  # the reference: every image gets expert 0's raw logits, right or wrong
            images, fallback = initial_images(train, ipc, "real", generator), {}
            labels = expert_logits(student, self.buffer.snapshot(0, epoch).to(self.device), images.to(self.device))
            correct = (labels.argmax(1).cpu() == hard).long()
        self._init_record = {"init": cfg.init, "label_epoch": epoch, "init_fallback": fallback,
                             "initial_label_accuracy": float((labels.argmax(1).cpu() == hard).float().mean()),
                             "images_without_correct_expert": int((correct == 0).sum())}
        state = self._live({"images": images, "syn_lr": torch.tensor(float(cfg.lr_teacher)), "labels": labels}, {})
        state["skipped"] = torch.zeros((), dtype=torch.long, device=self.device)
        return state

    def _live(self, tensors: dict[str, torch.Tensor], opt_states: dict[str, Any]) -> dict[str, Any]:
        state = super()._live(tensors, {k: v for k, v in opt_states.items() if k != "opt_y"})
        state["opt_y"] = torch.optim.SGD([state["labels"]], lr=self.config.lr_y, momentum=self.config.momentum_y)
        if "opt_y" in opt_states:
            state["opt_y"].load_state_dict(opt_states["opt_y"])
        return state

    def student_targets(self, state: dict[str, Any], train: RealDataset) -> torch.Tensor:
        return state["labels"]

    @staticmethod
    def student_loss(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(out, targets)

    def apply_update(self, state: dict[str, Any], loss: torch.Tensor) -> None:
        if bool(loss <= self.config.threshold):  # one sync per iteration, as the reference's comparison
            super().apply_update(state, loss)
        else:
            state["skipped"] += 1

    def step(self, it: int, state: dict[str, Any], train: RealDataset, generator: torch.Generator, seed: int
             ) -> dict[str, torch.Tensor]:
        metrics = super().step(it, state, train, generator, seed)
        metrics["skipped"] = state["skipped"].clone()
        return metrics

    def run_meta(self, state: dict[str, Any]) -> dict[str, Any]:
        meta = super().run_meta(state)
        meta.update(getattr(self, "_init_record", {}))
        meta["skipped_updates"] = int(state["skipped"])
        meta["label_loss"] = "soft_ce (softmax of the learned logits)"
        return meta

    def finalize(self, state: dict[str, Any], train: RealDataset, ipc: int, seed: int) -> SyntheticSet:
        return self.make_synset(train, state["images"], state["labels"].detach().float(), ipc, seed,
                                lr=float(state["syn_lr"].detach()), meta=self.run_meta(state))
