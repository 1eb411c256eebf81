"""Network registry: ``create_network(name, channels, num_classes, image_size)``.

Architectures follow the DC lineage (reference §1.1): ConvNet-3 with width 128, "instance norm" implemented
as ``GroupNorm(C, C)``, ReLU, 2x2 average pooling, and padding 3 on the first conv for 28x28 inputs. Variants
are spelled ``convnet[_d<depth>][_w<width>][_<in|bn|ln|nn>][_<relu|sigmoid|leaky|swish>][_<avg|max>]``, e.g.
``convnet_d4``, ``convnet_bn``, ``convnet_w64_nn``. Also ResNet-AP-10 (IDC), ResNet-18 (instance or batch
norm), VGG-11, AlexNet, LeNet, MLP, and ``timm:<name>`` for any timm model. Every network exposes
``embed(x)`` (the feature before the classifier) and ``classifier``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from gendistill.utils.errors import GendistillError, NetworkInputError
from gendistill.utils.seeding import seeded

__all__ = ["ConvNet", "create_network", "list_networks", "register_network", "xavier_init_"]

_NETWORKS: dict[str, Callable[..., nn.Module]] = {}


def register_network(name: str) -> Callable:
    """Register a factory ``fn(channels, num_classes, image_size, **kwargs) -> nn.Module`` under ``name``."""

    def wrap(fn):
        _NETWORKS[name] = fn
        return fn

    return wrap


def list_networks() -> list[str]:
    """Registered names (ConvNet variants and ``timm:<name>`` are accepted on top of these)."""
    return sorted(_NETWORKS)


class InstanceNorm(nn.GroupNorm):
    """The ConvNet's instance norm, ``nn.GroupNorm(C, C)`` (same parameters and results), computed in float32 when
    its input is half precision (under autocast), as CUDA's autocast does for every group norm.

    On a CPU, autocast leaves the group norm in bfloat16, whose backward ran 3.5x slower than in float32 inside the
    ``dsa`` evaluation (14.1 s against 4.0 s over 100 epochs, avx512_bf16 machine; docs/performance.md). The
    float32 output also keeps the ReLU and pooling after it in float32.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.bfloat16, torch.float16):
            with torch.autocast(x.device.type, enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def _norm(kind: str, channels: int, spatial: int) -> nn.Module:
    if kind == "in":
        return InstanceNorm(channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "ln":
        return nn.LayerNorm([channels, spatial, spatial], elementwise_affine=True)
    if kind == "nn":
        return nn.Identity()
    raise GendistillError(f"unknown norm {kind!r}; use in, bn, ln or nn")


def _act(kind: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "leaky": lambda: nn.LeakyReLU(0.01), "swish": nn.SiLU}
    if kind not in acts:
        raise GendistillError(f"unknown activation {kind!r}; use {', '.join(acts)}")
    return acts[kind]()


class _SumPool2x2(torch.autograd.Function):
    """2x2 / stride-2 average pooling of even-sized maps from four strided views.

    On a CPU, ``F.avg_pool2d`` on a contiguous (NCHW) map measured ~4x slower than these four strided adds
    (16 x 128 x 32 x 32: 2.0 ms vs 0.5 ms on the 2-core development machine). The backward spreads each
    gradient over its 2x2 window with one broadcast copy; being linear in the gradient, it is itself
    differentiable (double backward, as gradient matching needs).
    """

    generate_vmap_rule = True  # usable under torch.func transforms (vmap over models or classes)

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.dtype in (torch.bfloat16, torch.float16):
            # half-precision maps (autocast): strided bf16 adds run ~4x slower than fp32 ones on a CPU; summing a
            # float32 copy and casting back took 0.96 ms against 1.9 ms (20 x 128 x 28 x 28, 2 threads, avx512_bf16)
            return _SumPool2x2.forward(x.float()).to(x.dtype)
        out = x[..., ::2, ::2] + x[..., 1::2, ::2]
        out += x[..., ::2, 1::2]
        out += x[..., 1::2, 1::2]
        return out.mul_(0.25)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # nothing to save: the backward is linear
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        *lead, h, w = grad.shape
        # widen rows, then repeat them: two contiguous copies (measured ~1.8x faster than one 6-d broadcast copy)
        wide = (grad * 0.25).unsqueeze(-1).expand(*lead, h, w, 2).reshape(*lead, h, 2 * w)
        return wide.unsqueeze(-2).expand(*lead, h, 2, 2 * w).reshape(*lead, 2 * h, 2 * w)


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)`` (same results), with a faster path for contiguous even-sized CPU maps."""

    def __init__(self) -> None:
        super().__init__(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous() and x.shape[-1] % 2 == 0 \
                and x.shape[-2] % 2 == 0:
            return _SumPool2x2.apply(x)
        return super().forward(x)


def _check_size(name: str, image_size: int, minimum: int, hint: str) -> None:
    if image_size < minimum:
        raise NetworkInputError(
            f"{name} needs images of at least {minimum}x{minimum}, got {image_size}x{image_size}; {hint}"
        )


class ConvNet(nn.Module):
    """ConvNet-D of the DC lineage (Zhao et al., ICLR 2021): ``depth`` x [conv3x3 -> norm -> act -> pool].

    Args:
        channels: input channels.
        num_classes: output classes.
        image_size: input height (= width).
        width: conv channels (128 in the papers).
        depth: number of blocks (3 for ConvNet-3).
        norm: ``in`` (GroupNorm(C, C)), ``bn``, ``ln`` or ``nn`` (none).
        act: ``relu``, ``sigmoid``, ``leaky`` or ``swish``.
        pool: ``avg`` or ``max``.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int, width: int = 128, depth: int = 3,
                 norm: str = "in", act: str = "relu", pool: str = "avg") -> None:
        super().__init__()
        size = 32 if image_size == 28 else image_size
        _check_size(f"convnet depth {depth}", size, 2**depth,
                    f"use a shallower ConvNet (e.g. convnet_d{max(1, size.bit_length() - 1)}) or larger images")
        layers: list[nn.Module] = []
        in_ch = channels
        spatial = size
        self.taps: list[int] = []  # index (into features) of each block's activation output
        for d in range(depth):
            pad = 3 if (d == 0 and image_size == 28) else 1
            activation = _act(act)
            if isinstance(activation, nn.ReLU):
                activation.inplace = True  # its input (a norm or conv output) is needed by no backward
            layers += [nn.Conv2d(in_ch, width, 3, padding=pad), _norm(norm, width, spatial), activation]
            self.taps.append(len(layers) - 1)
            layers.append(AvgPool2x2() if pool == "avg" else nn.MaxPool2d(2, 2))
            spatial //= 2
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * spatial * spatial
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened output of the feature stack (DM's embedding)."""
        return self.features(x).flatten(1)

    def block_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Activation output of every block plus the flattened embedding (CAFE's layer-wise features)."""
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return outs, x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


_CONVNET_RE = re.compile(
    r"^convnet(?:[_-]?d(?P<depth>\d+))?(?:[_-]w(?P<width>\d+))?(?:[_-](?P<norm>in|bn|ln|nn))?"
    r"(?:[_-](?P<act>relu|sigmoid|leaky|swish))?(?:[_-](?P<pool>avg|max))?$"
)


class _Residual(nn.Module):
    """Basic residual block; ``pool_down`` downsamples with 2x2 average pooling (ResNet-AP) instead of stride."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, pool_down: bool) -> None:
        super().__init__()
        self.pool_down = pool_down and stride > 1
        s = 1 if self.pool_down else stride
        self.conv1 = nn.Conv2d(cin, cout, 3, s, 1, bias=False)
        self.n1 = _norm(norm, cout, 0) if norm != "ln" else nn.GroupNorm(1, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(norm, cout, 0) if norm != "ln" else nn.GroupNorm(1, cout)
        self.pool = nn.AvgPool2d(2) if self.pool_down else nn.Identity()
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if self.pool_down:
                self.short = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(cin, cout, 1, bias=False), _norm(norm, cout, 0))
            else:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.n1(self.conv1(x)))
        out = self.pool(out)
        out = self.n2(self.conv2(out))
        return torch.relu(out + self.short(x))


class ResNet(nn.Module):
    """ResNet for distillation benchmarks (He et al. 2016; the AP variant of IDC, Kim et al. ICML 2022).

    Small images (< 64 px) use a 3x3 stem; larger ones the ImageNet 7x7/stride-2 stem with max-pooling.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int, blocks: tuple[int, ...] = (2, 2, 2, 2),
                 norm: str = "in", pool_down: bool = False, width: int = 64) -> None:
        super().__init__()
        _check_size("resnet", image_size, 8, "use a ConvNet for images this small")
        big = image_size >= 64
        stem: list[nn.Module] = [nn.Conv2d(channels, width, 7 if big else 3, 2 if big else 1, 3 if big else 1,
                                           bias=False), _norm(norm, width, 0), nn.ReLU()]
        if big:
            stem.append(nn.MaxPool2d(3, 2, 1))
        layers: list[nn.Module] = []
        cin = width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                layers.append(_Residual(cin, cout, 2 if (j == 0 and i > 0) else 1, norm, pool_down))
                cin = cout
        self.features = nn.Sequential(*stem, *layers, nn.AdaptiveAvgPool2d(1))
        self.feature_dim = cin
        self.classifier = nn.Linear(cin, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class _Sequential(nn.Module):
    """A feature stack plus a linear classifier (VGG, AlexNet, LeNet, MLP)."""

    def __init__(self, features: nn.Module, feature_dim: int, head: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.feature_dim = feature_dim
        self.classifier = head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_network("vgg11")
def vgg11(channels: int, num_classes: int, image_size: int, norm: str = "in") -> nn.Module:
    """VGG-11 (Simonyan & Zisserman 2015) with instance norm as in the DC code; ``vgg11_bn`` for batch norm."""
    _check_size("vgg11", 32 if image_size == 28 else image_size, 32, "use a ConvNet for images below 32x32")
    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    layers: list[nn.Module] = []
    cin = channels
    for i, v in enumerate(cfg):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            pad = 3 if (i == 0 and image_size == 28) else 1
            layers += [nn.Conv2d(cin, v, 3, padding=pad), _norm(norm, v, 0) if norm != "ln" else nn.Identity(),
                       nn.ReLU()]
            cin = v
    layers.append(nn.AdaptiveAvgPool2d(1))
    return _Sequential(nn.Sequential(*layers), 512, nn.Linear(512, num_classes))


@register_network("vgg11_bn")
def vgg11_bn(channels: int, num_classes: int, image_size: int) -> nn.Module:
    return vgg11(channels, num_classes, image_size, norm="bn")


@register_network("alexnet")
def alexnet(channels: int, num_classes: int, image_size: int) -> nn.Module:
    """AlexNet as used for cross-architecture tests in the DC papers (Krizhevsky et al. 2012)."""
    _check_size("alexnet", image_size, 16, "use a ConvNet for images this small")
    features = nn.Sequential(
        nn.Conv2d(channels, 128, 5, padding=4 if image_size == 28 else 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(192, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 192, 3, padding=1), nn.ReLU(),
        nn.Conv2d(192, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(4),
    )
    return _Sequential(features, 192 * 16, nn.Linear(192 * 16, num_classes))


@register_network("alexcifarnet")
def alexcifarnet(channels: int, num_classes: int, image_size: int) -> nn.Module:
    """DD's CIFAR network (Wang et al. 2018, ``networks.AlexCifarNet``): two 5x5 convs of 64 channels, each with
    ReLU, 3/2 max pooling and local response normalisation, then fc 4096 -> 384 -> 192 -> classes."""
    if image_size != 32:
        raise NetworkInputError(f"alexcifarnet takes 32x32 images (a 4096-d flatten), got {image_size}x{image_size};"
                                " use lenet or a ConvNet")

    def lrn() -> nn.Module:
        return nn.LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1)

    features = nn.Sequential(
        nn.Conv2d(channels, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1), lrn(),
        nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2, padding=1),
    )
    head = nn.Sequential(nn.Linear(4096, 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU(),
                         nn.Linear(192, num_classes))
    return _Sequential(features, 4096, head)


def xavier_init_(net: nn.Module, gain: float = 1.0) -> nn.Module:
    """DD's default initialisation (``networks/utils.init_weights``, ``--init xavier``): Xavier-normal weights
    with ``gain`` and zero biases for every conv and linear layer; norm layers get weight 1, bias 0."""
    with torch.no_grad():
        for m in net.modules():
            name = type(m).__name__
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif "Norm" in name:
                if getattr(m, "weight", None) is not None:
                    m.weight.fill_(1.0)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
    return net


@register_network("lenet")
def lenet(channels: int, num_classes: int, image_size: int) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998), the DD paper's MNIST network."""
    _check_size("lenet", 32 if image_size == 28 else image_size, 32, "LeNet is built for 28x28 or 32x32 inputs")
    features = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2 if image_size == 28 else 0), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(5),
    )
    head = nn.Sequential(nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))
    net = _Sequential(features, 400, head)
    return net


