"""bfloat16 autocast of the evaluation's networks.

``$GENDISTILL_AUTOCAST`` chooses: ``bf16`` (or ``gendistill --bf16``) runs the evaluation's training forwards and
test passes under ``torch.autocast`` in bfloat16 for every network; ``0`` (or ``gendistill --fp32``) keeps float32;
unset (``auto``, the default) uses bfloat16 only where it was measured to pay with unchanged accuracy: the ConvNet
family with its instance norm (:class:`gendistill.nn.nets.InstanceNorm`, which computes in float32) on a CPU with a
native bfloat16 unit (``avx512_bf16`` or AMX). There the ``dsa`` evaluation ran 1.35x faster than in float32 with the
same accuracy over 3 runs (docs/performance.md). Convolutions and linear layers compute in bfloat16; the weights, the
optimiser, the losses and the gradients they produce stay float32. Without the unit bfloat16 is emulated and slower,
so an explicit ``bf16`` is refused there and ``auto`` stays float32. Every evaluation result records the precision
it ran in (``autocast``), as it records ``compiled``. It does not reach distillation: methods keep their own
``amp_real`` option for their real side.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from gendistill.nn.nets import ConvNet, InstanceNorm
from gendistill.utils.errors import ConfigError
from gendistill.utils.resources import cpu_info

__all__ = ["autocast_dtype", "autocast_name", "bf16_pays", "cpu_has_bf16", "with_autocast"]

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
_OFF = {"0", "false", "no", "off", "fp32", "float32"}
#: CPU flags (``/proc/cpuinfo``) of a native bfloat16 dot product
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 dot products natively (``avx512_bf16`` or ``amx_bf16`` in
    ``/proc/cpuinfo``; ``False`` where the file is absent)."""
    return any(flag in cpu_info()["flags"] for flag in BF16_FLAGS)


def autocast_name() -> str | None:
    """``"bf16"`` when ``$GENDISTILL_AUTOCAST`` asks for bfloat16, ``"auto"`` when it is unset or ``auto``,
    ``None`` when it is off."""
    raw = os.environ.get("GENDISTILL_AUTOCAST", "").strip().lower()
    if raw in ("", "auto"):
        return "auto"
    if raw in _OFF:
        return None
    if raw not in _DTYPES:
        raise ConfigError(f"GENDISTILL_AUTOCAST={raw!r} is not a precision; use bf16 (bfloat16 autocast), 0 (float32) "
                          "or auto (bfloat16 where it was measured to pay)")
    return "bf16"


def bf16_pays(net: nn.Module) -> bool:
    """Whether ``auto`` trains ``net`` in bfloat16 on a CPU with the unit: the ConvNet family with instance norms
    (where it was measured); any other norm (batch, layer) or network stays float32."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)]
    return isinstance(net, ConvNet) and bool(norms) and all(isinstance(m, InstanceNorm) for m in norms)


def autocast_dtype(device: torch.device | str = "cpu", net: nn.Module | None = None) -> torch.dtype | None:
    """The autocast dtype ``$GENDISTILL_AUTOCAST`` asks for on ``device`` for ``net``, or ``None`` (float32).
    An explicit ``bf16`` is refused on a CPU without a native bfloat16 unit, where it would only be slower; ``auto``
    is bfloat16 only on such a CPU and for a network where it pays (:func:`bf16_pays`)."""
    name = autocast_name()
    if name is None:
        return None
    cpu = torch.device(device).type == "cpu"
    if name == "auto":
        return torch.bfloat16 if cpu and cpu_has_bf16() and net is not None and bf16_pays(net) else None
    if cpu and not cpu_has_bf16():
        raise ConfigError("GENDISTILL_AUTOCAST=bf16 (--bf16) needs a CPU with avx512_bf16 or AMX (this one has "
                          "neither, so bfloat16 would be emulated and slower); unset it to train in float32")
    return _DTYPES[name]


def with_autocast(forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                  dtype: torch.dtype | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward`` run under autocast in ``dtype`` with a float32 output (so losses and accuracies are computed in
    float32); ``forward`` itself when ``dtype`` is ``None``."""
    if dtype is None:
        return forward

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype):
            return forward(x).float()

    return run
