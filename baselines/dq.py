"""DQ - Dataset Quantization (Zhou, Wang, Gu, Peng, Lian, Zhang, You, Feng; ICCV 2023; arXiv 2308.10524).

A selector of real images (reference code: magic-research/Dataset_Quantization, ``quantize_sample.py``,
``quantize_bin.py``, ``quantize_pixel.py``, ``dq/methods/submodular.py``):

1. **Bin generation.** The training set is split into ``num_bins`` non-overlapping bins. Every bin takes
   ``round(N / num_bins)`` images (N: the whole training set) from the pool that the earlier bins left; the last
   bin is the remainder. Per class (``balance``), bin ``k`` takes ``round(f_k * |pool_c|)`` images with
   ``f_k = round(N / num_bins) / |pool|``, chosen by naive greedy maximisation of the GraphCut function on the
   remaining pool of the class: the gain of a candidate ``x`` given the picks ``A`` is
   ``lam * sum_{i in pool} sim(i, x) - 2 * sum_{a in A} sim(a, x)`` (``lam`` = 1; the pool sum includes ``x``).
   ``sim`` is the shifted cosine ``0.5 + 0.5 cos`` of per-sample last-layer gradient features
   ``g = [r, e (x) r]`` (``r``: bias gradient, ``e``: embedding). ``<g_a, g_b> = <r_a, r_b> (1 + <e_a, e_b>)``,
   so the similarity of a class is two Gram matrices (built in row chunks), never the ``C * D`` features.
2. **Bin sampling.** The same fraction of every bin, uniformly, per class. To give exactly ``ipc`` images per
   class, bin ``k`` of class ``c`` gets ``floor(q)`` or ``ceil(q)`` images with ``q = ipc * |bin_{c,k}| / n_c``:
   the floors first, then the ``ipc - sum floor(q)`` missing ones by systematic sampling on the fractional
   parts (one uniform offset per class), so each bin receives ``q`` images in expectation and the total is
   exact. (The reference takes ``round(rho * |bin|)`` per bin, which does not sum to a fixed count.)
3. **Pixel quantization** (optional, ``mae_weights``): upsample to the MAE resolution, rank the patches of the
   MAE grid by GradCAM++ of a classifier, keep the top ``1 - mask_ratio`` (``int(L (1 - mask_ratio))``, as the
   reference), reconstruct the dropped patches with the MAE, paste them into the input, resize back, store as
   8-bit pixels (the reference writes PNGs).

Feature network: the reference uses torchvision's ImageNet ResNet-18 at 224 px with a random final layer (and a
random first conv for non-RGB inputs), untrained on the dataset (``-se 0 --pretrained``). Here that network is
used when its weights are on this machine (``pretrained_weights``: a file, or ``hub`` for torch's hub cache;
nothing is downloaded); otherwise the ConvNet of :mod:`gendistill.features` trained briefly on the dataset
stands in, and the set's metadata records that deviation. The bias gradient is, like the reference, the
gradient w.r.t. the logits of the cross-entropy applied to the *softmax outputs* (``gradient: reference``);
``gradient: cross_entropy`` uses the textbook ``softmax - onehot``.

GradCAM++ is written here with hooks (the reference uses torchcam's ``GradCAMpp`` on an ImageNet ResNet-18).
It follows the GradCAM++ formula (``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)``); torchcam's implementation
divides a boolean-indexed copy in place, so its ``alpha`` stays ``g^2`` - a quirk not reproduced.
Seeds are explicit (the reference seeds from the clock).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gendistill.data.datasets import RealDataset
from gendistill.distiller import Distiller
from gendistill.evaluation.features import embed, feature_network
from gendistill.methods.coreset import CoresetConfig
from gendistill.registry import register_method
from gendistill.synset.format import SyntheticSet
from gendistill.utils.errors import ConfigError, GendistillError
from gendistill.utils.seeding import derive_seed, make_generator, seeded

__all__ = ["DQConfig", "DatasetQuantization", "apportion", "bin_sizes", "gradcam_pp", "gradient_similarity",
           "graphcut_greedy", "last_layer_residual", "pixel_quantize", "quantize_bins"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_RESNET18 = "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 file, the reference's weights


@dataclasses.dataclass
class DQConfig(CoresetConfig):
    """DQ settings (defaults: the reference's bin generation and sampling; pixel stage off).

    Attributes:
        features: ConvNet feature space when no pretrained weights are given: ``trained`` or ``random``.
        num_bins: number of bins (10 in the reference, each ``round(N / num_bins)`` images, the last the rest).
        lam: GraphCut's lambda (1 in the reference).
        gradient: bias gradient ``r``: ``reference`` (d CE(softmax(z), y) / dz, as the reference code) or
            ``cross_entropy`` (softmax(z) - onehot(y)).
        pretrained_weights: ImageNet ResNet-18 weights for the gradient features (and GradCAM++): a
            torchvision/timm ``resnet18`` state-dict file, ``hub`` (``resnet18-f37072fd.pth`` in torch's hub
            cache), or empty for the ConvNet fallback. Never downloaded.
        pretrained_image_size: input size of the pretrained ResNet-18 (224 in the reference).
        embed_batch_size: images per forward pass when embedding (speed only).
        sim_chunk: rows per block when building a class's similarity matrix (memory only).
        mae_weights: local folder of a ``transformers`` ``ViTMAEForPreTraining`` trained without
            ``norm_pix_loss`` (such as facebook/vit-mae-large); setting it turns the pixel stage on (empty = off).
        mask_ratio: fraction of MAE patches dropped and reconstructed (0.2 in the reference).
        cam_mask: drop the patches GradCAM++ ranks lowest (the reference's ``--cam_mask``); off: random patches.
        pixel_batch_size: images per MAE / GradCAM++ batch.
    """

    features: Literal["trained", "random"] = "trained"
    num_bins: int = 10
    lam: float = 1.0
    gradient: Literal["reference", "cross_entropy"] = "reference"
    pretrained_weights: str = ""
    pretrained_image_size: int = 224
    embed_batch_size: int = 128
    sim_chunk: int = 2048
    mae_weights: str = ""
    mask_ratio: float = 0.2
    cam_mask: bool = True
    pixel_batch_size: int = 32

    def __post_init__(self) -> None:
        if self.num_bins < 1:
            raise ConfigError(f"num_bins must be at least 1, got {self.num_bins}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if min(self.embed_batch_size, self.sim_chunk, self.pixel_batch_size, self.pretrained_image_size) < 1:
            raise ConfigError("embed_batch_size, sim_chunk, pixel_batch_size and pretrained_image_size must be >= 1")


# ------------------------------------------------------------------------------------------ gradient features
def last_layer_residual(logits: torch.Tensor, labels: torch.Tensor, form: str = "reference") -> torch.Tensor:
    """``[N, C]`` gradient of the per-sample loss w.r.t. the logits (= the last layer's bias gradient).

    ``reference``: loss = CE(softmax(z), y), i.e. ``J_softmax(z)^T (softmax(p) - y)`` with ``p = softmax(z)``
    (the reference's ``criterion(softmax(outputs), targets)``; its batch-mean factor cancels in the cosine).
    ``cross_entropy``: ``softmax(z) - onehot(y)``.
    """
    onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    p = torch.softmax(logits, dim=1)
    if form == "cross_entropy":
        return p - onehot
    if form != "reference":
        raise ConfigError(f"gradient must be reference or cross_entropy, got {form!r}")
    d = torch.softmax(p, dim=1) - onehot
    return p * (d - (p * d).sum(1, keepdim=True))


def gradient_similarity(r: torch.Tensor, e: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """``[n, n]`` shifted cosine ``0.5 + 0.5 cos(g_a, g_b)`` of the features ``g = [r, e (x) r]``.

    Uses ``<g_a, g_b> = <r_a, r_b> (1 + <e_a, e_b>)`` and the norms from its diagonal; built ``chunk`` rows at a
    time in the dtype of ``r``. A zero feature has cosine 0 with everything (the reference maps its NaN to 0).
    """
    e = e.to(r.dtype)
    norm = ((r * r).sum(1) * (1 + (e * e).sum(1))).sqrt().clamp_min(torch.finfo(r.dtype).tiny)
    n = r.shape[0]
    out = torch.empty(n, n, dtype=r.dtype, device=r.device)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        block = torch.addmm(torch.ones((), dtype=r.dtype, device=r.device), e[sl], e.T)  # 1 + <e_a, e_b>
        block.mul_(r[sl] @ r.T).div_(norm[sl, None]).div_(norm[None, :])
        out[sl] = block.mul_(0.5).add_(0.5)
    return out


# ---------------------------------------------------------------------------------------------- bins
def graphcut_greedy(sim: torch.Tensor, pool: torch.Tensor, budget: int, lam: float = 1.0) -> torch.Tensor:
    """Naive greedy GraphCut on the pool ``pool`` (bool mask over ``sim``'s rows): ``budget`` indices in pick order.

    Gain of ``x`` given picks ``A``: ``lam * sum_{i in pool} sim[i, x] - 2 * sum_{a in A} sim[a, x]``; the first
    maximum wins ties (numpy's ``argmax`` in the reference, which indexes the pool in the same order).
    """
    colsum = pool.to(sim.dtype) @ sim  # sum over the pool of each column
    accum = torch.zeros_like(colsum)
    avail = pool.clone()
    picks = torch.empty(budget, dtype=torch.long, device=sim.device)
    ninf = torch.tensor(float("-inf"), dtype=sim.dtype, device=sim.device)
    for t in range(budget):  # tensor indices only: no host sync per pick on a GPU
        gain = torch.where(avail, lam * colsum - 2.0 * accum, ninf)
        i = torch.argmax(gain).view(1)
        picks[t : t + 1] = i
        avail.index_fill_(0, i, False)
        accum += sim.index_select(0, i)[0]
    return picks


def bin_sizes(class_counts: torch.Tensor, num_bins: int) -> torch.Tensor:
    """``[num_bins, C]`` images per (bin, class), as the reference's ``quantize_sample.py`` with ``balance``.

    Every bin but the last takes ``round(N / num_bins)`` images of the remaining pool, per class
    ``round(f * remaining_c)`` with ``f = round(N / num_bins) / remaining`` (Python's rounding, as the
    reference); the last bin is the remainder.
    """
    counts = [int(c) for c in class_counts]
    size = round(sum(counts) / num_bins)
    remaining = list(counts)
    rows = []
    for _ in range(num_bins - 1):
        total = sum(remaining)
        frac = size / total if total else 0.0
        row = [min(round(frac * r), r) for r in remaining]
        remaining = [r - b for r, b in zip(remaining, row, strict=True)]
        rows.append(row)
    rows.append(remaining)
    return torch.tensor(rows, dtype=torch.long)


def quantize_bins(sim: torch.Tensor, sizes: list[int], lam: float = 1.0) -> list[torch.Tensor]:
    """Split one class (similarity ``sim``, ``[n, n]``) into bins of ``sizes`` (summing to n) by repeated GraphCut
    greedy on the remaining pool; the last bin is the remainder. Returns class-local indices per bin."""
    n = sim.shape[0]
    pool = torch.ones(n, dtype=torch.bool, device=sim.device)
    bins = []
    for size in sizes[:-1]:
        picks = graphcut_greedy(sim, pool, size, lam) if size else torch.empty(0, dtype=torch.long,
                                                                               device=sim.device)
        pool[picks] = False
        bins.append(picks.cpu())
    bins.append(torch.nonzero(pool).flatten().cpu())
    return bins


def apportion(sizes: torch.Tensor, total: int, generator: torch.Generator) -> torch.Tensor:
    """Integer counts per bin, summing to ``total``, each ``floor(q)`` or ``ceil(q)`` of ``q = total * size / sum``
    with expectation ``q`` (systematic sampling of the fractional parts with one uniform offset)."""
    sizes = sizes.double()
    quota = total * sizes / sizes.sum().clamp_min(1)
    base = quota.floor()
    rest = total - int(base.sum())
    if rest > 0:
        frac = quota - base
        cum = frac.cumsum(0)
        cum = cum * (rest / cum[-1])
        points = torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(rest, dtype=torch.float64)
        picked = torch.searchsorted(cum, points, right=True).clamp_max(len(sizes) - 1)
        base[picked] += 1
    return base.long()


# ------------------------------------------------------------------------------------- feature networks
def _load_resnet18_state(spec: str) -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet ResNet-18 state dict named by ``spec`` (a file or ``hub``) and the file it came from."""
    if spec == "hub":
        path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_RESNET18
        if not path.is_file():
            raise GendistillError(
                f"DQ's pretrained ResNet-18 is not on this machine (looked for {path}); put torchvision's "
                f"{TORCHVISION_RESNET18} there or set pretrained_weights=<file>, or pretrained_weights='' for the "
                "ConvNet fallback (nothing is downloaded)")
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise GendistillError(f"pretrained_weights {spec!r} is not a file; give a resnet18 state-dict "
                                  "(.pth or .safetensors), 'hub', or '' for the ConvNet fallback")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one user-facing message
        raise GendistillError(f"cannot read pretrained_weights {path}: {str(exc).splitlines()[0]}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}, str(path)


def _imagenet_resnet18(state: dict[str, torch.Tensor], where: str) -> nn.Module:
    from torchvision.models import resnet18

    with seeded(0):
        net = resnet18(weights=None)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise GendistillError(f"{where} is not a torchvision/timm resnet18 state dict: {lines[-1]}") from exc
    return net


#: the input normalisation DQ's code gives its selection network where it differs from the dataset's here (DQ
#: normalises CIFAR-10 with the true per-channel std, this package with the 0.2023/0.1994/0.2010 of the DC family)
DQ_NORMALISATION = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))}


class PretrainedResNet18(nn.Module):
    """ImageNet ResNet-18 as the reference's selection network: inputs upsampled to ``image_size``, a random
    first conv for non-RGB inputs, a random final layer (``classifier``) for ``num_classes`` != 1000.
    ``renormalise`` maps inputs in the dataset's normalisation to DQ's (``(scale, shift)``: ``x * scale + shift``)."""

    def __init__(self, state: dict[str, torch.Tensor], where: str, channels: int, num_classes: int,
                 image_size: int, seed: int, renormalise: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        scale, shift = renormalise or (torch.ones(channels), torch.zeros(channels))
        self.register_buffer("in_scale", scale.float().view(1, -1, 1, 1))
        self.register_buffer("in_shift", shift.float().view(1, -1, 1, 1))
        net = _imagenet_resnet18(state, where)
        with seeded(derive_seed(seed, "dq-resnet18-random-layers")):
            if channels != 3:
                net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            if num_classes != 1000:
                net.fc = nn.Linear(net.fc.in_features, num_classes)
        self.net = net
        self.classifier = net.fc
        self.image_size = image_size

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.in_scale + self.in_shift
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


# ----------------------------------------------------------------------------------------------- GradCAM++
def _cam_layer(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """The last module (in execution order) whose output is a 4-D map with spatial size > 1 (torchcam's rule)."""
    fired: list[tuple[nn.Module, tuple]] = []

    def record(mod: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            fired.append((mod, tuple(out.shape)))

    hooks = [m.register_forward_hook(record) for name, m in net.named_modules() if name]
    try:
        with torch.no_grad():
            net(x[:1])
    finally:
        for h in hooks:
            h.remove()
    maps = [m for m, shape in fired if len(shape) == 4 and max(shape[2:]) > 1]
    if not maps:
        raise GendistillError("GradCAM++ needs a network with a convolutional feature map")
    return maps[-1]


def gradcam_pp(net: nn.Module, x: torch.Tensor, class_idx: torch.Tensor | None = None,
               layer: nn.Module | None = None) -> torch.Tensor:
    """``[N, h, w]`` GradCAM++ maps of ``net`` at ``layer`` (default: its last spatial feature map), min-max
    normalised per image; ``class_idx`` defaults to the predicted class (as the reference).

    ``w_k = sum_ij alpha_kij relu(g_kij)``, ``alpha = g^2 / (2 g^2 + sum_ab A_kab g^3)`` (0 where ``g = 0``),
    map ``relu(sum_k w_k A_k)`` (Chattopadhyay et al., WACV 2018).
    """
    layer = layer if layer is not None else _cam_layer(net, x)
    held: dict[str, torch.Tensor] = {}

    def capture(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        held["a"] = out.detach().requires_grad_(True)
        return held["a"] * 1.0  # a non-leaf copy, so in-place ops downstream are allowed

    hook = layer.register_forward_hook(capture)
    try:
        with torch.enable_grad():
            scores = net(x)
            cls = scores.argmax(1) if class_idx is None else class_idx.to(scores.device)
            (g,) = torch.autograd.grad(scores.gather(1, cls[:, None]).sum(), held["a"])
    finally:
        hook.remove()
    a = held["a"].detach()
    g2 = g * g
    denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g
    alpha = torch.where(g2 > 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g2))
    weights = (alpha * torch.relu(g)).sum((2, 3))
    cam = torch.relu((weights[:, :, None, None] * a).sum(1))
    flat = cam.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(cam)


# ----------------------------------------------------------------------------------------------- pixel stage
def pixel_quantize(pixels: torch.Tensor, mae: nn.Module, mask_ratio: float, *,
                   cam: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                   generator: torch.Generator | None = None, batch_size: int = 32,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Drop ``mask_ratio`` of the MAE's patches of ``pixels`` (``[N, C, H, W]`` in [0, 1]), reconstruct them with
    ``mae`` (a ``ViTMAEForPreTraining``), paste into the input and resize back.

    Images are upsampled to the MAE's size, replicated to RGB if single-channel, ImageNet-normalised (as the
    reference). ``cam(pixels_batch, mae_input_batch) -> [n, h, w]`` ranks the patches (the top
    ``int(L (1 - mask_ratio))`` are kept); without it the kept patches are random (``generator``). Returns the
    reconstructed pixels in [0, 1] (mean over channels for single-channel data) and the ``[N, L]`` drop mask.
    """
    cfg = mae.config
    size, patch, mae_ch = int(cfg.image_size), int(cfg.patch_size), int(cfg.num_channels)
    if getattr(cfg, "norm_pix_loss", False):
        raise GendistillError("the MAE predicts per-patch normalised pixels (norm_pix_loss); use a checkpoint "
                              "trained without it, as the reference's visualisation MAE")
    n, c, h, w = pixels.shape
    if mae_ch != 3 or c not in (1, 3):
        raise GendistillError(f"the pixel stage needs an RGB MAE and 1- or 3-channel images (MAE {mae_ch}, data {c})")
    grid = size // patch
    device = torch.device(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    old_ratio = cfg.mask_ratio
    cfg.mask_ratio = mask_ratio
    outs, masks = [], []
    try:
        for start in range(0, n, batch_size):
            px = pixels[start : start + batch_size].to(device).float()
            x = px.expand(-1, 3, -1, -1) if c == 1 else px
            if (h, w) != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            xn = (x - mean) / std
            if cam is not None:
                scores = cam(px, xn)
                scores = F.interpolate(scores[:, None].float(), size=(grid, grid), mode="bilinear",
                                       align_corners=False).flatten(1)
                order = torch.argsort(scores, dim=1, descending=True, stable=True)
                noise = torch.argsort(order, dim=1).float()  # rank: MAE keeps the smallest noise
            else:
                noise = torch.rand(px.shape[0], grid * grid, generator=generator).to(device)
            with torch.no_grad():
                out = mae(pixel_values=xn, noise=noise)
                recon = mae.unpatchify(out.logits)
            drop = out.mask.view(-1, 1, grid, grid).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
            paste = (xn * (1 - drop) + recon * drop) * std + mean
            if (h, w) != (size, size):
                paste = F.interpolate(paste, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
            if c == 1:
                paste = paste.mean(1, keepdim=True)
            outs.append(paste.clamp(0, 1).cpu())
            masks.append(out.mask.cpu())
    finally:
        cfg.mask_ratio = old_ratio
    return torch.cat(outs), torch.cat(masks)


def _load_mae(path: str, device: torch.device) -> nn.Module:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise GendistillError(f"mae_weights {path!r} is not a folder; give a local ViTMAEForPreTraining folder "
                              "(config.json + weights), nothing is downloaded")
    try:
        from transformers import ViTMAEForPreTraining
    except ImportError as exc:
        raise GendistillError("DQ's pixel stage needs the transformers package") from exc
    try:
        mae = ViTMAEForPreTraining.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise GendistillError(f"cannot load the MAE from {folder}: {str(exc).splitlines()[0]}") from exc
    return mae.to(device).eval()


def dq_renormalisation(train: RealDataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(scale, shift)`` taking ``train``'s normalised images to DQ's normalisation of that dataset (None: same)."""
    pre = train.preprocessing
    if train.name not in DQ_NORMALISATION or pre.zca is not None:  # DQ does not whiten; ZCA inputs stay as they are
        return None
    mean, std = torch.tensor(pre.mean), torch.tensor(pre.std)
    dq_mean, dq_std = (torch.tensor(v) for v in DQ_NORMALISATION[train.name])
    return std / dq_std, (mean - dq_mean) / dq_std


# ----------------------------------------------------------------------------------------------- method
@register_method("dq", config=DQConfig, paper="Zhou, Wang, Gu et al., Dataset Quantization, ICCV 2023",
                 year=2023, kind="coreset", default_eval="dc")
class DatasetQuantization(Distiller):
    """GraphCut bins of gradient features, uniform per-bin sampling, optional MAE pixel quantization."""

    def _feature_net(self, train: RealDataset, seed: int, progress: bool) -> tuple[nn.Module, dict[str, Any]]:
        cfg = self.config
        c, _, _ = train.image_shape
        if cfg.pretrained_weights:
            state, where = _load_resnet18_state(cfg.pretrained_weights)
            renormalise = dq_renormalisation(train)
            net = PretrainedResNet18(state, where, c, train.num_classes, cfg.pretrained_image_size, seed,
                                     renormalise)
            desc = (f"ImageNet ResNet-18 ({where}) at {cfg.pretrained_image_size} px, untrained on the data, random "
                    f"final layer{', random first conv' if c != 3 else ''}"
                    f"{', inputs in DQ normalisation' if renormalise else ''}")
            return net.to(self.device).eval(), {"network": desc, "weights": where, "state": state}
        net = feature_network(train, cfg.feature_spec(), seed, progress)
        how = (f"trained {cfg.feature_epochs} epochs on "
               f"{cfg.feature_images_per_class or 'all'} images per class") if cfg.features == "trained" else "random"
        return net, {"network": f"{cfg.feature_model} ({how})", "weights": None, "state": None}

    def distill(self, train: RealDataset, ipc: int, *, seed: int = 0, run: Any = None,
                progress: bool | None = None) -> SyntheticSet:
        from tqdm.auto import tqdm

        cfg = self.config
        smallest = int(train.class_counts.min())
        if ipc > smallest:
            raise GendistillError(f"--ipc {ipc} exceeds the {smallest} real images of the smallest class of "
                                  f"{train.name}")
        show = self.show_progress(run, progress)
        net, info = self._feature_net(train, seed, show)
        feats, logits = embed(net, train.images(), device=self.device, batch_size=cfg.embed_batch_size,
                              logits=True, progress=show)
        sizes = bin_sizes(train.class_counts, cfg.num_bins)
        gen = make_generator(derive_seed(seed, "dq-bin-sampling"))
        chosen, per_bin = [], []
        for cls in tqdm(range(train.num_classes), desc="DQ bins (GraphCut)", disable=not show, leave=False):
            idx = train.class_index[cls, : int(train.class_counts[cls])]
            r = last_layer_residual(logits[idx].to(self.device), torch.full((len(idx),), cls, device=self.device),
                                    cfg.gradient)
            sim = gradient_similarity(r, feats[idx].to(self.device), cfg.sim_chunk)
            bins = quantize_bins(sim, sizes[:, cls].tolist(), cfg.lam)
            del sim
            counts = apportion(torch.tensor([len(b) for b in bins]), ipc, gen)
            picks = [b[torch.randperm(len(b), generator=gen)[:k]] for b, k in zip(bins, counts.tolist(), strict=True)]
            chosen.append(idx[torch.cat(picks)])
            per_bin.append(counts)
        index = torch.cat(chosen)
        images = train.images(index)
        deviations = ["bin sampling: ipc images per class apportioned over the bins (systematic rounding of "
                      "ipc*|bin|/|class|) instead of round(fraction*|bin|)"]
        if not cfg.pretrained_weights:
            deviations.append(f"feature network: {info['network']} instead of the ImageNet ResNet-18 at 224 px")
        if cfg.gradient != "reference":
            deviations.append("bias gradient softmax - onehot (the reference: gradient of CE on softmax outputs)")
        pixel = None
        if cfg.mae_weights:
            images, pixel = self._pixel_stage(train, index, net, info, seed, deviations)
        meta = {"feature_network": info["network"], "deviations": deviations,
                "dq_bin_sizes": sizes.tolist(), "dq_samples_per_bin": torch.stack(per_bin, 1).tolist(),
                "pixel_stage": pixel}
        return self.make_synset(train, images, train.labels[index], ipc, seed, source_indices=index, meta=meta)

    def _pixel_stage(self, train: RealDataset, index: torch.Tensor, net: nn.Module, info: dict[str, Any],
                     seed: int, deviations: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        mae = _load_mae(cfg.mae_weights, self.device)
        cam = None
        if cfg.cam_mask and info["state"] is not None:
            cam_net = _imagenet_resnet18(info["state"], info["weights"]).to(self.device).eval()

            def cam(_px: torch.Tensor, xn: torch.Tensor) -> torch.Tensor:  # the reference: RGB MAE input
                return gradcam_pp(cam_net, xn)
            cam_desc = "GradCAM++ of the ImageNet ResNet-18 on the MAE input"
        elif cfg.cam_mask:
            pre = train.preprocessing

            def cam(px: torch.Tensor, _xn: torch.Tensor) -> torch.Tensor:  # the dataset ConvNet, data space
                return gradcam_pp(net, pre.apply(px.cpu()).to(self.device))
            cam_desc = f"GradCAM++ of the feature network ({info['network']})"
            deviations.append("pixel stage: GradCAM++ of the dataset feature network, not the ImageNet ResNet-18")
        else:
            cam_desc = "random patches"
        if train.image_shape[0] == 1:
            deviations.append("pixel stage: grey images replicated to RGB for the MAE and averaged back")
        pixels = train.pixels[index].float() / 255.0
        recon, mask = pixel_quantize(pixels, mae, cfg.mask_ratio, cam=cam,
                                     generator=make_generator(derive_seed(seed, "dq-pixel")),
                                     batch_size=cfg.pixel_batch_size, device=self.device)
        recon8 = (recon * 255.0).round().to(torch.uint8)  # stored as 8-bit images, as the reference's PNGs
        record = {"mae": str(cfg.mae_weights), "mask_ratio": cfg.mask_ratio, "patches": int(mask.shape[1]),
                  "patches_kept": int((mask[0] == 0).sum()), "ranking": cam_desc,
                  "mae_image_size": int(mae.config.image_size)}
        return train.preprocessing.apply(recon8), record