@register_network("mlp")
def mlp(channels: int, num_classes: int, image_size: int, width: int = 128) -> nn.Module:
    """Three-layer perceptron of the DC papers."""
    features = nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size * image_size, width), nn.ReLU(),
                             nn.Linear(width, width), nn.ReLU())
    return _Sequential(features, width, nn.Linear(width, num_classes))


@register_network("resnet_ap10")
def resnet_ap10(channels: int, num_classes: int, image_size: int, norm: str = "in") -> nn.Module:
    """ResNet-AP-10 of IDC: one block per stage, average-pooling downsampling, instance norm."""
    return ResNet(channels, num_classes, image_size, (1, 1, 1, 1), norm, pool_down=True)


@register_network("resnet18")
def resnet18(channels: int, num_classes: int, image_size: int, norm: str = "in") -> nn.Module:
    """ResNet-18 with instance norm (DC code's ``ResNet18``); ``resnet18_bn`` for batch norm."""
    return ResNet(channels, num_classes, image_size, (2, 2, 2, 2), norm)


@register_network("resnet18_bn")
def resnet18_bn(channels: int, num_classes: int, image_size: int) -> nn.Module:
    return ResNet(channels, num_classes, image_size, (2, 2, 2, 2), "bn")


class _TimmWrapper(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.classifier = model.get_classifier()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def create_network(name: str, channels: int, num_classes: int, image_size: int, *, seed: int | None = None,
                   **kwargs) -> nn.Module:
    """Build a freshly initialised network.

    Args:
        name: a registered name, a ConvNet variant (module docstring) or ``timm:<model>``.
        channels: input channels.
        num_classes: output classes.
        image_size: input height (= width); networks that cannot take it raise NetworkInputError.
        seed: initialise under this seed (the global RNG is left untouched); None uses the global RNG.
        **kwargs: architecture options (e.g. ``width`` for ConvNet).
    """
    key = name.lower()
    if key.startswith("timm:"):
        def build() -> nn.Module:
            import timm

            try:
                return _TimmWrapper(timm.create_model(name[5:], pretrained=False, num_classes=num_classes,
                                                      in_chans=channels, **kwargs))
            except RuntimeError as exc:
                raise GendistillError(f"timm cannot build {name[5:]!r}: {str(exc).splitlines()[0]}") from exc
    elif (m := _CONVNET_RE.match(key)) is not None:
        opts = {"depth": int(m["depth"] or 3), "width": int(m["width"] or 128), "norm": m["norm"] or "in",
                "act": m["act"] or "relu", "pool": m["pool"] or "avg"}
        opts.update(kwargs)

        def build() -> nn.Module:
            return ConvNet(channels, num_classes, image_size, **opts)
    elif key in _NETWORKS:
        def build() -> nn.Module:
            return _NETWORKS[key](channels, num_classes, image_size, **kwargs)
    else:
        raise GendistillError(
            f"unknown network {name!r}; use convnet[_d4|_bn|...], {', '.join(list_networks())} or timm:<name>"
        )
    if seed is None:
        return build()
    with seeded(seed):
        return build()

