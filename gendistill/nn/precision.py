"""Optional bfloat16 autocast of the evaluation's networks (off by default).

Set ``GENDISTILL_AUTOCAST=bf16`` (or ``gendistill --bf16``) to run the evaluation's training forwards and test passes
under ``torch.autocast`` in bfloat16: convolutions and linear layers compute in bfloat16; the weights, the optimiser,
the losses and the gradients they produce stay float32. On a CPU this pays only with a bfloat16 dot-product unit
(``avx512_bf16`` or AMX); elsewhere bfloat16 is emulated and slower, so the request is refused there. Every
evaluation result records it (``autocast``), as it records ``compiled``. It does not reach distillation: methods keep
their own ``amp_real`` option for their real side.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from gendistill.utils.errors import ConfigError
from gendistill.utils.resources import cpu_info

__all__ = ["autocast_dtype", "autocast_name", "cpu_has_bf16", "with_autocast"]

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
_OFF = {"", "0", "false", "no", "off", "fp32", "float32"}
#: CPU flags (``/proc/cpuinfo``) of a native bfloat16 dot product
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 dot products natively (``avx512_bf16`` or ``amx_bf16`` in
    ``/proc/cpuinfo``; ``False`` where the file is absent)."""
    return any(flag in cpu_info()["flags"] for flag in BF16_FLAGS)


def autocast_name() -> str | None:
    """``"bf16"`` when ``$GENDISTILL_AUTOCAST`` asks for bfloat16, ``None`` when it is unset or off."""
    raw = os.environ.get("GENDISTILL_AUTOCAST", "").strip().lower()
    if raw in _OFF:
        return None
    if raw not in _DTYPES:
        raise ConfigError(f"GENDISTILL_AUTOCAST={raw!r} is not a precision; use bf16 (bfloat16 autocast) or 0 (off)")
    return "bf16"


def autocast_dtype(device: torch.device | str = "cpu") -> torch.dtype | None:
    """The autocast dtype ``$GENDISTILL_AUTOCAST`` asks for on ``device``, or ``None`` (off). Refused on a CPU
    without a native bfloat16 unit, where it would only be slower."""
    name = autocast_name()
    if name is None:
        return None
    if torch.device(device).type == "cpu" and not cpu_has_bf16():
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
