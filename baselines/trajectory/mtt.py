"""MTT - Dataset Distillation by Matching Training Trajectories (Cazenavette et al., CVPR 2022), with TESLA's
constant-memory gradient (Cui et al., ICML 2023) as published (``grad: tesla``) and an exact constant-memory
variant (``grad: exact_sweep``), and TESLA's soft-label assignment (``teacher_label``).

Learnables: the synthetic images (real initialisation, one-hot labels fixed) and one student learning rate
alpha (initialised to ``lr_teacher``), each with SGD momentum 0.5 (``lr_img``, ``lr_lr``). Each iteration
(mtt-distillation ``distill.py``, reference §2.7):

1. take the next expert of a shuffled pass over the buffer (:mod:`gendistill.buffers`) and a start epoch
   t ~ U{min_start_epoch, ..., max_start_epoch - 1}; theta_0 = theta*_t, target theta*_{t+M};
2. unroll ``syn_steps`` student steps theta_{n+1} = theta_n - alpha * grad l(A(x_n); theta_n) on minibatches of
   ``batch_syn`` synthetic images (chunks of a fresh permutation, popped from the end, a new permutation when
   they run out), non-siamese DSA on the student's inputs; the student is one functional network over a flat
   parameter vector (``torch.func.functional_call``);
3. loss ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2; one SGD step on the images and on alpha.

Gradient modes: ``unroll`` keeps the whole unrolled graph (memory grows with ``syn_steps``, as the reference);
``exact_sweep`` (this package's) stores only the N + 1 flat student parameter vectors, then sweeps backwards
recomputing one step's graph at a time and propagating the adjoint lambda_n = lambda_{n+1} - alpha * H_n
lambda_{n+1} (a Hessian-vector product), accumulating the image, label and lr gradients - the exact unrolled
gradient (equal to ``unroll`` in float64, tested) with activation memory constant in ``syn_steps``. ``tesla`` is
TESLA's gradient as its code computes it (``justincui03/tesla`` ``distill.py``): the adjoint held at lambda_N,
i.e. the terms through later student parameters dropped; it differs from ``unroll`` for ``syn_steps`` > 1.
``teacher_label`` (TESLA's ``--teacher_label``, used in its ImageNet-1K command): every iteration the images get
soft labels, the softmax of the expert network at that iteration's target snapshot, which the student's
cross-entropy uses; the set keeps the last ones and is evaluated under the ``tesla`` protocol (soft labels, the
learned lr).

Experts: ``buffer`` names a folder made by ``gendistill buffers``; a buffer made with other preprocessing or
another network is refused. With ``buffer: ""`` the method trains ``buffer_experts`` experts itself (seeded by
``buffer_seed``, recorded): into ``<run>/buffer`` when it runs in a run folder (resumable with the run),
else into a temporary folder that is read into memory and removed.

Evaluation: the ``mtt`` protocol (DSA, 1000 epochs) at the learned alpha, stored as the set's ``lr``.
Deviations (labelled): the expert order is a seeded permutation per pass over all experts (the reference
shuffles files, then experts within a file); the student network is created once per run instead of per
iteration (its parameters always come from the buffer, so nothing changes); digits drop DSA's flip.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gendistill.baselines.base import initial_images
from gendistill.baselines.trajectory.buffers import BufferRecipe, ExpertBuffer, train_buffers
from gendistill.data.datasets import RealDataset
from gendistill.distiller import IterativeDistiller, budget_field
from gendistill.evaluation.protocols import EvalProtocol, register_protocol
from gendistill.nn.augment import DSA, FULL_DSA, AugDraw
from gendistill.nn.nets import create_network
from gendistill.registry import register_method
from gendistill.synset.format import SyntheticSet
from gendistill.utils.errors import CheckpointError, ConfigError
from gendistill.utils.seeding import derive_seed, make_generator

__all__ = ["FlatNetwork", "MTTConfig", "MatchingTrainingTrajectories", "StepPlan", "matching_loss",
           "tesla_matching_loss", "unrolled_matching_loss"]


@dataclasses.dataclass
class MTTConfig:
    """MTT settings (defaults: the reference ``distill.py`` argparse defaults; presets per dataset/IPC).

    Attributes:
        iterations: outer iterations (5000 in the paper).
        syn_steps: student steps N per iteration.
        expert_epochs: expert epochs M between the start and the target snapshot.
        max_start_epoch: start epochs are drawn below this (T+).
        min_start_epoch: start epochs are drawn from here (0 for MTT; DATM's T-).
        lr_img: SGD learning rate of the images.
        lr_lr: SGD learning rate of the student learning rate.
        lr_teacher: initial student learning rate alpha.
        momentum_img: SGD momentum of the images (0.5).
        momentum_lr: SGD momentum of alpha (0.5).
        batch_syn: synthetic images per student step (0 = all).
        init: ``real`` (random real images per class) or ``noise``.
        dsa: non-siamese DSA on the student's inputs.
        dsa_strategy: DSA families (flip dropped for digit datasets).
        model: student / expert network.
        grad: ``unroll`` (reference), ``tesla`` (TESLA's published gradient, constant memory) or ``exact_sweep``
            (the exact unrolled gradient at constant activation memory; this package's).
        teacher_label: TESLA's soft labels from the expert at the target snapshot, recomputed every iteration.
        zca: ZCA the data must carry (``kornia`` for the published ZCA rows; ``""`` = no requirement).
        buffer: expert buffer folder (``gendistill buffers``); ``""`` = train ``buffer_experts`` experts.
        buffer_experts: experts trained when ``buffer`` is empty.
        buffer_epochs: epochs per expert when ``buffer`` is empty.
        buffer_lr: expert SGD learning rate (0.01).
        buffer_batch: expert batch size (256).
        buffer_optimizer: expert optimiser (``sgd`` for MTT, ``gsam`` for DATM).
        buffer_images_per_class: experts train on a seeded subset of this many images per class (0 = all).
        buffer_seed: seed of the experts trained by the method.
        buffer_in_memory: read the whole buffer into memory (the reference's ``load_all``).
        device: where to run.
    """

    iterations: int = budget_field(5000, zero_is_full=True)
    syn_steps: int = budget_field(20)
    expert_epochs: int = 3
    max_start_epoch: int = 25
    min_start_epoch: int = 0
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_teacher: float = 0.01
    momentum_img: float = 0.5
    momentum_lr: float = 0.5
    batch_syn: int = budget_field(0, zero_is_full=True)
    init: Literal["real", "noise"] = "real"
    dsa: bool = True
    dsa_strategy: str = FULL_DSA
    model: str = "convnet"
    grad: Literal["unroll", "tesla", "exact_sweep"] = "unroll"
    teacher_label: bool = False
    zca: Literal["", "none", "kornia", "kip"] = ""
    buffer: str = ""
    buffer_experts: int = budget_field(100)
    buffer_epochs: int = budget_field(50)
    buffer_lr: float = 0.01
    buffer_batch: int = 256
    buffer_optimizer: Literal["sgd", "gsam"] = "sgd"
    buffer_images_per_class: int = budget_field(0, zero_is_full=True)
    buffer_seed: int = 0
    buffer_in_memory: bool = False
    device: str = "cpu"


# ------------------------------------------------------------------------------------- functional student
class FlatNetwork:
    """A network evaluated at a flat parameter vector (``named_parameters`` order) via ``functional_call``."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        params = list(net.named_parameters())
        self.names = [n for n, _ in params]
        self.shapes = [p.shape for _, p in params]
        self.numels = [p.numel() for _, p in params]

    @property
    def num_params(self) -> int:
        return sum(self.numels)

    def params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.numels), self.shapes, strict=True)}

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, self.params(flat), (x,))


