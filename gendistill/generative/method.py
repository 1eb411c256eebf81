"""The registered generative methods ``minimax`` and ``dit`` and the stages behind them.

``minimax`` (Gu et al., "Efficient Dataset Distillation via Minimax Diffusion", CVPR 2024): load a
class-conditional DiT (or pretrain one on the dataset when none is given), fine-tune it with the
representativeness and diversity criteria, and sample ``ipc`` images per class. ``dit`` is the same pipeline
without fine-tuning, the reference's strongest ablation. Run folder layout::

    pretrain/   checkpoints/, metrics.jsonl, model/   (only when no ``pretrained`` model is given)
    finetune/   checkpoints/, metrics.jsonl, model/   (minimax only)
    images/     full-resolution PNG ImageFolder of the synthetic set
    synset/     the SyntheticSet at the dataset's resolution, normalised like the dataset
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path
from typing import Any, ClassVar

import torch

from gendistill.data.datasets import RealDataset
from gendistill.data.preprocessing import Preprocessing
from gendistill.distiller import BaseConfig, Distiller, budget_field
from gendistill.generative.autoencoder import AutoencoderSpec, train_autoencoder
from gendistill.generative.backbone import (
    Backbone,
    DiffFitDiT,
    DiffFitUNet,
    build_dit,
    build_unet,
    load_backbone,
    load_vaes,
    parse_unet_arch,
    resize_pixels,
)
from gendistill.generative.diffusion import GaussianDiffusion
from gendistill.generative.sample import image_seeds, sample_images
from gendistill.generative.train import TrainSpec, train_backbone
from gendistill.registry import register_method
from gendistill.synset.format import SyntheticSet
from gendistill.utils.errors import ConfigError, GendistillError
from gendistill.utils.locks import folder_lock, shared_folder_lock

__all__ = ["DiTDistiller", "MinimaxConfig", "MinimaxDistiller", "pretrain", "resolve_class_ids"]

PAPER = "Gu et al., Efficient Dataset Distillation via Minimax Diffusion, CVPR 2024"


@dataclasses.dataclass
class MinimaxConfig(BaseConfig):
    """Settings of the generative pipeline (defaults: the reference's fine-tuning and sampling).

    Attributes:
        pretrained: local folder or hub id of a DiT pipeline (``facebook/DiT-XL-2-256`` layout), a shipped model
            (``gendistill/<name>``, see ``gendistill models``), ``auto`` (the shipped model of the dataset when there
            is one, else pretrain), or ``none`` / empty: pretrain one on the dataset first.
        resolution: image size to load the dataset at when ``--resolution`` is not given (0 = the dataset's
            default). The ImageNet-subset presets set 256 so that the real memories are not upsampled from 128.
        vae_encoder / vae_decoder: other VAEs (the reference: ``stabilityai/sd-vae-ft-ema`` to encode,
            ``stabilityai/sd-vae-ft-mse`` to decode); for pretraining in latent space, the VAE to use.
        tie_embeddings: share one conditioning embedder across the diffusers blocks.
        scaled_blocks: blocks with DiffFit scales (-1 = the first half).
        class_ids: model class index of each dataset class (empty = automatic: ImageNet wnids, or identity).
        arch: the backbone to pretrain: a DiT (``DiT-S/2`` ... ``DiT-XL/2`` or ``custom-D<d>-W<w>-H<h>/<p>``) or a
            class-conditional U-Net (``unet-C<c1>-<c2>-...[-A<attention levels>][-L<blocks per level>]``, e.g.
            ``unet-C32-64-64-A1``; diffusers ``UNet2DModel``, a second backbone with DiffFit-style scales).
        space: ``pixel``, ``latent`` or ``auto`` (pixel space up to 64 px) for pretraining. ``latent`` without
            ``vae_decoder`` first trains a small ``AutoencoderKL`` on the dataset (``vae_*`` settings).
        vae_channels / vae_latent_channels: that autoencoder's channels per level (levels - 1 halvings) and latent
            channels.
        vae_steps / vae_batch_size / vae_lr / vae_kl_weight: its training (L1 + L2 reconstruction, small KL).
        prediction: network target for pretraining: ``epsilon`` (as DiT) or ``v_prediction``, which learns the
            high-noise steps much sooner on a small budget (the chain, sampler and Minimax losses are unchanged;
            a loaded model keeps the target it was trained with).
        pretrain_*: pretraining steps, global batch, AdamW lr and EMA decay (DiT: lr 1e-4, EMA 0.9999).
        pretrain_min_snr_gamma: labelled option: min-SNR-gamma loss weighting (Hang et al., ICCV 2023; 0 = off, the
            reference's plain MSE).
        pretrain_ema_halflife_kimg / pretrain_ema_rampup: labelled option: EMA by half-life in thousands of images
            with ramp-up (EDM; 0 = the fixed ``pretrain_ema_decay``).
        pretrain_warmup_steps: linear learning-rate warm-up steps (0 = none).
        finetune_steps: fine-tuning iterations (the reference samples the 12,000-iteration checkpoint).
        batch_size: global fine-tuning batch (8).
        lr / weight_decay: AdamW (1e-3, 0).
        ema_decay: EMA of the fine-tuned weights (0.9999); sampling uses the EMA.
        trainable: ``difffit`` (biases, class table, DiffFit scales) or ``full``.
        lambda_pos / lambda_neg: representativeness / diversity weights (0.002 / 0.008).
        memory_size: entries per class in each FIFO memory (64).
        temperature: 0 = hard min/max (reference); > 0 = smooth logsumexp version.
        minimax_jacobian: ``native`` (the reference: the Minimax terms see ``x0_hat`` of the model's own
            parameterisation) or ``epsilon`` (extension for v-prediction models: the terms' gradient path is
            rescaled to the epsilon-parameterisation's Jacobian, 1/sqrt(abar) stronger; no effect on epsilon models).
        minimax_centered: extension: cosines of samples minus the mean real memory entry (mean-centred cosine).
        minimax_space: ``sample`` (the reference: cosines of the diffusion samples, pixels or latents) or
            ``feature`` (extension: cosines in the embedding of a frozen ConvNet trained on the real training split,
            with its own seed; the predictions are decoded to pixels with gradient first).
        label_dropout: probability of the null label in training (keeps guidance working).
        flip: random horizontal flips (skipped for digit datasets).
        max_grad_norm: fine-tuning gradient clipping (0 = off, as the reference).
        pretrain_max_grad_norm: pretraining gradient clipping (0 = off).
        mixed_precision: ``no``, ``bf16`` or ``fp16`` (accelerate).
        checkpoint_every / log_every: training checkpoint and log intervals (steps).
        tracker: ``tensorboard`` or ``wandb`` (empty = none).
        sample_steps: sampling steps (50, respaced, as the reference).
        sampler: ``ancestral`` (the reference's DDPM sampler on the respaced chain) or ``dpmsolver++`` (labelled
            option: diffusers' ``DPMSolverMultistepScheduler``, 2nd order, deterministic given the start noise; fewer
            steps for the same quality).
        cfg_interval: guidance interval (Kynkaenniemi et al., NeurIPS 2024): guide only at chain timesteps ``t`` with
            ``lo <= t <= hi`` (of 0..999); ``[0, 1000]`` = every step (the reference).
        cfg_scale: classifier-free guidance (4.0 for DiT-XL/2; 1 = off).
        cfg_channels: epsilon channels guided (3 as DiT; 0 = all).
        sample_batch_size: images per sampling batch.
        generate_ipc: generate this many per class (when larger than ``ipc``) and keep the first ``ipc``.
        oversample: extension: generate ``ceil(oversample * ipc)`` per class and keep ``ipc`` by ``select``.
        select: ``first``, ``kcenter`` (in a real-data-trained ConvNet's feature space) or ``confidence``
            (that ConvNet's probability of the intended class).
        select_epochs: training epochs of that ConvNet.
        sample_seed: seed of the sampling noise (-1 = the run's seed); several sets from one trained model differ
            only in it (bench ``sample_seeds``).
        stage_cache: a folder where the trained stages live under a hash of the settings that made them
            (``pretrain-<hash>/``, ``finetune-<hash>/``), reused by every run with the same training settings ("" =
            inside the run folder). ``gendistill bench`` sets it to ``<out>/stages``.
    """

    pretrained: str = ""
    resolution: int = 0
    vae_encoder: str = ""
    vae_decoder: str = ""
    tie_embeddings: bool = True
    scaled_blocks: int = -1
    class_ids: list[int] = dataclasses.field(default_factory=list)
    arch: str = "DiT-S/2"
    space: str = "auto"
    prediction: str = "epsilon"
    vae_channels: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 64])
    vae_latent_channels: int = 4
    vae_steps: int = budget_field(3000)
    vae_batch_size: int = 64
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    pretrain_steps: int = budget_field(400000)
    pretrain_batch_size: int = 256
    pretrain_lr: float = 1e-4
    pretrain_ema_decay: float = 0.9999
    pretrain_max_grad_norm: float = 0.0
    pretrain_min_snr_gamma: float = 0.0
    pretrain_ema_halflife_kimg: float = 0.0
    pretrain_ema_rampup: float = 0.05
    pretrain_warmup_steps: int = 0
    finetune_steps: int = budget_field(12000)
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    trainable: str = "difffit"
    lambda_pos: float = 0.002
    lambda_neg: float = 0.008
    memory_size: int = 64
    temperature: float = 0.0
    minimax_jacobian: str = "native"
    minimax_centered: bool = False
    minimax_space: str = "sample"
    label_dropout: float = 0.1
    flip: bool = True
    max_grad_norm: float = 0.0
    mixed_precision: str = "no"
    checkpoint_every: int = 2000
    log_every: int = 50
    tracker: str = ""
    sample_steps: int = 50
    sampler: str = "ancestral"
    cfg_interval: list[float] = dataclasses.field(default_factory=lambda: [0.0, 1000.0])
    cfg_scale: float = 4.0
    cfg_channels: int = 3
    sample_batch_size: int = 64
    generate_ipc: int = 0
    oversample: float = 1.0
    select: str = "first"
    select_epochs: int = 2
    sample_seed: int = -1
    stage_cache: str = ""

    def __post_init__(self) -> None:
        checks = [
            (self.space in ("auto", "pixel", "latent"), "space must be auto, pixel or latent"),
            (self.prediction in ("epsilon", "v_prediction"), "prediction must be epsilon or v_prediction"),
            (self.trainable in ("difffit", "full"), "trainable must be difffit or full"),
            (self.minimax_jacobian in ("native", "epsilon"), "minimax_jacobian must be native or epsilon"),
            (self.minimax_space in ("sample", "feature"), "minimax_space must be sample or feature"),
            (self.mixed_precision in ("no", "bf16", "fp16"), "mixed_precision must be no, bf16 or fp16"),
            (self.select in ("first", "kcenter", "confidence"), "select must be first, kcenter or confidence"),
            (self.oversample >= 1.0, "oversample must be >= 1"),
            (self.memory_size >= 1, "memory_size must be >= 1"),
            (self.sample_steps >= 2, "sample_steps must be >= 2"),
            (self.sampler in ("ancestral", "dpmsolver++"), "sampler must be ancestral or dpmsolver++"),
            (len(self.cfg_interval) == 2 and self.cfg_interval[0] <= self.cfg_interval[1],
             "cfg_interval must be [lo, hi] with lo <= hi (chain timesteps 0..999)"),
            (len(self.vae_channels) >= 1 and self.vae_latent_channels >= 1, "vae_channels and vae_latent_channels "
             "must be non-empty / positive"),
            (self.batch_size >= 1 and self.pretrain_batch_size >= 1, "batch sizes must be >= 1"),
            (0.0 <= self.ema_decay < 1.0 and 0.0 <= self.pretrain_ema_decay < 1.0, "EMA decays must be in [0, 1)"),
            (self.tracker in ("", "tensorboard", "wandb"), "tracker must be empty, tensorboard or wandb"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def train_spec(self, stage: str) -> TrainSpec:
        """The :class:`TrainSpec` of ``pretrain`` or ``finetune``, derived field by field: each spec field takes the
        config's ``<stage>_<field>`` when it exists (``pretrain_lr``, ``finetune_steps``), else ``<field>``.
        Pretraining trains every weight without the Minimax terms or weight decay."""
        values = {}
        for f in dataclasses.fields(TrainSpec):
            for key in (f"{stage}_{f.name}", f.name):
                if hasattr(self, key):
                    values[f.name] = getattr(self, key)
                    break
        values["stage"] = stage
        if stage == "pretrain":
            values.update(trainable="full", lambda_pos=0.0, lambda_neg=0.0, weight_decay=0.0)
        return TrainSpec(**values)


# -------------------------------------------------------------------------------------------- class ids
_WNID = re.compile(r"n\d{8}")


def _dataset_wnids(train: RealDataset) -> list[str] | None:
    if train.name in ("imagenette", "imagewoof", "imageidc"):
        from gendistill.data.datasets import _subset_classes

        return _subset_classes(train.name)[0]
    if all(_WNID.fullmatch(n) for n in train.class_names):
        return list(train.class_names)
    return None


def resolve_class_ids(backbone: Backbone, train: RealDataset, explicit: list[int] | None = None) -> torch.Tensor:
    """The model class index of each dataset class.

    Explicit ids win; a model trained on this dataset (same class names) maps identically; a 1000-class model
    and a dataset of ImageNet classes map through the ImageNet wnid order; a model with exactly as many classes
    as the dataset maps identically.
    """
    n_model, n_data = backbone.net.num_classes, train.num_classes
    if explicit:
        if len(explicit) != n_data or not all(0 <= i < n_model for i in explicit):
            raise ConfigError(f"class_ids needs {n_data} indices in [0, {n_model}); got {explicit}")
        return torch.tensor(explicit)
    names = backbone.info.get("class_names")
    if names == list(train.class_names) or (names is None and n_model == n_data):
        return torch.arange(n_data)
    wnids = _dataset_wnids(train)
    if n_model == 1000 and wnids is not None:
        from timm.data import ImageNetInfo

        order = {w: i for i, w in enumerate(ImageNetInfo().label_names())}
        missing = [w for w in wnids if w not in order]
        if missing:
            raise ConfigError(f"classes {missing[:3]} are not ImageNet-1k classes; pass --set class_ids=[...]")
        return torch.tensor([order[w] for w in wnids])
    raise ConfigError(f"cannot map the {n_data} classes of {train.name} onto the model's {n_model} classes; "
                      "pass --set class_ids=[i0,i1,...] (one model class per dataset class)")


# ------------------------------------------------------------------------------------------------- stages
def new_backbone(train: RealDataset, config: MinimaxConfig, seed: int, vae: str | Path | None = None) -> Backbone:
    """A randomly initialised DiT or U-Net for ``train`` (pixel space up to 64 px unless ``space`` says otherwise);
    ``vae`` is the latent space's autoencoder when ``config.vae_decoder`` names none."""
    c, h, w = train.image_shape
    if h != w:
        raise ConfigError(f"{train.name} images are {h}x{w}; diffusion pretraining needs square images")
    space = config.space if config.space != "auto" else ("pixel" if h <= 64 else "latent")
    enc = dec = None
    if space == "latent":
        decoder = config.vae_decoder or (str(vae) if vae else "")
        if not decoder:
            raise ConfigError("latent-space pretraining needs a VAE: --set vae_decoder=stabilityai/sd-vae-ft-mse "
                              "(a local folder or hub id), or let pretraining train one on the dataset")
        enc, dec, factor, scale = load_vaes(decoder, encoder=config.vae_encoder or None)
        if h % factor:
            raise ConfigError(f"{h}px images do not divide by the VAE's downsampling factor {factor}")
        net_channels, net_size = dec.config.latent_channels, h // factor
    else:
        net_channels, net_size, scale = c, h, 1.0
    if parse_unet_arch(config.arch) is not None:
        net = DiffFitUNet(build_unet(config.arch, net_channels, net_size, train.num_classes, learn_sigma=True,
                                     seed=seed))
    else:
        transformer = build_dit(config.arch, net_channels, net_size, train.num_classes, learn_sigma=True, seed=seed)
        net = DiffFitDiT(transformer, None if config.scaled_blocks < 0 else config.scaled_blocks)
    return Backbone(net, GaussianDiffusion.linear(prediction=config.prediction), space, c, h, enc, dec, scale,
                    id2label=dict(enumerate(train.class_names)),
                    info={"dataset": train.name, "class_names": list(train.class_names), "arch": config.arch})


def autoencoder_spec(config: MinimaxConfig) -> AutoencoderSpec:
    """The dataset autoencoder's settings from the ``vae_*`` fields."""
    return AutoencoderSpec(tuple(config.vae_channels), config.vae_latent_channels, config.vae_steps,
                           config.vae_batch_size, config.vae_lr, config.vae_kl_weight)


def load_model(source: str | Path, config: MinimaxConfig) -> Backbone:
    """Load a DiT pipeline folder/hub id with the config's VAE and embedding options."""
    return load_backbone(source, vae_encoder=config.vae_encoder or None, vae_decoder=config.vae_decoder or None,
                         tie_embeddings=config.tie_embeddings,
                         scaled_blocks=None if config.scaled_blocks < 0 else config.scaled_blocks)


#: fields that change what a stage trains (besides its TrainSpec); the rest only change sampling or bookkeeping
_MODEL_FIELDS = ("pretrained", "resolution", "vae_encoder", "vae_decoder", "tie_embeddings", "scaled_blocks",
                 "class_ids", "arch", "space", "prediction", "vae_channels", "vae_latent_channels", "vae_steps",
                 "vae_batch_size", "vae_lr", "vae_kl_weight")
_NOT_TRAINING = {"device", "checkpoint_every", "log_every", "tracker", "checkpoints_total_limit"}


def stage_key(config: MinimaxConfig, stage: str, dataset: str, seed: int, source: str = "") -> str:
    """A short hash of everything that determines what ``stage`` trains: its :class:`TrainSpec` (minus bookkeeping),
    the model settings, the dataset, the seed and (fine-tuning) the model it starts from."""
    import hashlib
    import json

    spec = {k: v for k, v in dataclasses.asdict(config.train_spec(stage)).items() if k not in _NOT_TRAINING}
    model = {k: getattr(config, k) for k in _MODEL_FIELDS}
    blob = json.dumps({"stage": stage, "spec": spec, "model": model, "dataset": dataset, "seed": seed,
                       "source": source}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def stage_folder(config: MinimaxConfig, run_out: Path, stage: str, dataset: str, seed: int, source: str = "") -> Path:
    """Where ``stage`` trains: ``<run>/<stage>`` or, with ``stage_cache``, the shared ``<cache>/<stage>-<hash>``."""
    if not config.stage_cache:
        return run_out / stage
    return Path(config.stage_cache) / f"{stage}-{stage_key(config, stage, dataset, seed, source)}"


def pretrained_source(config: MinimaxConfig, dataset: str) -> str:
    """The model a run starts from: ``config.pretrained``, with ``auto`` resolved to the dataset's shipped model;
    "" when the run pretrains its own."""
    value = config.pretrained.strip()
    if value.lower() in ("", "none"):
        return ""
    if value.lower() != "auto":
        return value
    from gendistill.generative.hub import shipped_for_dataset

    return shipped_for_dataset(dataset) or ""


def _stage_lock(config: MinimaxConfig, out: Path, what: str):
    """One process trains a stage folder; a shared one (``stage_cache``) is waited for by the others."""
    return shared_folder_lock(out, what) if config.stage_cache else folder_lock(out, what=what)


def _stage_finished(out: Path, resume: bool) -> bool:
    """Whether ``out`` holds the finished model of a stage (reused only on resume, never silently)."""
    if not (out / "model" / "transformer").is_dir():
        return False
    if resume:
        return True
    raise GendistillError(f"{out} already holds a trained model; pass --resume to reuse it or choose another --out")


def pretrain(train: RealDataset, config: MinimaxConfig, out: str | Path, *, seed: int = 0, resume: bool = False,
             progress: bool = True, record: dict[str, Any] | None = None) -> Path:
    """Train a class-conditional DiT from scratch on ``train``; returns ``out/model`` (skips a finished stage).
    ``record`` (e.g. the preset and overrides) is stored in the model's ``gendistill.json``."""
    out = Path(out)
    with _stage_lock(config, out, "pretraining stage"):  # a shared stage is waited for, then reused
        return _pretrain_locked(train, config, out, seed=seed, resume=resume, progress=progress, record=record)


def _pretrain_locked(train: RealDataset, config: MinimaxConfig, out: Path, *, seed: int, resume: bool,
                     progress: bool, record: dict[str, Any] | None) -> Path:
    if _stage_finished(out, resume or bool(config.stage_cache)):
        return out / "model"
    vae = None
    if config.space == "latent" and not config.vae_decoder:
        vae = train_autoencoder(train, autoencoder_spec(config), out / "autoencoder", seed=seed, resume=resume,
                                progress=progress, device=config.device)
    backbone = new_backbone(train, config, seed, vae)
    backbone.info.update(record or {})
    return train_backbone(backbone, train, torch.arange(train.num_classes), config.train_spec("pretrain"), out,
                          seed=seed, resume=resume, progress=progress)


def finetune(backbone: Backbone, train: RealDataset, config: MinimaxConfig, out: str | Path, *, seed: int = 0,
             resume: bool = False, progress: bool = True, record: dict[str, Any] | None = None) -> Path:
    """Minimax fine-tuning of ``backbone`` on ``train``; returns ``out/model`` (skips a finished stage)."""
    out = Path(out)
    with _stage_lock(config, out, "fine-tuning stage"):
        if _stage_finished(out, resume or bool(config.stage_cache)):
            return out / "model"
        return _finetune_locked(backbone, train, config, out, seed=seed, resume=resume, progress=progress,
                                record=record)


def _finetune_locked(backbone: Backbone, train: RealDataset, config: MinimaxConfig, out: Path, *, seed: int,
                     resume: bool, progress: bool, record: dict[str, Any] | None) -> Path:
    class_ids = resolve_class_ids(backbone, train, config.class_ids)
    backbone.info.update({"dataset": train.name, "class_names": list(train.class_names),
                          "class_ids": class_ids.tolist(), **(record or {})})
    return train_backbone(backbone, train, class_ids, config.train_spec("finetune"), out, seed=seed, resume=resume,
                          progress=progress)


def _select(pixels: torch.Tensor, labels: torch.Tensor, train: RealDataset, ipc: int, config: MinimaxConfig,
            seed: int) -> torch.Tensor:
    """Indices of ``ipc`` images per class chosen among the generated ones (class-major order kept)."""
    per_class = pixels.shape[0] // train.num_classes
    if config.select == "first" or per_class == ipc:
        return torch.cat([torch.arange(c * per_class, c * per_class + ipc) for c in range(train.num_classes)])
    from gendistill.evaluation.features import FeatureSpec, embed, feature_network
    from gendistill.methods.coreset import kcenter_greedy

    net = feature_network(train, FeatureSpec(epochs=config.select_epochs, device=config.device), seed)
    x = train.preprocessing.apply(resize_pixels(pixels, train.image_shape[-1]))
    feats, logits = embed(net, x, device=config.device, batch_size=500, logits=True)
    chosen = []
    for c in range(train.num_classes):
        rows = torch.arange(c * per_class, (c + 1) * per_class)
        if config.select == "kcenter":
            local = kcenter_greedy(feats[rows], ipc)
        else:
            local = logits[rows].softmax(1)[:, c].topk(ipc).indices
        chosen.append(rows[local.sort().values])
    return torch.cat(chosen)


def generate(backbone: Backbone, train: RealDataset, ipc: int, config: MinimaxConfig, *, seed: int = 0,
             progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ipc`` images per class: full-resolution pixels in [0, 1], dataset labels and per-image seeds."""
    class_ids = resolve_class_ids(backbone, train, config.class_ids or backbone.info.get("class_ids"))
    per_class = max(ipc, config.generate_ipc, math.ceil(config.oversample * ipc))
    classes = torch.arange(train.num_classes)
    seeds = image_seeds(seed, classes, per_class)
    labels = classes.repeat_interleave(per_class)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
    backbone.to(config.device)
    pixels = sample_images(backbone, class_ids[labels], seeds, steps=config.sample_steps, cfg_scale=config.cfg_scale,
                           guided_channels=config.cfg_channels, batch_size=config.sample_batch_size,
                           autocast_dtype=dtype, progress=progress, sampler=config.sampler,
                           cfg_interval=(config.cfg_interval[0], config.cfg_interval[1]))
    keep = _select(pixels, labels, train, ipc, config, seed) if per_class > ipc else torch.arange(len(labels))
    return pixels[keep], labels[keep], seeds[keep]


def to_synset(distiller: Distiller, train: RealDataset, pixels: torch.Tensor, labels: torch.Tensor,
              seeds: torch.Tensor, ipc: int, seed: int, out: Path | None) -> SyntheticSet:
    """The SyntheticSet (dataset resolution, dataset normalisation) plus the full-resolution PNG folder."""
    if out is not None:
        full = SyntheticSet(pixels, labels, train.class_names,
                            Preprocessing((0.0,) * pixels.shape[1], (1.0,) * pixels.shape[1]),
                            meta={"method": distiller.name, "dataset": train.name, "ipc": ipc, "seed": seed})
        full.to_imagefolder(out / "images")
    images = train.preprocessing.apply(resize_pixels(pixels, train.image_shape[-1]))
    return distiller.make_synset(train, images, labels, ipc, seed,
                                 meta={"image_seeds": seeds.tolist(), "generated_resolution": pixels.shape[-1]})


class MinimaxDistiller(Distiller):
    """Minimax diffusion: (pretrain ->) fine-tune with representativeness/diversity -> sample."""

    finetunes: ClassVar[bool] = True

    def generate_images(self, backbone: Backbone, train: RealDataset, ipc: int, seed: int, progress: bool,
                        run_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The set's images from the (fine-tuned) backbone: :func:`generate`; guided methods override it.

        ``seed`` seeds the sampling (``sample_seed``); ``run_seed`` is the run's seed, which trained the model and
        seeds whatever else a method trains before sampling (IGD's surrogate), so that sets drawn at several
        sampling seeds share every trained component (default: ``seed``)."""
        return generate(backbone, train, ipc, self.config, seed=seed, progress=progress)

    def distill(self, train: RealDataset, ipc: int, *, seed: int = 0, run: Any = None,
                progress: bool | None = None) -> SyntheticSet:
        show = self.show_progress(run, progress)
        if run is None:  # no run folder: stage outputs go to a temporary folder that is removed afterwards
            import tempfile

            with tempfile.TemporaryDirectory(prefix="gendistill-") as tmp:
                return self._run_stages(train, ipc, seed, Path(tmp), resume=False, progress=show, keep=False)
        return self._run_stages(train, ipc, seed, Path(run.path), resume=run.resume, progress=show)

    def _run_stages(self, train: RealDataset, ipc: int, seed: int, out: Path, *, resume: bool, progress: bool,
                    keep: bool = True) -> SyntheticSet:
        """(pretrain ->) (fine-tune ->) sample, each stage in ``out/<stage>`` and skipped when finished."""
        config: MinimaxConfig = self.config
        times: dict[str, float] = {}
        shared = bool(config.stage_cache)
        clock = time.perf_counter()
        source = pretrained_source(config, train.name) or pretrain(
            train, config, stage_folder(config, out, "pretrain", train.name, seed), seed=seed,
            resume=resume or shared, progress=progress)
        times["pretrain_s"] = time.perf_counter() - clock
        backbone = load_model(source, config)
        if self.finetunes and config.finetune_steps > 0:
            clock = time.perf_counter()
            folder = stage_folder(config, out, "finetune", train.name, seed, str(source))
            source = finetune(backbone, train, config, folder, seed=seed, resume=resume or shared, progress=progress)
            backbone = load_model(source, config)
            times["finetune_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        sample_seed = config.sample_seed if config.sample_seed >= 0 else seed
        pixels, labels, seeds = self.generate_images(backbone, train, ipc, sample_seed, progress, run_seed=seed)
        times["sample_s"] = time.perf_counter() - clock
        synset = to_synset(self, train, pixels, labels, seeds, ipc, seed, out if keep else None)
        synset.meta.update(stage_times=times, sample_seed=sample_seed,
                           backbone=str(source) if keep or pretrained_source(config, train.name) or shared
                           else "temporary")
        return synset


register_method("minimax", config=MinimaxConfig, paper=PAPER, year=2024, kind="generative", default_eval="dsa",
                description="Minimax diffusion: DiT fine-tuned for representativeness and diversity, then sampled"
                )(MinimaxDistiller)


@register_method("dit", config=MinimaxConfig, paper="Peebles & Xie, Scalable Diffusion Models with Transformers, "
                 "ICCV 2023 (the no-fine-tuning ablation of " + PAPER + ")", year=2023, kind="generative",
                 default_eval="dsa")
class DiTDistiller(MinimaxDistiller):
    """DiT sampling without fine-tuning (Minimax's strongest ablation)."""

    finetunes = False
