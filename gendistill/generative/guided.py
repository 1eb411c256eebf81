"""Training-free guided sampling after Minimax: MGD3 and IGD, on any backbone the core loads.

* ``mgd3`` - Chan-Santiago et al., "MGD3: Mode-Guided Dataset Distillation using Diffusion Models", ICML 2025.
  Per class, k-means (k = IPC; scikit-learn, ``n_init="auto"``, seeded) on the model-space encodings of the class's
  real training images gives the modes; sample ``k`` of a class is assigned mode ``k`` (one to one). While the
  respaced step index is above ``mode_stop`` (25 of 50: the first 24 steps) the ancestral step's mean is pulled toward
  its mode: ``mean += mode_lambda * sigma_t * (mode - x0_hat)`` with ``x0_hat`` the guided prediction and
  ``sigma_t`` the step's (learned-range) standard deviation; ``mode_lambda`` 0.1 - as the authors' code
  (``sample_mode_guidance.py``; the paper's equation puts it on epsilon instead).
* ``igd`` - Chen et al., "Influence-Guided Diffusion for Dataset Distillation", ICLR 2025 (``mchen725/DD_IGD``).
  A surrogate network is trained on the real split and snapshotted at ``igd_checkpoints`` epochs; per class and
  snapshot, the mean cross-entropy gradient of ``igd_grad_ipc`` real images (the class's first ones) is the target
  ``g_k``. At respaced steps ``igd_low <= t <= igd_high`` (30-45 of 50), with ``x0_hat`` predicted from ``x_t`` with
  gradient and decoded to pixels: the influence loss ``L = mean_k (1 - cos(grad_theta_k CE(f_k(x0_hat), y), g_k))``
  and its gradient ``G`` with respect to ``x_t`` (second order), scaled by ``rho_t = 0.0015 * rms(eps_guided) /
  rms(G) * sqrt(1 - abar_t)``; the deviation term ``D = grad_{x_t} cos(x_t, m*)`` with ``m*`` the most similar of the
  class's earlier samples (a FIFO memory of 64 clean samples). After the ordinary stochastic step:
  ``x_{t-1} -= igd_dev_scale * D + rho_t * igd_gm_scale * G``. Defaults: the authors' plain-DiT script (k 5,
  gamma 120; their Minimax script: 10 and 100).

Labelled extension (off by default): ``igd_dev_centered`` centres the deviation cosine on the real images' mean
encoding (see :class:`IGDConfig`).

Labelled deviations: MGD3's real encodings are not randomly flipped; IGD's surrogate is the dataset protocol's
network (ConvNet-3 for 28-32 px; the authors use ConvNet-6 at 256 px) trained by this package's recipe (SGD 0.01,
momentum 0.9, batch 256, no augmentation) for ``igd_epochs``; IGD samples one image per class at a time (the
classes batched), so each sample sees every earlier sample of its class in its memory, as the authors' sequential
loop. Both record the backbone they sampled (``backbone`` in the set's metadata) and can start from a Minimax
fine-tuned model (``finetune: true`` runs Minimax fine-tuning first; or ``pretrained=<fine-tuned model>``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gendistill.data.datasets import RealDataset
from gendistill.distiller import budget_field
from gendistill.generative.backbone import Backbone, resize_pixels
from gendistill.generative.method import MinimaxConfig, MinimaxDistiller, resolve_class_ids
from gendistill.generative.sample import image_seeds, sample_images
from gendistill.registry import register_method
from gendistill.utils.errors import ConfigError
from gendistill.utils.seeding import derive_seed

__all__ = ["IGDConfig", "IGDDistiller", "MGD3Config", "MGD3Distiller", "class_modes", "real_gradients",
           "surrogate_snapshots"]


# ------------------------------------------------------------------------------------------------------ MGD3
@dataclasses.dataclass
class MGD3Config(MinimaxConfig):
    """MGD3: Minimax's settings (the backbone, the sampler) plus the mode guidance.

    Attributes:
        mode_lambda: strength of the pull toward the assigned mode (0.1).
        mode_stop: guidance runs while the respaced step index is above this (25 of 50).
        finetune: run Minimax fine-tuning first and guide the fine-tuned model (False: the backbone as loaded).
    """

    mode_lambda: float = 0.1
    mode_stop: int = 25
    finetune: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode_stop < 0:
            raise ConfigError("mode_stop must be >= 0 (a respaced step index)")


def _real_encodings(backbone: Backbone, train: RealDataset, rows: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Model-space encodings (pixels in [-1, 1], or VAE latent means times the scale) of training images."""
    out = []
    device = next(backbone.net.parameters()).device
    for start in range(0, len(rows), batch):
        pixels = train.pixels[rows[start:start + batch]].to(device).float() / 255.0
        out.append(backbone.encode(resize_pixels(pixels, backbone.image_size)).float().cpu())
    return torch.cat(out)