@dataclasses.dataclass
class StepPlan:
    """One student step: the rows of the synthetic set it uses and their DSA draw (``None``: no DSA)."""

    indices: torch.Tensor
    draw: AugDraw | None


def plan_steps(num_images: int, steps: int, batch: int, image_size: int, dsa: DSA, generator: torch.Generator,
               device: torch.device | str | None = None) -> list[StepPlan]:
    """The reference's minibatching: chunks of ``batch`` of a fresh permutation, popped from the end.

    Everything is drawn on the CPU ``generator``; with ``device`` the indices and DSA draws are moved there here,
    once per plan, so the student steps index and augment without host-device copies.
    """
    plan, chunks = [], []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.split(torch.randperm(num_images, generator=generator), batch or num_images))
        idx = chunks.pop()
        plan.append(StepPlan(idx, dsa.draw(len(idx), image_size, generator) if dsa.enabled else None))
    if device is None or torch.device(device).type == "cpu":
        return plan
    return [StepPlan(step.indices.to(device, non_blocking=True),
                     None if step.draw is None else dataclasses.replace(
                         step.draw, values={k: v.to(device, non_blocking=True) for k, v in step.draw.values.items()}))
            for step in plan]


def _inputs(images: torch.Tensor, step: StepPlan, dsa: DSA) -> torch.Tensor:
    x = images[step.indices.to(images.device)]  # a no-op for a plan made on the images' device
    return dsa.apply(x, step.draw) if step.draw is not None else x


