"""The class-conditional DiT backbone: diffusers' ``DiTTransformer2DModel`` (Peebles & Xie, ICCV 2023) with
Minimax's DiffFit scales (Gu et al., CVPR 2024; Xie et al., ICCV 2023), in pixel space or in an
``AutoencoderKL`` latent space.

Differences between diffusers' DiT and the original that matter for fine-tuning are handled here:

* every diffusers block owns a copy of the conditioning embedder (timestep MLP and class table); the original has
  one. :func:`tie_conditioning` makes the blocks share block 0's embedder (refusing copies that differ), so the
  class table is one tensor and label dropout is drawn once per sample (we drop labels ourselves, explicitly
  seeded, and switch diffusers' internal dropout off);
* the DiffFit per-channel scales (all 1 at the start, so the model is unchanged) live in :class:`DiffFitDiT` and
  act through forward hooks on the first half of the blocks: the qkv projections, the attention output
  projection, and the attention and MLP residual branches;
* the trainable subset is an explicit list (:func:`trainable_parameter_names`): every bias, the class table and
  the scales, never "whatever is called norm" (which in diffusers would unfreeze all adaLN weight matrices).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gendistill.generative.diffusion import GaussianDiffusion
from gendistill.utils.errors import CheckpointError, ConfigError

__all__ = ["ARCHS", "Backbone", "DiffFitDiT", "DiffFitUNet", "build_dit", "build_unet", "dit_init_", "load_backbone",
           "parse_unet_arch", "save_backbone", "tie_conditioning", "trainable_parameter_names"]

#: name -> (depth, width, heads); the patch size comes from the ``/p`` suffix (DiT Table 1).
ARCHS: dict[str, tuple[int, int, int]] = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16),
                                          "XL": (28, 1152, 16)}
LATENT_SCALE = 0.18215


def parse_arch(arch: str) -> tuple[int, int, int, int]:
    """``DiT-XL/2`` -> (depth, width, heads, patch); ``custom-D<d>-W<w>-H<h>/<p>`` for anything else."""
    m = re.fullmatch(r"DiT-(S|B|L|XL)/(\d+)", arch)
    if m:
        return (*ARCHS[m.group(1)], int(m.group(2)))
    m = re.fullmatch(r"custom-D(\d+)-W(\d+)-H(\d+)/(\d+)", arch)
    if m:
        depth, width, heads, patch = map(int, m.groups())
        if width % heads:
            raise ConfigError(f"arch {arch!r}: width {width} is not divisible by {heads} heads")
        return depth, width, heads, patch
    raise ConfigError(f"unknown DiT arch {arch!r}; use DiT-S/2, DiT-B/4, DiT-XL/2 ... or "
                      "custom-D<depth>-W<width>-H<heads>/<patch>")


def dit_init_(model: nn.Module) -> None:
    """DiT's initialisation: xavier linears, zeroed adaLN modulation and output layer, N(0, 0.02) embeddings."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    proj = model.pos_embed.proj
    nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    nn.init.zeros_(proj.bias)
    for block in model.transformer_blocks:
        emb = block.norm1.emb
        nn.init.normal_(emb.class_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(emb.timestep_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(emb.timestep_embedder.linear_2.weight, std=0.02)
        nn.init.zeros_(block.norm1.linear.weight)
        nn.init.zeros_(block.norm1.linear.bias)
    for layer in (model.proj_out_1, model.proj_out_2):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    first = model.transformer_blocks[0].norm1.emb.state_dict()
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(first)  # one embedder, as the original DiT


def build_dit(arch: str, in_channels: int, sample_size: int, num_classes: int, learn_sigma: bool = True,
              seed: int = 0) -> nn.Module:
    """A freshly initialised diffusers DiT (for pretraining from scratch)."""
    from diffusers import DiTTransformer2DModel

    depth, width, heads, patch = parse_arch(arch)
    if sample_size % patch:
        raise ConfigError(f"a {sample_size}x{sample_size} input cannot be cut into {patch}x{patch} patches; "
                          "choose a patch size that divides it (e.g. --set arch=DiT-S/4 for 28x28)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=width // heads,
                                      in_channels=in_channels, out_channels=in_channels * (2 if learn_sigma else 1),
                                      num_layers=depth, sample_size=sample_size, patch_size=patch,
                                      num_embeds_ada_norm=num_classes)
        dit_init_(model)
    return model


def tie_conditioning(transformer: nn.Module, tie: bool = True) -> None:
    """Share block 0's conditioning embedder across blocks and disable diffusers' own label dropout.

    Raises:
        CheckpointError: the blocks hold different embedders (a model trained untied); pass ``tie=False``.
    """
    blocks = transformer.transformer_blocks
    first = blocks[0].norm1.emb
    if tie:
        for i, block in enumerate(blocks[1:], start=1):
            emb = block.norm1.emb
            if emb is first:
                continue
            for (name, a), (_, b) in zip(first.named_parameters(), emb.named_parameters(), strict=True):
                if a.shape != b.shape or (not a.is_meta and not torch.equal(a, b)):
                    raise CheckpointError(f"block {i} has its own {name} (the checkpoint was trained with per-block "
                                          "embedders); set tie_embeddings=false to keep them separate")
            block.norm1.emb = first
    for block in blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0  # label dropout is drawn by the training loop


@contextlib.contextmanager
def untied(transformer: nn.Module):
    """Temporarily give each block its own copy of a shared embedder (safetensors refuses shared tensors)."""
    blocks = transformer.transformer_blocks
    first = blocks[0].norm1.emb
    shared = [i for i, b in enumerate(blocks) if i > 0 and b.norm1.emb is first]
    for i in shared:
        blocks[i].norm1.emb = copy.deepcopy(first)
    try:
        yield transformer
    finally:
        for i in shared:
            blocks[i].norm1.emb = first


class DiffFitDiT(nn.Module):
    """A diffusers DiT plus Minimax's DiffFit scales on the first ``scaled_blocks`` blocks.

    Attributes:
        transformer: the ``DiTTransformer2DModel``.
        qkv_scale / out_scale: the attention's qkv and output-projection scales (``Attention.gamma1/gamma2``).
        attn_branch_scale / mlp_branch_scale: the block's residual-branch scales (``DiTBlock.gamma1/gamma2``).
    """

    def __init__(self, transformer: nn.Module, scaled_blocks: int | None = None, tie_embeddings: bool = True) -> None:
        super().__init__()
        self.transformer = transformer
        tie_conditioning(transformer, tie_embeddings)
        blocks = transformer.transformer_blocks
        n = len(blocks) // 2 if scaled_blocks is None else scaled_blocks
        dim = transformer.inner_dim
        self.qkv_scale = nn.ParameterList([nn.Parameter(torch.ones(3 * dim)) for _ in range(n)])
        self.out_scale = nn.ParameterList([nn.Parameter(torch.ones(dim)) for _ in range(n)])
        self.attn_branch_scale = nn.ParameterList([nn.Parameter(torch.ones(dim)) for _ in range(n)])
        self.mlp_branch_scale = nn.ParameterList([nn.Parameter(torch.ones(dim)) for _ in range(n)])
        for i in range(n):
            attn = blocks[i].attn1
            for j, proj in enumerate((attn.to_q, attn.to_k, attn.to_v)):
                proj.register_forward_hook(self._hook(self.qkv_scale, i, slice(j * dim, (j + 1) * dim)))
            attn.to_out[0].register_forward_hook(self._hook(self.out_scale, i))
            attn.register_forward_hook(self._hook(self.attn_branch_scale, i))
            blocks[i].ff.register_forward_hook(self._hook(self.mlp_branch_scale, i))

    @staticmethod
    def _hook(params: nn.ParameterList, i: int, part: slice | None = None):
        def scale(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            gamma = params[i] if part is None else params[i][part]
            return output * gamma.to(output.dtype)

        return scale

    component = "transformer"  # the pipeline folder the network is saved in

    @property
    def inner(self) -> nn.Module:
        """The diffusers model."""
        return self.transformer

    @property
    def num_classes(self) -> int:
        """Classes of the label table (its last row is the null class used for guidance)."""
        return self.transformer.config.num_embeds_ada_norm

    @property
    def in_channels(self) -> int:
        return self.transformer.config.in_channels

    @property
    def sample_size(self) -> int:
        return self.transformer.config.sample_size

    def scales_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("transformer.")}

    def fold_targets(self) -> list[tuple[nn.Module, torch.Tensor]]:
        """``(linear layer, per-output scale)`` pairs: scaling each layer's weight rows and bias by its scale
        computes exactly what the hooks compute (the attention branch's scale acts on the output projection's
        output too, the MLP branch's on the MLP's last linear layer)."""
        pairs = []
        dim = self.transformer.inner_dim
        for i in range(len(self.qkv_scale)):
            block = self.transformer.transformer_blocks[i]
            attn = block.attn1
            for j, proj in enumerate((attn.to_q, attn.to_k, attn.to_v)):
                pairs.append((proj, self.qkv_scale[i][j * dim:(j + 1) * dim]))
            pairs.append((attn.to_out[0], self.out_scale[i] * self.attn_branch_scale[i]))
            last = [m for m in block.ff.net.modules() if isinstance(m, nn.Linear)][-1]
            pairs.append((last, self.mlp_branch_scale[i]))
        return pairs

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.transformer(x, timestep=timesteps, class_labels=labels, return_dict=False)[0]


#: ``unet-C32-64-64[-A1][-L1]``: channels per level, levels with attention (0-based), residual blocks per level.
_UNET_ARCH = re.compile(r"unet-C(\d+(?:-\d+)*)(?:-A(\d+(?:,\d+)*))?(?:-L(\d+))?")


def parse_unet_arch(arch: str) -> tuple[tuple[int, ...], tuple[int, ...], int] | None:
    """``unet-C32-64-64-A1-L1`` -> ((32, 64, 64), (1,), 1); None for a DiT arch."""
    m = _UNET_ARCH.fullmatch(arch)
    if m is None:
        return None
    channels = tuple(int(c) for c in m.group(1).split("-"))
    attention = tuple(int(a) for a in m.group(2).split(",")) if m.group(2) else ()
    if any(a >= len(channels) for a in attention):
        raise ConfigError(f"arch {arch!r}: attention level out of range (levels 0..{len(channels) - 1})")
    return channels, attention, int(m.group(3) or 1)


def build_unet(arch: str, in_channels: int, sample_size: int, num_classes: int, learn_sigma: bool = True,
               seed: int = 0) -> nn.Module:
    """A freshly initialised class-conditional ``diffusers.UNet2DModel`` (``num_classes + 1`` embeddings: the last
    is the null label of classifier-free guidance)."""
    from diffusers import UNet2DModel

    parsed = parse_unet_arch(arch)
    if parsed is None:
        raise ConfigError(f"unknown U-Net arch {arch!r}; use unet-C<c1>-<c2>-...[-A<levels>][-L<blocks>], "
                          "e.g. unet-C32-64-64-A1")
    channels, attention, layers = parsed
    factor = 2 ** (len(channels) - 1)
    if sample_size % factor:
        raise ConfigError(f"a {sample_size}x{sample_size} input cannot be halved {len(channels) - 1} times; use "
                          "fewer U-Net levels")
    groups = max(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))
    down = tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in range(len(channels)))
    up = tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(range(len(channels))))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(sample_size=sample_size, in_channels=in_channels,
                           out_channels=in_channels * (2 if learn_sigma else 1), block_out_channels=channels,
                           down_block_types=down, up_block_types=up, layers_per_block=layers,
                           num_class_embeds=num_classes + 1, norm_num_groups=groups,
                           attention_head_dim=max(8, channels[0] // 4))


class DiffFitUNet(nn.Module):
    """A class-conditional diffusers ``UNet2DModel`` with DiffFit-style scales (this package's labelled
    adaptation of Xie et al., ICCV 2023, which defines them for transformers).

    Minimax's losses act on the predictions, so any denoiser works; the fine-tuned subset is defined the DiffFit way
    (:func:`trainable_parameter_names`): every bias, the GroupNorm affine parameters ("norms"), the class table,
    and per-channel scales (all 1 at the start) on the residual branches of the encoder half - the output of each
    down and mid ResNet block's second convolution and of each down and mid attention's output projection. Both
    are linear maps, so a scale folds exactly into their weights and biases.
    """

    component = "unet"

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.scaled: list[str] = []
        scales = {}
        for name, module in unet.named_modules():
            if not name.startswith(("down_blocks.", "mid_block.")):
                continue
            target = None
            if type(module).__name__ == "ResnetBlock2D":
                target = module.conv2
            elif type(module).__name__ == "Attention":
                target = module.to_out[0]
            if target is None:
                continue
            key = name.replace(".", "_")
            scales[key] = nn.Parameter(torch.ones(target.out_channels if hasattr(target, "out_channels")
                                                  else target.out_features))
            target.register_forward_hook(self._hook(key))
            self.scaled.append(name)
        self.scales = nn.ParameterDict(scales)

    def _hook(self, key: str):
        def scale(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            gamma = self.scales[key].to(output.dtype)
            return output * (gamma.view(1, -1, 1, 1) if output.dim() == 4 else gamma)

        return scale

    @property
    def inner(self) -> nn.Module:
        return self.unet

    @property
    def num_classes(self) -> int:
        return self.unet.config.num_class_embeds - 1

    @property
    def in_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def sample_size(self) -> int:
        size = self.unet.config.sample_size
        return size if isinstance(size, int) else size[0]

    def scales_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("unet.")}

    def fold_targets(self) -> list[tuple[nn.Module, torch.Tensor]]:
        """``(layer, per-output-channel scale)`` pairs (see :meth:`DiffFitDiT.fold_targets`)."""
        modules = dict(self.unet.named_modules())
        pairs = []
        for name in self.scaled:
            module = modules[name]
            layer = module.conv2 if type(module).__name__ == "ResnetBlock2D" else module.to_out[0]
            pairs.append((layer, self.scales[name.replace(".", "_")]))
        return pairs

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(x, timesteps, class_labels=labels, return_dict=False)[0]


def trainable_parameter_names(model: nn.Module, mode: str = "difffit") -> list[str]:
    """The parameters Minimax fine-tunes, by explicit rule.

    ``difffit``: every bias of a linear or convolution, the class-embedding table(s) and the DiffFit scales (the
    reference's set: about 1.74 M of DiT-XL/2's 675 M); for a U-Net also the GroupNorm affine parameters (DiT's
    norms have none: its adaLN weights are matrices, deliberately left frozen). ``full``: everything.
    """
    names = [n for n, _ in model.named_parameters()]
    if mode == "full":
        return names
    if mode != "difffit":
        raise ConfigError(f"unknown trainable mode {mode!r}; use difffit or full")
    keep = set()
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and module.bias is not None:
            keep.add(f"{module_name}.bias")
        if module_name.endswith(("class_embedder.embedding_table", "unet.class_embedding")):
            keep.add(f"{module_name}.weight")
        if isinstance(module, nn.GroupNorm) and module.affine:
            keep.update({f"{module_name}.weight", f"{module_name}.bias"})
    keep.update(n for n in names if n.split(".")[0] in {"qkv_scale", "out_scale", "attn_branch_scale",
                                                            "mlp_branch_scale", "scales"})
    return [n for n in names if n in keep]


# ----------------------------------------------------------------------------------------------- backbone
@dataclasses.dataclass
class Backbone:
    """Everything needed to train and sample: denoiser, diffusion chain, optional VAEs, pixel/latent maps.

    Attributes:
        net: the DiT with DiffFit scales.
        diffusion: the 1000-step training chain.
        space: ``pixel`` or ``latent``.
        image_channels / image_size: the pixels the model generates.
        vae_encoder / vae_decoder: latent space only (the reference encodes with sd-vae-ft-ema and decodes with
            sd-vae-ft-mse).
        latent_scale: multiplier of VAE latents (0.18215 for the Stable Diffusion VAEs).
        id2label: model class index -> name, when known (ImageNet for DiT-XL/2).
        info: free-form provenance (dataset, class names, source checkpoint).
    """

    net: DiffFitDiT | DiffFitUNet
    diffusion: GaussianDiffusion
    space: str
    image_channels: int
    image_size: int
    vae_encoder: nn.Module | None = None
    vae_decoder: nn.Module | None = None
    latent_scale: float = LATENT_SCALE
    id2label: dict[int, str] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.net.in_channels, self.net.sample_size, self.net.sample_size)

    @property
    def null_label(self) -> int:
        return self.net.num_classes

    def to(self, device: torch.device | str) -> Backbone:
        self.net.to(device)
        for vae in (self.vae_encoder, self.vae_decoder):
            if vae is not None:
                vae.to(device)
        return self

    def encode(self, pixels01: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Pixels in [0, 1] -> clean diffusion samples (latents drawn with ``noise`` as the reference samples)."""
        x = pixels01 * 2.0 - 1.0
        if self.space == "pixel":
            return x
        with torch.no_grad():
            dist = self.vae_encoder.encode(x.to(next(self.vae_encoder.parameters()).dtype)).latent_dist
            z = dist.mean if noise is None else dist.mean + dist.std * noise.to(dist.mean.dtype)
        return z.float() * self.latent_scale

    def decode(self, x0: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
        """Clean diffusion samples -> pixels in [0, 1].

        ``differentiable``: keep the gradient to ``x0`` (through the frozen VAE decoder) and skip the clamp, so
        values outside [0, 1] still pass a gradient back.
        """
        if self.space == "pixel":
            x = (x0 + 1.0) / 2.0
            return x if differentiable else x.clamp(0, 1)
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            vae = self.vae_decoder
            x = vae.decode((x0 / self.latent_scale).to(next(vae.parameters()).dtype)).sample
        x = (x.float() + 1.0) / 2.0
        return x if differentiable else x.clamp(0, 1)


def _scheduler_config(schedule: tuple[str, int, float, float], prediction: str) -> dict[str, Any]:
    """The chain's betas as a diffusers scheduler config (DDIM, as the public DiT pipelines ship it).

    Only the betas are read back; the variance type follows from the transformer's output channels.
    """
    kind, steps, start, end = schedule
    return {"_class_name": "DDIMScheduler", "num_train_timesteps": steps, "beta_schedule": kind,
            "beta_start": start, "beta_end": end, "clip_sample": False, "prediction_type": prediction}


def save_backbone(backbone: Backbone, directory: str | Path, schedule: tuple[str, int, float, float] | None = None
                  ) -> Path:
    """Write ``directory`` in the DiT pipeline layout (``transformer/``, ``vae/``, ``scheduler/``,
    ``model_index.json``) with the DiffFit scales folded into the component's weights (what diffusers loads), plus
    ``vae_encoder/`` when it differs from the decoder, ``difffit/`` (the unfolded weights and the scales, for further
    fine-tuning), a model card and ``gendistill.json``. Written to a temp folder, then renamed."""
    from safetensors.torch import save_file

    from gendistill.utils.atomic import replace_dir, temp_dir_beside

    target = Path(directory)
    tmp = temp_dir_beside(target)
    component = backbone.net.component
    with folded_scales(backbone.net) as unfolded:
        if component == "transformer":
            with untied(backbone.net.transformer) as transformer:
                transformer.save_pretrained(tmp / "transformer")
        else:
            backbone.net.inner.save_pretrained(tmp / component)
    (tmp / "difffit").mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in backbone.net.scales_state().items()},
              str(tmp / "difffit" / "scales.safetensors"))
    save_file(unfolded, str(tmp / "difffit" / "unfolded.safetensors"))
    if backbone.vae_decoder is not None:
        backbone.vae_decoder.save_pretrained(tmp / "vae")
    if backbone.vae_encoder is not None and backbone.vae_encoder is not backbone.vae_decoder:
        backbone.vae_encoder.save_pretrained(tmp / "vae_encoder")
    schedule = schedule or backbone.info.get("schedule") or ("linear", backbone.diffusion.num_timesteps, 1e-4, 0.02)
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(_scheduler_config(tuple(schedule), backbone.diffusion.prediction), indent=2))
    # diffusers' DiTPipeline needs a VAE and a transformer; every other model loads in gendistill's own pipeline
    # (gendistill.generative.pipeline.GendistillPipeline), which reads the same layout.
    dit_pipeline = component == "transformer" and backbone.vae_decoder is not None
    index = {"_class_name": "DiTPipeline" if dit_pipeline else "GendistillPipeline",
             component: ["diffusers", type(backbone.net.inner).__name__], "scheduler": ["diffusers", "DDIMScheduler"]}
    if backbone.vae_decoder is not None:
        index["vae"] = ["diffusers", "AutoencoderKL"]
    if backbone.id2label:
        index["id2label"] = {str(k): v for k, v in backbone.id2label.items()}
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    meta = {"space": backbone.space, "image_channels": backbone.image_channels, "image_size": backbone.image_size,
            "latent_scale": backbone.latent_scale, **{k: v for k, v in backbone.info.items() if k != "schedule"},
            "schedule": list(schedule), "difffit": "folded"}
    (tmp / "gendistill.json").write_text(json.dumps(meta, indent=2))
    from gendistill.generative.hub import write_model_card

    write_model_card(tmp, meta, location=target)  # heading and loading snippet: pretrain-<hash>/model
    return replace_dir(tmp, target)


@contextlib.contextmanager
def folded_scales(net: nn.Module):
    """Within the context the diffusers model alone computes ``net``: the DiffFit scales are folded (exactly) into the
    layers they follow and set to 1. Yields the unfolded values of the changed parameters (keyed by the diffusers
    model's parameter names); everything is restored on exit."""
    names = {id(p): n for n, p in net.inner.named_parameters()}
    scales = {n: p for n, p in net.named_parameters() if not n.startswith(net.component + ".")}
    saved_scales = {n: p.detach().clone() for n, p in scales.items()}
    unfolded: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for layer, scale in net.fold_targets():
            scale = scale.detach().clone()
            for param in (layer.weight, layer.bias):
                if param is None:
                    continue
                unfolded[names[id(param)]] = param.detach().cpu().clone().contiguous()
                param.mul_(scale.view(-1, *([1] * (param.dim() - 1))).to(param.dtype))
        for p in scales.values():
            p.fill_(1.0)
    try:
        yield unfolded
    finally:
        with torch.no_grad():
            inner = dict(net.inner.named_parameters())
            for name, value in unfolded.items():
                inner[name].copy_(value.to(inner[name].device))
            for n, p in scales.items():
                p.copy_(saved_scales[n])


def _from_pretrained(cls: Any, source: str, subfolder: str) -> Any:
    try:
        return cls.from_pretrained(source, subfolder=subfolder or None)
    except OSError as exc:
        where = "folder" if Path(source).exists() else "hub id"
        raise CheckpointError(f"cannot load {subfolder}/ from {where} {source!r} ({str(exc).splitlines()[0][:160]}); "
                              "pass a local folder in the DiT pipeline layout (transformer/, vae/, scheduler/) or "
                              "download it first with `huggingface-cli download <id> --local-dir DIR`") from exc


def load_vaes(decoder: str, decoder_subfolder: str = "", encoder: str | None = None,
              encoder_subfolder: str = "") -> tuple[nn.Module, nn.Module, int, float]:
    """Frozen ``(encoder, decoder)`` AutoencoderKLs (the same module when no encoder is given), the decoder's
    downsampling factor and its latent scaling factor."""
    from diffusers import AutoencoderKL

    dec = _from_pretrained(AutoencoderKL, decoder, decoder_subfolder)
    enc = _from_pretrained(AutoencoderKL, encoder, encoder_subfolder) if encoder else dec
    for vae in {id(enc): enc, id(dec): dec}.values():
        vae.float().requires_grad_(False).eval()
    factor = 2 ** (len(dec.config.block_out_channels) - 1)
    return enc, dec, factor, float(getattr(dec.config, "scaling_factor", LATENT_SCALE))


def resize_pixels(pixels: torch.Tensor, size: int, clamp: bool = True) -> torch.Tensor:
    """Square bilinear (antialiased) resize of [0, 1] pixels (clamped to [0, 1] unless ``clamp`` is False); a
    no-op at the same size."""
    if pixels.shape[-1] == size and pixels.shape[-2] == size:
        return pixels
    out = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False)
    return out.clamp(0, 1) if clamp else out


def _load_difffit(net: nn.Module, path: Path, component: str, meta: dict[str, Any]) -> None:
    """Restore the DiffFit state of a saved model: the unfolded weights and the scales (``difffit/``, beside weights
    with the scales folded in), or a legacy ``<component>/difffit.safetensors`` beside unfolded weights. A folder
    whose files contradict its record is refused: loading it either way would give a model that was never trained.
    """
    from safetensors.torch import load_file

    legacy = path / component / "difffit.safetensors"
    folder = path / "difffit"
    folded = meta.get("difffit") == "folded"
    if folded and legacy.is_file():
        raise CheckpointError(f"{legacy} lies beside weights whose scales are folded in (gendistill.json says so): "
                              "applying it would scale twice; delete the stray file or save the model again")
    if folded and not (folder / "scales.safetensors").is_file():
        raise CheckpointError(f"{path}: the weights have the DiffFit scales folded in but difffit/ is missing, so "
                              "the model cannot be fine-tuned further as trained; copy difffit/ from the original "
                              "folder (diffusers pipelines can still load the folded weights)")
    if not folded and folder.exists():
        raise CheckpointError(f"{folder} lies beside unfolded weights (gendistill.json does not record folding): "
                              "the folder was assembled from two saves; save the model again")
    if folded:
        unfolded = load_file(str(folder / "unfolded.safetensors"))
        params = dict(net.inner.named_parameters())
        unknown = sorted(set(unfolded) - set(params))
        if unknown:
            raise CheckpointError(f"{folder / 'unfolded.safetensors'} names parameters this model lacks "
                                  f"({unknown[0]}); pass the same scaled_blocks")
        with torch.no_grad():
            for name, value in unfolded.items():
                params[name].copy_(value)
        scales_file = folder / "scales.safetensors"
    elif legacy.is_file():
        scales_file = legacy
    else:
        return
    state = load_file(str(scales_file))
    expected = net.scales_state()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        raise CheckpointError(f"{scales_file} does not match this model's DiffFit scales; pass the same scaled_blocks")
    net.load_state_dict(state, strict=False)


def _has(source: str, sub: str) -> bool:
    path = Path(source)
    return (path / sub).is_dir() if path.exists() else sub in ("vae",)


def load_backbone(source: str | Path, *, vae_encoder: str | None = None, vae_decoder: str | None = None,
                  tie_embeddings: bool = True, scaled_blocks: int | None = None,
                  device: torch.device | str = "cpu") -> Backbone:
    """Load a DiT pipeline from a local folder or a hub id (``facebook/DiT-XL-2-256`` layout).

    Args:
        source: folder or hub id with ``transformer/``, ``scheduler/`` and (latent models) ``vae/``.
        vae_encoder / vae_decoder: other VAEs (folders or hub ids), e.g. the reference's sd-vae-ft-ema encoder
            and sd-vae-ft-mse decoder. A folder's own ``vae_encoder/`` is used when present.
        tie_embeddings: share one conditioning embedder across blocks (see :func:`tie_conditioning`).
        scaled_blocks: blocks that get DiffFit scales (default: the first half).
    """
    from diffusers import DiTTransformer2DModel, UNet2DModel

    from gendistill.generative.hub import resolve_model_source

    source = resolve_model_source(source)
    path = Path(source)
    component = "unet" if path.exists() and (path / "unet").is_dir() else "transformer"
    if path.exists() and not (path / component).is_dir():
        raise CheckpointError(f"{source} is not a DiT pipeline folder (no transformer/ or unet/); expected the layout "
                              "of facebook/DiT-XL-2-256 or a folder written by `gendistill pretrain`/`finetune`")
    # float32 masters whatever the stored precision (the shipped models store fp16; see generative/ship.py)
    inner = _from_pretrained(UNet2DModel if component == "unet" else DiTTransformer2DModel, source, component).float()
    meta: dict[str, Any] = {}
    if path.exists() and (path / "gendistill.json").is_file():
        meta = json.loads((path / "gendistill.json").read_text())
    scheduler: dict[str, Any] = {}
    if path.exists() and (path / "scheduler" / "scheduler_config.json").is_file():
        scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    elif not path.exists():
        from diffusers import DDPMScheduler

        scheduler = dict(_from_pretrained(DDPMScheduler, source, "scheduler").config)
    learn_sigma = inner.config.out_channels == 2 * inner.config.in_channels
    schedule = (scheduler.get("beta_schedule", "linear"), int(scheduler.get("num_train_timesteps", 1000)),
                float(scheduler.get("beta_start", 1e-4)), float(scheduler.get("beta_end", 0.02)))
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise CheckpointError(f"{source}: prediction_type {prediction!r} is not supported (epsilon or v_prediction)")
    diffusion = GaussianDiffusion.from_schedule(*schedule, learn_sigma=learn_sigma, prediction=prediction)
    net = DiffFitUNet(inner) if component == "unet" else DiffFitDiT(inner, scaled_blocks, tie_embeddings)
    if path.exists():
        _load_difffit(net, path, component, meta)
    space = meta.get("space") or ("latent" if (vae_decoder or _has(source, "vae")) else "pixel")
    enc = dec = None
    if space == "latent":
        own_encoder = not vae_encoder and path.exists() and (path / "vae_encoder").is_dir()
        enc, dec, factor, latent_scale = load_vaes(vae_decoder or source, "" if vae_decoder else "vae",
                                                   source if own_encoder else vae_encoder,
                                                   "vae_encoder" if own_encoder else "")
        image_size = net.sample_size * factor
        image_channels = dec.config.out_channels
    else:
        image_size = net.sample_size
        image_channels = net.in_channels
        latent_scale = 1.0
    id2label = None
    index = path / "model_index.json"
    if path.exists() and index.is_file():
        raw = json.loads(index.read_text()).get("id2label")
        id2label = {int(k): v for k, v in raw.items()} if raw else None
    info = {k: v for k, v in meta.items() if k not in ("space", "image_channels", "image_size", "latent_scale")}
    info["schedule"] = list(schedule)
    info.setdefault("source", source)
    return Backbone(net, diffusion, space, image_channels, image_size, enc, dec, latent_scale, id2label,
                    info).to(device)
