"""One accelerate training loop for both stages: pretraining a DiT from scratch and Minimax fine-tuning.

Every random draw of step ``s`` (batch indices, timesteps, noise, label dropout, flips, VAE sampling) comes from
a generator seeded with ``(seed, stage, s)`` for the *global* batch; each process takes its slice. A run therefore
depends on the global batch only, not on the number of processes, and resumes exactly from a checkpoint that
stores the weights, optimiser, EMA and memories (``accelerator.save_state``). The Minimax memories see the
global batch (gathered across processes); the local predictions keep their gradient inside the gathered batch,
and the memory losses are scaled by the world size to undo DDP's gradient averaging.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from gendistill.data.datasets import RealDataset
from gendistill.generative.backbone import Backbone, resize_pixels, save_backbone, trainable_parameter_names
from gendistill.generative.memory import MinimaxMemories
from gendistill.utils.errors import CheckpointError, ConfigError, NonFiniteLossError
from gendistill.utils.faults import fault_point
from gendistill.utils.seeding import derive_seed, make_generator

__all__ = ["EMA", "TrainSpec", "latest_checkpoint", "train_backbone"]


@dataclasses.dataclass
class TrainSpec:
    """Settings of one training stage (filled from the method config)."""

    stage: str  # "pretrain" or "finetune"
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    trainable: str = "difffit"
    lambda_pos: float = 0.0
    lambda_neg: float = 0.0
    memory_size: int = 64
    temperature: float = 0.0
    minimax_jacobian: str = "native"
    minimax_centered: bool = False
    minimax_space: str = "sample"
    label_dropout: float = 0.1
    flip: bool = True
    max_grad_norm: float = 0.0
    mixed_precision: str = "no"
    device: str = "cpu"
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 2
    log_every: int = 50
    tracker: str = ""
    min_snr_gamma: float = 0.0
    ema_halflife_kimg: float = 0.0
    ema_rampup: float = 0.05
    warmup_steps: int = 0

    @property
    def minimax(self) -> bool:
        return self.lambda_pos > 0 or self.lambda_neg > 0


def recipe_record(spec: TrainSpec, backbone: Backbone) -> dict[str, Any]:
    """The settings of a training stage a model card shows (see :func:`gendistill.generative.hub.write_model_card`)."""
    ema = (f"half-life {spec.ema_halflife_kimg:g} kimg, ramp-up {spec.ema_rampup:g}" if spec.ema_halflife_kimg > 0
           else f"decay {spec.ema_decay:g}")
    return {"arch": backbone.info.get("arch"), "space": backbone.space, "prediction": backbone.diffusion.prediction,
            "steps": spec.steps, "global_batch": spec.batch_size, "lr": spec.lr, "warmup_steps": spec.warmup_steps,
            "min_snr_gamma": spec.min_snr_gamma or None, "ema": ema, "max_grad_norm": spec.max_grad_norm,
            "label_dropout": spec.label_dropout}


class EMA:
    """Exponential moving average of named parameters (``shadow = decay * shadow + (1 - decay) * param``).

    A fixed ``decay`` (the reference's 0.9999), or, with ``halflife_kimg`` > 0, EDM's half-life in images seen
    (Karras et al., NeurIPS 2022): after ``nimg`` images the decay per step of ``batch`` images is
    ``0.5 ** (batch / h)`` with ``h = min(halflife_kimg * 1000, rampup * nimg)``, so early weights are forgotten
    quickly and a short run is not dominated by its initialisation (a fixed 0.9999 is wrong for 12k steps).
    """

    def __init__(self, named: dict[str, torch.nn.Parameter], decay: float, halflife_kimg: float = 0.0,
                 rampup: float = 0.05, batch: int = 1) -> None:
        self.decay = decay
        self.halflife_kimg, self.rampup, self.batch = halflife_kimg, rampup, batch
        self.params = named
        self.shadow = {k: p.detach().clone() for k, p in named.items()}

    def decay_at(self, step: int) -> float:
        """The decay applied after step ``step`` (0-based)."""
        if self.halflife_kimg <= 0:
            return self.decay
        half = self.halflife_kimg * 1000.0
        if self.rampup > 0:
            half = min(half, (step + 1) * self.batch * self.rampup)
        return 0.5 ** (self.batch / max(half, 1e-8))

    @torch.no_grad()
    def update(self, step: int = 0) -> None:
        keys = list(self.params)
        torch._foreach_lerp_([self.shadow[k] for k in keys], [self.params[k].detach() for k in keys],
                             1.0 - self.decay_at(step))

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for k, p in self.params.items():
            p.copy_(self.shadow[k])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise CheckpointError("the checkpoint's EMA covers other parameters (different trainable setting)")
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


class _LoopState:
    """Step counter, elapsed time, EMA and memories, checkpointed with the accelerate state."""

    def __init__(self, ema: EMA, memories: MinimaxMemories | None) -> None:
        self.step = 0
        self.elapsed = 0.0
        self.ema = ema
        self.memories = memories

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "elapsed": self.elapsed, "ema": self.ema.state_dict(),
                "memories": self.memories.state_dict() if self.memories is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self.ema.load_state_dict(state["ema"])
        if self.memories is not None:
            if state["memories"] is None:
                raise CheckpointError("the checkpoint has no Minimax memories (it is from another stage)")
            self.memories.load_state_dict(state["memories"])


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest ``step_*`` checkpoint folder under ``folder/checkpoints``."""
    root = folder / "checkpoints"
    found = sorted(root.glob("step_*")) if root.is_dir() else []
    return found[-1] if found else None


def _batch_indices(n: int, batch: int, step: int, seed: int, stage: str, cache: dict[int, torch.Tensor]
                   ) -> torch.Tensor:
    """Indices of the global batch of ``step``: consecutive slices of a per-epoch permutation (drop last)."""
    per_epoch = max(1, n // batch)
    epoch, k = divmod(step, per_epoch)
    if epoch not in cache:
        cache.clear()
        cache[epoch] = torch.randperm(n, generator=make_generator(derive_seed(seed, stage, "epoch", epoch)))
    perm = cache[epoch]
    if batch > n:
        return perm[torch.arange(batch) % n]
    return perm[k * batch:(k + 1) * batch]


def _prepare_pixels(train: RealDataset, backbone: Backbone) -> None:
    if train.image_shape[0] != backbone.image_channels:
        raise ConfigError(f"the model generates {backbone.image_channels}-channel images but {train.name} has "
                          f"{train.image_shape[0]}; use a model made for this dataset")


def _gather_keep_grad(accelerator: Any, local: torch.Tensor) -> torch.Tensor:
    """All processes' rows in rank order, with this process's rows still attached to the graph."""
    if accelerator.num_processes == 1:
        return local
    everything = accelerator.gather(local.detach().contiguous())
    n = local.shape[0]
    r = accelerator.process_index
    return torch.cat([everything[: r * n], local, everything[(r + 1) * n:]])


def train_backbone(backbone: Backbone, train: RealDataset, class_ids: torch.Tensor, spec: TrainSpec, out: Path, *,
                   seed: int = 0, resume: bool = False, progress: bool = True) -> Path:
    """Train ``backbone.net`` on ``train`` and write the EMA model to ``out/model`` (DiT pipeline layout).

    Args:
        backbone: the model (its VAE, if any, stays frozen).
        train: real training split (uint8 pixels; labels ``0..C-1``).
        class_ids: model class index of each dataset class ``[C]``.
        spec: stage settings.
        out: stage folder (``checkpoints/``, ``metrics.jsonl``, ``model/``).
        resume: continue from the newest checkpoint in ``out/checkpoints``.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from tqdm.auto import tqdm

    _prepare_pixels(train, backbone)
    if spec.stage == "finetune" and train.image_shape[-1] < backbone.image_size:
        logging.getLogger(__name__).warning(
            "%s is loaded at %d px but the model works at %d px: the real images (and memories) are upsampled; "
            "load the dataset at --resolution %d to fine-tune on full-resolution images",
            train.name, train.image_shape[-1], backbone.image_size, backbone.image_size)
    if spec.device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec.device!r} requested but no GPU is visible; use --set device=cpu")
    out.mkdir(parents=True, exist_ok=True)
    from accelerate.state import AcceleratorState

    # One process may run several stages (pretrain, then fine-tune) with different precision settings; the
    # process group (PartialState) is kept, only the per-run accelerator state is rebuilt.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(cpu=spec.device == "cpu", mixed_precision=spec.mixed_precision,
                              log_with=spec.tracker or None,
                              project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    world, rank = accelerator.num_processes, accelerator.process_index
    if spec.batch_size % world:
        raise ConfigError(f"batch_size {spec.batch_size} is not divisible by the {world} processes")
    local = spec.batch_size // world
    device = accelerator.device
    backbone.to(device)
    net = backbone.net
    names = set(trainable_parameter_names(net, spec.trainable))
    named = dict(net.named_parameters())
    for name, p in named.items():
        p.requires_grad_(name in names)
    trainable = {k: named[k] for k in named if k in names}
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=spec.lr, weight_decay=spec.weight_decay)
    ema = EMA(trainable, spec.ema_decay, spec.ema_halflife_kimg, spec.ema_rampup, spec.batch_size)
    to_minimax_space = _minimax_space(backbone, train, spec, seed, device) if spec.minimax else None
    memories = (MinimaxMemories(train.num_classes, spec.memory_size, to_minimax_space.dim, device)
                if to_minimax_space is not None else None)
    state = _LoopState(ema, memories)
    model, optimizer = accelerator.prepare(net, optimizer)
    accelerator.register_for_checkpointing(state)
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is not None:
            try:
                accelerator.load_state(str(ckpt))
            except CheckpointError:
                raise
            except Exception as exc:
                raise CheckpointError(f"{ckpt} cannot be loaded ({type(exc).__name__}: {str(exc)[:120]}); delete "
                                      "it to resume from an older checkpoint or start over without --resume") from exc
    if spec.tracker and accelerator.is_main_process:
        accelerator.init_trackers(f"gendistill-{spec.stage}", config=dataclasses.asdict(spec))

    diffusion = backbone.diffusion
    class_ids = class_ids.to(device)
    null = backbone.null_label
    shape = backbone.latent_shape
    perm_cache: dict[int, torch.Tensor] = {}
    mine = slice(rank * local, (rank + 1) * local)
    bar = tqdm(total=spec.steps, initial=state.step, desc=spec.stage, unit="it",
               disable=not (progress and accelerator.is_main_process), leave=False)
    t0 = time.perf_counter() - state.elapsed
    model.train()
    metrics_path = out / "metrics.jsonl"
    while state.step < spec.steps:
        step = state.step
        g = make_generator(derive_seed(seed, spec.stage, step))
        idx = _batch_indices(len(train), spec.batch_size, step, seed, spec.stage, perm_cache)
        labels = train.labels[idx]
        t = torch.randint(diffusion.num_timesteps, (spec.batch_size,), generator=g)
        noise = torch.randn((spec.batch_size, *shape), generator=g)
        drop = torch.rand(spec.batch_size, generator=g) < spec.label_dropout
        flip = (torch.rand(spec.batch_size, generator=g) < 0.5) & spec.flip & train.flip_ok
        vae_noise = torch.randn((spec.batch_size, *shape), generator=g) if backbone.space == "latent" else None

        pixels = train.pixels[idx[mine]].to(device).float() / 255.0
        pixels = torch.where(flip[mine].to(device).view(-1, 1, 1, 1), pixels.flip(-1), pixels)
        pixels = resize_pixels(pixels, backbone.image_size)
        x0 = backbone.encode(pixels, None if vae_noise is None else vae_noise[mine].to(device))
        y = torch.where(drop[mine].to(device), null, class_ids[labels[mine].to(device)])
        with accelerator.autocast():
            out_terms = diffusion.training_losses(lambda x, tt, y=y: model(x, tt, y), x0, t[mine].to(device),
                                                  noise[mine].to(device), min_snr_gamma=spec.min_snr_gamma)
        loss = out_terms["loss"].mean()
        logs = {"loss_diffusion": loss.detach(), "mse": out_terms["mse"].mean().detach()}
        terms = {"diffusion": loss}
        if memories is not None:
            x0_hat = out_terms["x0_hat"]
            if spec.minimax_jacobian == "epsilon":
                x0_hat = diffusion.epsilon_jacobian_x0(x0_hat, t[mine].to(device))
            pred = _gather_keep_grad(accelerator, to_minimax_space(x0_hat))
            with torch.no_grad():
                real = _gather_keep_grad(accelerator, to_minimax_space(x0, pixels))
            rep, div, active = memories.losses_then_update(pred, real, labels.to(device), spec.temperature,
                                                           spec.minimax_centered)
            terms.update(repr=world * spec.lambda_pos * rep, div=world * spec.lambda_neg * div)
            loss = loss + terms["repr"] + terms["div"]
            logs.update(loss_repr=rep.detach(), loss_div=div.detach(), active_classes=active)
        if world == 1 and ((step + 1) % spec.log_every == 0 or step + 1 == spec.steps):
            logs.update(_gradient_norms(terms, list(trainable.values())))
        accelerator.backward(loss)
        if spec.max_grad_norm > 0:
            accelerator.clip_grad_norm_(list(trainable.values()), spec.max_grad_norm)
        if spec.warmup_steps > 0:  # linear warm-up, a function of the step alone (nothing to checkpoint)
            for group in optimizer.param_groups:
                group["lr"] = spec.lr * min(1.0, (step + 1) / spec.warmup_steps)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(step)
        state.step = step + 1
        fault_point("train_step")
        bar.update(1)
        last = state.step == spec.steps
        if state.step % spec.log_every == 0 or last:
            values = {k: float(v) for k, v in logs.items()}
            if not all(v == v and abs(v) != float("inf") for v in values.values()):
                raise NonFiniteLossError(f"{spec.stage} step {state.step}: non-finite loss {values}; lower the "
                                         "learning rate (--set lr=...) or use mixed_precision=no")
            bar.set_postfix(loss=f"{values['loss_diffusion']:.4f}")
            if accelerator.is_main_process:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps({"stage": spec.stage, "step": state.step, **values,
                                         "time_s": time.perf_counter() - t0}) + "\n")
            if spec.tracker:
                accelerator.log(values, step=state.step)
        if spec.checkpoint_every > 0 and (state.step % spec.checkpoint_every == 0 or last):
            state.elapsed = time.perf_counter() - t0
            _save_checkpoint(accelerator, out, state.step, spec.checkpoints_total_limit)
    bar.close()
    accelerator.wait_for_everyone()
    target = out / "model"
    if accelerator.is_main_process:
        ema.copy_to_params()  # the saved model holds the EMA weights (the reference samples from the EMA)
        backbone.info.update({"stage": spec.stage, "steps": spec.steps, "train_time_s": time.perf_counter() - t0,
                              "seed": seed, "processes": world, "global_batch": spec.batch_size,
                              "recipe": recipe_record(spec, backbone)})
        save_backbone(backbone, target)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    for p in net.parameters():
        p.requires_grad_(False)
    return target


class _MinimaxSpace:
    """Where the Minimax cosines are taken: the diffusion samples themselves (the reference: pixels or latents,
    flattened) or, as an extension (``minimax_space=feature``), the embedding of a frozen ConvNet trained on the
    real training split. That network has its own seed, so it is not the set-quality report's network; the
    samples are decoded to pixels with gradient (no clamp), resized to the dataset's resolution and normalised as
    the dataset before it. The real batch is embedded from its own pixels (``pixels=``), not from a decode of its
    encoding: the same image in pixel space, and no extra VAE decode in latent space.
    """

    def __init__(self, backbone: Backbone, train: RealDataset, net: torch.nn.Module | None) -> None:
        self.backbone, self.train, self.net = backbone, train, net
        self.dim = int(torch.tensor(backbone.latent_shape).prod())
        if net is not None:
            with torch.no_grad():
                probe = torch.zeros((1, *train.image_shape), device=next(net.parameters()).device)
                self.dim = int(net.embed(probe).shape[-1])

    def __call__(self, x0: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """``x0`` (diffusion samples) in this space; ``pixels``, when given, are those samples' images in [0, 1]
        (the real batch) and are embedded instead of a decode of ``x0``."""
        if self.net is None:
            return x0.flatten(1).float()
        if pixels is None:
            pixels = self.backbone.decode(x0.float(), differentiable=True)
        pixels = resize_pixels(pixels.float(), self.train.image_shape[-1], clamp=False)
        return self.net.embed(self.train.preprocessing.apply(pixels)).float()


def _minimax_space(backbone: Backbone, train: RealDataset, spec: TrainSpec, seed: int,
                   device: torch.device) -> _MinimaxSpace:
    if spec.minimax_space == "sample":
        return _MinimaxSpace(backbone, train, None)
    if spec.minimax_space != "feature":
        raise ConfigError(f"minimax_space must be sample or feature, not {spec.minimax_space!r}")
    from gendistill.evaluation.features import FeatureSpec, cached_feature_network

    net, record = cached_feature_network(train, FeatureSpec(device=str(device)),
                                         derive_seed(seed, "minimax-feature-space"), role="minimax-space")
    for p in net.parameters():
        p.requires_grad_(False)
    backbone.info["minimax_feature_network"] = record
    return _MinimaxSpace(backbone, train, net)


def _gradient_norms(terms: dict[str, torch.Tensor], params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """L2 norm of each (weighted) loss term's gradient on the trainable parameters: ``grad_norm_<term>``, plus
    ``grad_ratio_minimax`` = |grad(repr + div)| / |grad(diffusion)| when the Minimax terms are on.

    Logged every log step (single process), so the balance between the terms shows in ``metrics.jsonl``.
    """
    norms, grads = {}, {}
    for name, term in terms.items():
        if not term.requires_grad:
            grads[name] = None
            norms[f"grad_norm_{name}"] = torch.zeros(())
            continue
        g = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        grads[name] = [x if x is not None else torch.zeros_like(p) for x, p in zip(g, params, strict=True)]
        norms[f"grad_norm_{name}"] = torch.sqrt(sum((x.float() ** 2).sum() for x in grads[name]))
    if "repr" in terms and grads["diffusion"] is not None:
        parts = [grads[k] for k in ("repr", "div") if grads[k] is not None]
        combined = [sum(xs) for xs in zip(*parts, strict=True)] if parts else []
        minimax = torch.sqrt(sum((x.float() ** 2).sum() for x in combined)) if combined else torch.zeros(())
        norms["grad_ratio_minimax"] = minimax / norms["grad_norm_diffusion"].clamp_min(1e-30)
    return {k: v.detach() for k, v in norms.items()}


class _DropSharedTensorNotice(logging.Filter):
    """accelerate warns "Removed shared tensor ..." on every save: the tied class embedders are shared on
    purpose (one class table for every block), so the notice says nothing the user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_DropSharedTensorNotice())


def _save_checkpoint(accelerator: Any, out: Path, step: int, keep: int) -> None:
    """``accelerator.save_state`` into a temp folder, renamed when complete; keep the newest ``keep``."""
    root = out / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(root.glob("step_*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