def matching_loss(theta: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||theta - target||^2 / ||start - target||^2`` (the reference's 1/#params factors cancel)."""
    return ((theta - target) ** 2).sum() / ((start - target) ** 2).sum()


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def unrolled_matching_loss(student: FlatNetwork, loss_fn: LossFn, images: torch.Tensor, targets: torch.Tensor,
                           lr: torch.Tensor, plan: list[StepPlan], dsa: DSA, start: torch.Tensor,
                           target: torch.Tensor) -> torch.Tensor:
    """The matching loss after the unrolled student steps, differentiable w.r.t. images, targets and ``lr``
    (the whole unroll stays in memory, as in the reference)."""
    theta = start.detach().requires_grad_(True)
    for step in plan:
        out = student(theta, _inputs(images, step, dsa))
        g = torch.autograd.grad(loss_fn(out, targets[step.indices.to(targets.device)]), theta, create_graph=True)[0]
        theta = theta - lr * g
    return matching_loss(theta, start, target)


def tesla_matching_loss(student: FlatNetwork, loss_fn: LossFn, images: torch.Tensor, targets: torch.Tensor,
                        lr: torch.Tensor, plan: list[StepPlan], dsa: DSA, start: torch.Tensor, target: torch.Tensor,
                        exact: bool = True) -> torch.Tensor:
    """The matching loss (detached) with its gradient accumulated into ``.grad`` of ``images``, ``lr`` and
    ``targets`` (those that require grad), keeping one student step's graph at a time.

    Forward: the student parameters theta_0..theta_N (no graph). Backward sweep, n = N-1..0, with
    lambda = dL/dtheta_{n+1}: recompute g_n at theta_n with a graph, then dL/dalpha -= lambda . g_n,
    dL/dx_n -= alpha * d(lambda . g_n)/dx_n, and (``exact``) lambda <- lambda - alpha * d(lambda . g_n)/dtheta_n.
    ``exact=False`` keeps lambda = dL/dtheta_N (the TESLA reference code).
    """
    alpha = lr.detach()
    thetas = [start.detach()]
    for step in plan:
        theta = thetas[-1].requires_grad_(True)
        out = student(theta, _inputs(images.detach(), step, dsa))
        g = torch.autograd.grad(loss_fn(out, targets.detach()[step.indices.to(targets.device)]), theta)[0]
        thetas[-1] = theta.detach()
        thetas.append((theta - alpha * g).detach())
    denom = ((start - target) ** 2).sum()
    loss = ((thetas[-1] - target) ** 2).sum() / denom
    lam = 2 * (thetas[-1] - target) / denom
    learn_targets = targets.requires_grad
    img_grad = torch.zeros_like(images)
    tgt_grad = torch.zeros_like(targets) if learn_targets else None
    lr_grad = torch.zeros_like(alpha)
    for n in reversed(range(len(plan))):
        step = plan[n]
        idx = step.indices.to(images.device)
        theta = thetas[n].requires_grad_(True)
        rows = images.detach()[idx].requires_grad_(True)
        x = dsa.apply(rows, step.draw) if step.draw is not None else rows
        y = targets.detach()[idx].requires_grad_(learn_targets)
        g = torch.autograd.grad(loss_fn(student(theta, x), y), theta, create_graph=True)[0]
        lr_grad -= lam @ g.detach()
        wrt = [rows] + ([y] if learn_targets else []) + ([theta] if exact else [])
        grads = torch.autograd.grad(lam @ g, wrt)
        img_grad.index_add_(0, idx, grads[0] * -alpha)
        if learn_targets:
            tgt_grad.index_add_(0, idx, grads[1] * -alpha)
        if exact:
            lam = lam - alpha * grads[-1]
        thetas[n] = theta.detach()
    for leaf, grad in ((images, img_grad), (lr, lr_grad), (targets, tgt_grad)):
        if grad is not None and leaf.requires_grad:
            leaf.grad = grad if leaf.grad is None else leaf.grad + grad
    return loss


# ------------------------------------------------------------------------------------------- the method
# MTT's evaluation: ``dsa`` with the learning rate learned with the set.
register_protocol(EvalProtocol(name="mtt", epochs=1000, dsa_strategy=FULL_DSA, lr_from_synset=True))
# TESLA's evaluation of a teacher-labelled set (``evaluate_synset`` with its soft labels): ``mtt`` on soft labels.
register_protocol(EvalProtocol(name="tesla", epochs=1000, dsa_strategy=FULL_DSA, lr_from_synset=True,
                               label_loss="soft_ce"))


@register_method("mtt", config=MTTConfig, paper="Cazenavette, Wang, Torralba, Efros & Zhu, Dataset Distillation "
                 "by Matching Training Trajectories, CVPR 2022", year=2022, kind="pixel", label_kind="learned-lr",
                 default_eval="mtt")
class MatchingTrainingTrajectories(IterativeDistiller):
    """Synthetic images and a student lr matched to expert training trajectories (MTT; TESLA gradient option)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._run: Any = None
        self._progress = False
        self.buffer: ExpertBuffer | None = None
        self._perm_cache: dict[int, torch.Tensor] = {}
        self._flat: FlatNetwork | None = None

    def distill(self, train: RealDataset, ipc: int, *, seed: int = 0, run: Any = None,
                progress: bool | None = None) -> SyntheticSet:
        self._run, self._progress = run, self.show_progress(run, progress)
        return super().distill(train, ipc, seed=seed, run=run, progress=progress)

    # ----------------------------------------------------------------------------------------- experts
    def buffer_recipe(self) -> BufferRecipe:
        cfg = self.config
        return BufferRecipe(model=cfg.model, epochs=cfg.buffer_epochs, lr=cfg.buffer_lr, batch_size=cfg.buffer_batch,
                            dsa=cfg.dsa, dsa_strategy=cfg.dsa_strategy, optimizer=cfg.buffer_optimizer,
                            images_per_class=cfg.buffer_images_per_class)

    def effective_budget(self, train: RealDataset, ipc: int) -> dict[str, float]:
        """Expert budget as it runs: the given buffer's experts and epochs, else ``buffer_*``."""
        if not self.config.buffer:
            return {}
        buf = ExpertBuffer(self.config.buffer)
        return {"buffer_experts": buf.num_experts, "buffer_epochs": buf.epochs}

    def _check_config(self, epochs: int | None) -> None:
        """Refuse, in one line, settings the run cannot use; with the buffer's ``epochs``, also the start window."""
        cfg = self.config
        for key, low in (("expert_epochs", 1), ("syn_steps", 1), ("batch_syn", 0)):
            if getattr(cfg, key) < low:
                raise ConfigError(f"{key} must be at least {low}, not {getattr(cfg, key)}; set {key}=...")
        if epochs is None:
            return
        lo, hi = cfg.min_start_epoch, cfg.max_start_epoch
        if not 0 <= lo < hi or hi - 1 + cfg.expert_epochs > epochs:
            raise ConfigError(f"start epochs {lo}..{hi - 1} plus expert_epochs {cfg.expert_epochs} need "
                              f"0 <= min_start_epoch < max_start_epoch and max_start_epoch - 1 + expert_epochs <= "
                              f"the buffer's {epochs} epochs")

    def _open_buffer(self, train: RealDataset) -> ExpertBuffer:
        cfg = self.config
        self._check_config(None if cfg.buffer else cfg.buffer_epochs)  # before training any expert
        if cfg.buffer:
            buf = ExpertBuffer(cfg.buffer, in_memory=cfg.buffer_in_memory)
        elif self._run is not None:
            buf = train_buffers(train, self._run.path / "buffer", cfg.buffer_experts, recipe=self.buffer_recipe(),
                                seed=cfg.buffer_seed, device=self.device, test_accuracy=False, progress=self._progress)
        else:
            tmp = tempfile.mkdtemp(prefix="gendistill-buffer-")
            try:
                train_buffers(train, tmp, cfg.buffer_experts, recipe=self.buffer_recipe(), seed=cfg.buffer_seed,
                              device=self.device, test_accuracy=False, progress=self._progress)
                buf = ExpertBuffer(tmp, in_memory=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            buf.path = type(buf.path)("(temporary, removed)")
        buf.check_compatible(train, cfg.model)
        self._check_config(buf.epochs)
        return buf

    def expert_for(self, it: int, seed: int) -> int:
        """Iteration ``it``'s expert: a seeded permutation of all experts per pass."""
        n = self.buffer.num_experts
        k = it // n
        if k not in self._perm_cache:
            self._perm_cache = {k: torch.randperm(n, generator=make_generator(derive_seed(seed, "experts", k)))}
        return int(self._perm_cache[k][it % n])

    def start_window(self, it: int) -> tuple[int, int]:
        """Start epochs of iteration ``it`` are drawn from ``range(lo, hi)``."""
        return self.config.min_start_epoch, self.config.max_start_epoch

    # ------------------------------------------------------------------------------------------- state
    def _check_zca(self, train: RealDataset) -> None:
        want = self.config.zca
        have = train.preprocessing.zca.variant if train.preprocessing.zca is not None else "none"
        if want and want != have:
            raise ConfigError(f"this {self.name} setting is published with ZCA '{want}' but the data has '{have}'; "
                              f"load it with --zca {want} or pass --set zca={have}")

    def _reset(self) -> None:
        """Forget what a previous ``distill`` on this instance cached (expert order, student network, buffer)."""
        self.buffer, self._perm_cache, self._flat = None, {}, None

    def init_state(self, train: RealDataset, ipc: int, generator: torch.Generator, seed: int) -> dict[str, Any]:
        self._reset()
        self._check_zca(train)
        self.buffer = self._open_buffer(train)
        images = initial_images(train, ipc, self.config.init, generator)
        lr = torch.tensor(float(self.config.lr_teacher))
        return self._live({"images": images, "syn_lr": lr}, {})

    def _live(self, tensors: dict[str, torch.Tensor], opt_states: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        state: dict[str, Any] = {k: v.detach().clone().to(self.device).requires_grad_(True)
                                 for k, v in tensors.items()}
        state["opt_img"] = torch.optim.SGD([state["images"]], lr=cfg.lr_img, momentum=cfg.momentum_img)
        state["opt_lr"] = torch.optim.SGD([state["syn_lr"]], lr=cfg.lr_lr, momentum=cfg.momentum_lr)
        for key, saved in opt_states.items():
            state[key].load_state_dict(saved)
        return state

    def _optimizers(self, state: dict[str, Any]) -> list[str]:
        return [k for k in state if k.startswith("opt_")]

    def checkpoint_state(self, state: dict[str, Any]) -> dict[str, Any]:
        saved = {k: v.detach() for k, v in state.items() if isinstance(v, torch.Tensor)}
        saved.update({k: state[k].state_dict() for k in self._optimizers(state)})
        saved["buffer_identity"] = self.buffer.identity()
        return saved

    def _check_same_buffer(self, saved: dict[str, Any]) -> None:
        """Refuse to resume on a buffer other than the checkpoint's (other experts, epochs or contents)."""
        then, now = saved.get("buffer_identity"), self.buffer.identity()
        if then is None:  # a checkpoint written before the record existed
            return
        changed = [f"{k} {then.get(k)} -> {now[k]}" for k in now if then.get(k) != now[k]]
        if changed:
            raise CheckpointError(f"the expert buffer {self.buffer.path} changed since the checkpoint "
                                  f"({', '.join(changed)}); resume with the buffer the run started with, or start "
                                  "over in another --out")

    def restore_state(self, saved: dict[str, Any]) -> dict[str, Any]:
        self._check_same_buffer(saved)
        self._perm_cache, self._flat = {}, None  # the buffer stays: init_state opened it for this run
        tensors = {k: v for k, v in saved.items() if isinstance(v, torch.Tensor) and not k.startswith("opt_")}
        live_keys = ("images", "syn_lr", "labels")
        state = self._live({k: v for k, v in tensors.items() if k in live_keys},
                           {k: v for k, v in saved.items() if k.startswith("opt_")})
        state.update({k: v.to(self.device) for k, v in tensors.items() if k not in live_keys})
        return state

    # -------------------------------------------------------------------------------------------- step
    def student_targets(self, state: dict[str, Any], train: RealDataset) -> torch.Tensor:
        """What the student's loss compares with: MTT's fixed class-major hard labels."""
        ipc = state["images"].shape[0] // train.num_classes
        return torch.arange(train.num_classes, device=self.device).repeat_interleave(ipc)

    @staticmethod
    def student_loss(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, targets)

    def _student(self, train: RealDataset) -> FlatNetwork:
        if self._flat is None:
            c, h, _ = train.image_shape
            net = create_network(self.config.model, c, train.num_classes, h, seed=0).to(self.device)
            net.train()
            self._flat = FlatNetwork(net)
        return self._flat

    def matching_gradients(self, state: dict[str, Any], train: RealDataset, plan: list[StepPlan],
                           start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The matching loss, its gradients left in ``.grad`` of every learnable (all zeroed first)."""
        for key in self._optimizers(state):
            state[key].zero_grad(set_to_none=True)
        dsa = DSA.for_dataset(train.flip_ok, self.config.dsa_strategy) if self.config.dsa else DSA("none")
        targets = self.student_targets(state, train)
        if getattr(self.config, "teacher_label", False):
            with torch.no_grad():  # TESLA: the expert at the target snapshot labels the current images
                targets = F.softmax(self._student(train)(target, state["images"].detach()), dim=1)
            state["teacher_labels"] = targets
        args = (self._student(train), self.student_loss, state["images"], targets, state["syn_lr"], plan, dsa,
                start, target)
        if self.config.grad == "unroll":
            loss = unrolled_matching_loss(*args)
            loss.backward()
            return loss.detach()
        return tesla_matching_loss(*args, exact=self.config.grad == "exact_sweep")

    def apply_update(self, state: dict[str, Any], loss: torch.Tensor) -> None:
        """Step every learnable (DATM skips above its loss threshold)."""
        for key in self._optimizers(state):
            state[key].step()

    def step(self, it: int, state: dict[str, Any], train: RealDataset, generator: torch.Generator, seed: int
             ) -> dict[str, torch.Tensor]:
        cfg = self.config
        expert = self.expert_for(it, seed)
        lo, hi = self.start_window(it)
        start_epoch = int(torch.randint(lo, hi, (1,), generator=generator))
        start = self.buffer.snapshot(expert, start_epoch).to(self.device)
        target = self.buffer.snapshot(expert, start_epoch + cfg.expert_epochs).to(self.device)
        dsa = DSA.for_dataset(train.flip_ok, cfg.dsa_strategy) if cfg.dsa else DSA("none")
        plan = plan_steps(state["images"].shape[0], cfg.syn_steps, cfg.batch_syn, train.image_shape[-1], dsa,
                          generator, device=self.device)
        loss = self.matching_gradients(state, train, plan, start, target)
        self.apply_update(state, loss)
        return {"loss": loss, "syn_lr": state["syn_lr"].detach().clone(), "start_epoch": torch.tensor(start_epoch)}

    # ------------------------------------------------------------------------------------------- output
    def run_meta(self, state: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        return {"buffer": self.buffer.summary() if self.buffer is not None else None, "grad": cfg.grad,
                "student_lr": float(state["syn_lr"].detach())}

    def finalize(self, state: dict[str, Any], train: RealDataset, ipc: int, seed: int) -> SyntheticSet:
        labels = torch.arange(train.num_classes).repeat_interleave(ipc)
        meta = self.run_meta(state)
        if getattr(self.config, "teacher_label", False) and "teacher_labels" in state:
            labels = state["teacher_labels"].detach().float().cpu()  # the last iteration's soft labels, as TESLA saves
            meta.update(default_protocol="tesla", label_source="teacher (expert at the target snapshot)")
        return self.make_synset(train, state["images"], labels, ipc, seed, lr=float(state["syn_lr"].detach()),
                                meta=meta)