def class_modes(backbone: Backbone, train: RealDataset, ipc: int, seed: int) -> torch.Tensor:
    """``[C, ipc, *latent_shape]``: per class, the k-means (k = ``ipc``) centroids of its real encodings."""
    from sklearn.cluster import KMeans

    modes = []
    for c in range(train.num_classes):
        rows = (train.labels == c).nonzero().squeeze(1)
        if len(rows) < ipc:
            raise ConfigError(f"class {train.class_names[c]} has {len(rows)} images, fewer than IPC {ipc} modes")
        z = _real_encodings(backbone, train, rows).flatten(1).double().numpy()
        km = KMeans(n_clusters=ipc, random_state=derive_seed(seed, "mgd3", c) % 2**31, n_init="auto").fit(z)
        modes.append(torch.from_numpy(km.cluster_centers_).float().view(ipc, *backbone.latent_shape))
    return torch.stack(modes)


class ModeGuide:
    """The MGD3 step for one batch: ``modes`` holds the assigned mode of each image ``[N, *latent]``."""

    def __init__(self, modes: torch.Tensor, strength: float, stop: int) -> None:
        self.modes, self.strength, self.stop = modes, strength, stop

    def __call__(self, *, index: int, x_next: torch.Tensor, x0: torch.Tensor, log_var: torch.Tensor,
                 **_: Any) -> torch.Tensor:
        if index <= self.stop:
            return x_next
        return x_next + self.strength * torch.exp(0.5 * log_var) * (self.modes.to(x0) - x0)


class _GuidedDistiller(MinimaxDistiller):
    """A Minimax pipeline whose fine-tuning is optional (``finetune``) and whose sampling is guided."""

    @property
    def finetunes(self) -> bool:  # type: ignore[override]
        return bool(self.config.finetune)

    def _ordered(self, train: RealDataset, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dataset labels and per-image seeds, class-major (the same seeds as unguided sampling)."""
        classes = torch.arange(train.num_classes)
        return classes.repeat_interleave(ipc), image_seeds(seed, classes, ipc)


@register_method("mgd3", config=MGD3Config, paper="Chan-Santiago, Tirupattur, Nayak, Liu & Shah, MGD3: Mode-Guided "
                 "Dataset Distillation using Diffusion Models, ICML 2025", year=2025, kind="generative",
                 default_eval="dsa")
class MGD3Distiller(_GuidedDistiller):
    """MGD3: sampling pulled toward per-class k-means modes of the real data (training-free)."""

    def generate_images(self, backbone: Backbone, train: RealDataset, ipc: int, seed: int, progress: bool,
                        run_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg: MGD3Config = self.config
        if cfg.sampler != "ancestral":
            raise ConfigError("mgd3 guides the ancestral sampler; use sampler=ancestral")
        class_ids = resolve_class_ids(backbone, train, cfg.class_ids or backbone.info.get("class_ids"))
        modes = class_modes(backbone, train, ipc, seed).flatten(0, 1)  # [C * ipc, *latent], class-major
        labels, seeds = self._ordered(train, ipc, seed)
        backbone.to(cfg.device)
        pixels = sample_images(backbone, class_ids[labels], seeds, steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale,
                               guided_channels=cfg.cfg_channels, batch_size=cfg.sample_batch_size, progress=progress,
                               cfg_interval=(cfg.cfg_interval[0], cfg.cfg_interval[1]),
                               guide_factory=lambda _, rows: ModeGuide(modes[rows], cfg.mode_lambda, cfg.mode_stop))
        return pixels, labels, seeds


# ------------------------------------------------------------------------------------------------------- IGD
@dataclasses.dataclass
class IGDConfig(MinimaxConfig):
    """IGD: Minimax's settings (the backbone, the sampler) plus the influence and deviation guidance.

    Attributes:
        igd_gm_scale: strength k of the influence (gradient-matching) term (5; the authors' Minimax script: 10).
        igd_dev_scale: strength gamma of the deviation term (120; Minimax script: 100).
        igd_low / igd_high: respaced step indices where the guidance runs (30-45 of 50).
        igd_grad_ipc: real images per class for the target gradients (200).
        igd_memory: earlier samples per class the deviation term compares with (64).
        igd_model: the surrogate network ("" = the dataset protocol's ConvNet).
        igd_epochs: surrogate training epochs (the authors: 50).
        igd_checkpoints: surrogate epochs whose snapshots give the influence terms (ImageWoof: 0, 5, 16, 40).
        igd_dev_centered: extension (off in the faithful path): the deviation cosine between ``x_t - sqrt(abar_t) mu``
            and ``m - mu``, ``mu`` the mean model-space encoding of the target gradients' real images (all classes),
            so a background every image shares (the -1 border of pixel-space MNIST) stops dominating it - the
            centring of ``minimax_centered``.
        finetune: run Minimax fine-tuning first and guide the fine-tuned model (the authors' "IGD on Minimax").
    """

    igd_gm_scale: float = 5.0
    igd_dev_scale: float = 120.0
    igd_low: int = 30
    igd_high: int = 45
    igd_grad_ipc: int = 200
    igd_memory: int = 64
    igd_model: str = ""
    igd_epochs: int = budget_field(50)
    igd_checkpoints: list[int] = dataclasses.field(default_factory=lambda: [0, 5, 16, 40])
    igd_dev_centered: bool = False
    finetune: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.igd_low <= self.igd_high:
            raise ConfigError("igd_low and igd_high must satisfy 0 <= low <= high (respaced step indices)")
        if not self.igd_checkpoints or min(self.igd_checkpoints) < 0:
            raise ConfigError("igd_checkpoints must list surrogate epochs >= 0")


def _flat_params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _surrogate_cache_file(train: RealDataset, recipe: dict[str, Any], cache_dir: Path) -> Path:
    key = json.dumps({"dataset": train.name, "shape": list(train.image_shape), "classes": train.num_classes,
                      "n": len(train), "space": train.preprocessing.describe(), "recipe": recipe}, sort_keys=True,
                     default=str)
    return cache_dir / f"igd-surrogate-{train.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def surrogate_snapshots(train: RealDataset, cfg: IGDConfig, seed: int, progress: bool = False,
                        cache_dir: str | Path | None = None) -> tuple[torch.nn.Module, list[dict[str, torch.Tensor]]]:
    """The surrogate network and its parameters at ``igd_checkpoints`` epochs, trained once per (dataset, recipe,
    seed) and cached on disk beside the report's networks (``cache_dir``, default the data root's feature cache;
    none for an in-memory dataset)."""
    from safetensors.torch import load_file, save_file

    from gendistill.evaluation.features import default_cache_dir
    from gendistill.evaluation.protocols import EvalProtocol
    from gendistill.evaluation.trainer import train_network
    from gendistill.nn.nets import create_network
    from gendistill.utils.atomic import atomic_write
    from gendistill.utils.seeding import make_generator

    c, h, _ = train.image_shape
    model = cfg.igd_model or "convnet"
    net = create_network(model, c, train.num_classes, h, seed=derive_seed(seed, "igd-surrogate"))
    wanted = sorted(set(cfg.igd_checkpoints))
    if wanted and wanted[-1] > cfg.igd_epochs:
        raise ConfigError(f"igd_checkpoints {wanted} go beyond igd_epochs {cfg.igd_epochs}")
    recipe = {"model": model, "checkpoints": wanted, "lr": 0.01, "batch_size": 256, "seed": seed}
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(train)
    path = _surrogate_cache_file(train, recipe, cache) if cache is not None else None
    if path is not None and path.is_file():
        saved = load_file(str(path))
        net.load_state_dict({k[4:]: v for k, v in saved.items() if k.startswith("net/")})
        snaps = {e: {k.split("/", 1)[1]: v.to(cfg.device) for k, v in saved.items() if k.startswith(f"{e}/")}
                 for e in wanted}
        return net.to(cfg.device).eval(), [snaps[e] for e in wanted]
    snaps = {0: _flat_params(net)} if 0 in wanted else {}
    gen = make_generator(derive_seed(seed, "igd-surrogate-data"))
    one_epoch = EvalProtocol(name="igd-surrogate", epochs=0, schedule="constant", lr=0.01, batch_size=256,
                             extra_pass=True)  # epochs + 1 = one pass
    for epoch in range(1, (wanted[-1] if wanted else 0) + 1):
        train_network(net, train.images(), train.labels, one_epoch, gen, flip_ok=train.flip_ok, device=cfg.device,
                      progress=progress, desc=f"IGD surrogate epoch {epoch}/{wanted[-1]}")
        if epoch in wanted:
            snaps[epoch] = _flat_params(net)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {f"net/{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        state.update({f"{e}/{k}": v.detach().cpu().contiguous() for e in wanted for k, v in snaps[e].items()})
        atomic_write(path, lambda p: save_file(state, str(p), metadata={"recipe": json.dumps(recipe)}))
    return net.eval(), [snaps[e] for e in wanted]


class InfluenceGuide:
    """The IGD step for one batch of one image per class (see the module docstring)."""

    def __init__(self, backbone: Backbone, train: RealDataset, net: torch.nn.Module,
                 snapshots: list[dict[str, torch.Tensor]], targets: list[torch.Tensor], labels: torch.Tensor,
                 memory: list[torch.Tensor], model: Any, cfg: IGDConfig, center: torch.Tensor | None = None) -> None:
        self.backbone, self.train, self.net, self.snapshots, self.targets = backbone, train, net, snapshots, targets
        self.labels, self.memory, self.model, self.cfg, self.center = labels, memory, model, cfg, center

    def _influence(self, x: torch.Tensor, t: torch.Tensor, chain: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``G`` (gradient of the influence loss with respect to ``x_t``) and the guided epsilon. The per-sample
        surrogate gradients of a snapshot are taken for the whole batch at once (``torch.func.vmap`` of
        ``torch.func.grad``), with the graph kept back to ``x_t``."""
        from torch.func import functional_call, grad, vmap

        def sample_loss(params: dict[str, torch.Tensor], image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(self.net, params, (image.unsqueeze(0),)), label.unsqueeze(0))

        per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.model(x, chain.timestep_map.to(x.device)[t]).to(x.dtype)
            pred, _ = chain.split_output(out, x.shape[1])
            eps, x0 = chain.eps_and_x0(pred, x, t)
            pixels = self.backbone.decode(x0, differentiable=True)
            images = self.train.preprocessing.apply(resize_pixels(pixels, self.train.image_shape[-1], clamp=False))
            loss = x.new_zeros(())
            for params, target in zip(self.snapshots, self.targets, strict=True):
                grads = per_sample_grads({k: v.detach() for k, v in params.items()}, images, self.labels)
                g = torch.cat([gr.flatten(1) for gr in grads.values()], dim=1)  # [B, P]
                ref = target[self.labels]
                loss = loss + (1.0 - (g * ref).sum(1) / (g.norm(dim=1) * ref.norm(dim=1) + 1e-6)).sum()
            loss = loss / len(self.snapshots)
            influence = torch.autograd.grad(loss, x)[0]
        return influence.detach(), eps.detach()

    def _deviation(self, x: torch.Tensor, abar: torch.Tensor | None = None) -> torch.Tensor:
        """``grad_x cos(x, m*)`` per image, ``m*`` its most similar earlier sample of the class (0 if none); the
        batch's memories are padded to one ``[B, M, D]`` bank. With a ``center`` ``mu`` (``igd_dev_centered``):
        ``grad_x cos(x - sqrt(abar) mu, m* - mu)``, ``abar`` ``[B]`` the step's signal level."""
        banks = [self.memory[label] for label in self.labels.tolist()]
        size = max((len(b) for b in banks), default=0)
        if size == 0:
            return torch.zeros_like(x)
        v = x.flatten(1)
        if self.center is not None:
            mu = self.center.to(v).flatten()
            v = v - (mu if abar is None else abar.to(v).sqrt().view(-1, 1) * mu)
        bank = v.new_zeros(len(banks), size, v.shape[1])
        present = torch.zeros(len(banks), size, dtype=torch.bool, device=x.device)
        for i, entries in enumerate(banks):
            if entries:
                bank[i, :len(entries)] = torch.stack(entries).to(v).flatten(1)
                present[i, :len(entries)] = True
        if self.center is not None:
            bank = bank - mu
        v_norm = v.norm(dim=1, keepdim=True)
        cos = torch.einsum("bmd,bd->bm", bank, v) / (bank.norm(dim=2) * v_norm + 1e-12)
        c, best = cos.masked_fill(~present, -torch.inf).max(dim=1)
        m = bank[torch.arange(len(banks), device=x.device), best]
        out = m / (m.norm(dim=1, keepdim=True) * v_norm + 1e-12) - c.unsqueeze(1) * v / (v_norm ** 2 + 1e-12)
        return torch.where(present.any(dim=1, keepdim=True), out, 0.0).view_as(x)  # an empty memory: no term

    def __call__(self, *, index: int, x: torch.Tensor, x_next: torch.Tensor, chain: Any, **_: Any) -> torch.Tensor:
        cfg = self.cfg
        if not cfg.igd_low <= index <= cfg.igd_high:
            return x_next
        t = torch.full((x.shape[0],), index, dtype=torch.long, device=x.device)
        grad, eps = self._influence(x, t, chain)
        rms = lambda v: v.flatten(1).pow(2).mean(1).sqrt()  # noqa: E731
        abar = chain.alphas_cumprod.to(x.device)[t].float()
        rho = 0.0015 * rms(eps) / rms(grad).clamp_min(1e-12) * (1.0 - abar).sqrt()
        shape = (-1, *([1] * (x.dim() - 1)))
        return x_next - cfg.igd_dev_scale * self._deviation(x, abar) - (rho * cfg.igd_gm_scale).view(shape) * grad


def _first_rows(train: RealDataset, label: int, count: int) -> torch.Tensor:
    """Indices of the first ``count`` training images of class ``label``."""
    return (train.labels == label).nonzero().squeeze(1)[:count]


def real_gradients(net: torch.nn.Module, snapshots: list[dict[str, torch.Tensor]], train: RealDataset, per_class: int,
                   chunk: int = 50) -> list[torch.Tensor]:
    """Per snapshot ``[C, P]``: each class's mean cross-entropy gradient on its first ``per_class`` real images (in
    chunks of ``chunk``, averaged, as the authors' ``get_grads``)."""
    from torch.func import functional_call

    out = []
    for params in snapshots:
        names = list(params)
        rows = []
        for c in range(train.num_classes):
            idx = _first_rows(train, c, per_class)
            total, parts = None, 0
            for start in range(0, len(idx), chunk):
                theta = [params[n].clone().requires_grad_(True) for n in names]
                part = idx[start:start + chunk]
                ce = F.cross_entropy(functional_call(net, dict(zip(names, theta, strict=True)),
                                                     (train.images(part),)), train.labels[part])
                g = torch.cat([gr.flatten() for gr in torch.autograd.grad(ce, theta)])
                total = g if total is None else total + g
                parts += 1
            rows.append(total / parts)
        out.append(torch.stack(rows).detach())
    return out


@register_method("igd", config=IGDConfig, paper="Chen, Du, Huang, Wang, Zhang & Wang, Influence-Guided Diffusion for "
                 "Dataset Distillation, ICLR 2025", year=2025, kind="generative", default_eval="dsa")
class IGDDistiller(_GuidedDistiller):
    """IGD: sampling guided by the influence of each sample on a surrogate's training, plus a deviation term."""

    def generate_images(self, backbone: Backbone, train: RealDataset, ipc: int, seed: int, progress: bool,
                        run_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from tqdm.auto import tqdm

        from gendistill.generative.sample import guided_model

        cfg: IGDConfig = self.config
        if cfg.sampler != "ancestral":
            raise ConfigError("igd guides the ancestral sampler; use sampler=ancestral")
        class_ids = resolve_class_ids(backbone, train, cfg.class_ids or backbone.info.get("class_ids"))
        # the surrogate is trained, like the model: the run's seed, so sampling seeds share it
        net, snapshots = surrogate_snapshots(train, cfg, seed if run_seed is None else run_seed, progress)
        targets = real_gradients(net, snapshots, train, cfg.igd_grad_ipc)
        center = None
        if cfg.igd_dev_centered:  # the mean encoding of the target gradients' real images
            rows = torch.cat([_first_rows(train, c, cfg.igd_grad_ipc) for c in range(train.num_classes)])
            center = _real_encodings(backbone, train, rows).mean(0).to(cfg.device)
        for p in net.parameters():
            p.requires_grad_(False)
        labels_all, seeds_all = self._ordered(train, ipc, seed)
        memory: list[list[torch.Tensor]] = [[] for _ in range(train.num_classes)]
        backbone.to(cfg.device)
        images = torch.empty(len(labels_all), backbone.image_channels, backbone.image_size, backbone.image_size)
        classes = torch.arange(train.num_classes)
        rounds = tqdm(range(ipc), desc="IGD sampling (one image per class a round)", unit="round",
                      disable=not progress)
        for k in rounds:  # one image per class at a time: each sees every earlier sample of its class
            rows = classes * ipc + k
            labels = labels_all[rows]
            model_labels = class_ids[labels].to(cfg.device)

            def factory(batch_labels: torch.Tensor, _rows: torch.Tensor, labels=labels, model_labels=model_labels):
                model = guided_model(backbone, model_labels, cfg.cfg_scale, cfg.cfg_channels,
                                     (cfg.cfg_interval[0], cfg.cfg_interval[1]))
                return InfluenceGuide(backbone, train, net, snapshots, targets, labels.to(cfg.device), memory, model,
                                      cfg, center)

            latents = sample_images(backbone, class_ids[labels], seeds_all[rows], steps=cfg.sample_steps,
                                    cfg_scale=cfg.cfg_scale, guided_channels=cfg.cfg_channels,
                                    batch_size=train.num_classes, progress=False, guide_factory=factory,
                                    cfg_interval=(cfg.cfg_interval[0], cfg.cfg_interval[1]))
            images[rows] = latents
            for c, img in zip(labels.tolist(), latents, strict=True):  # the clean samples, in the model's space
                memory[c].append(backbone.encode(img.unsqueeze(0).to(cfg.device)).squeeze(0).detach().cpu())
                del memory[c][:-cfg.igd_memory]
        return images, labels_all, seeds_all

