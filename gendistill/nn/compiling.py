"""Optional ``torch.compile`` of network forwards (off by default).

Set ``GENDISTILL_COMPILE=1`` (or ``gendistill --compile``) to run the shared training loop's steps (every
evaluation, and whatever trains through ``train_network``: DC/DSA/CAFE's inner loops, feature networks, IGD's
surrogate), the test passes, DM's embeddings and DC/DSA's real-side gradients through ``torch.compile`` (inductor).
One compiled function takes the network as an argument, so networks of the same architecture built afresh for every
evaluation run (or every DM iteration) reuse the compiled graph instead of compiling again (torch inlines built-in
modules and treats their parameters as inputs). The first call of a process still compiles, about 20 s for
ConvNet-3 on the 2-core development machine (``results/perf/ideas/``), so it pays only for long work in one
process. Compiled kernels reassociate floating-point sums: results differ from eager by rounding (outputs in the
last bits; DC's real-side gradients of the first convolution by up to 2e-3 of their largest entry, inductor on
machine B), and every evaluation result records whether it was compiled (``compiled``).

The value names the backend: ``1``/``true``/``inductor`` for inductor, any other ``torch.compile`` backend name
(e.g. ``aot_eager``, which the tests use: same graph capture, no code generation) as is; ``0``/empty is off.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
from torch import nn

from gendistill.utils.errors import ConfigError

__all__ = ["compile_backend", "network_forward"]

#: graphs the one compiled function may hold before torch falls back to eager for new ones
RECOMPILE_LIMIT = 256
_ON = {"1", "true", "yes", "on", "inductor"}
_OFF = {"", "0", "false", "no", "off"}


def compile_backend() -> str | None:
    """The ``torch.compile`` backend ``$GENDISTILL_COMPILE`` asks for, or ``None`` when compilation is off."""
    raw = os.environ.get("GENDISTILL_COMPILE", "").strip().lower()
    if raw in _OFF:
        return None
    if raw in _ON:
        return "inductor"
    if raw not in torch._dynamo.list_backends(exclude_tags=()):
        raise ConfigError(f"GENDISTILL_COMPILE={raw!r} is not a torch.compile backend; use 1 (inductor), 0 (off) "
                          f"or one of {', '.join(torch._dynamo.list_backends())}")
    return raw


def _call(net: nn.Module, method: str, x: torch.Tensor) -> torch.Tensor:
    return getattr(net, method)(x)


@functools.cache
def _compiled_call(backend: str) -> Callable[[nn.Module, str, torch.Tensor], torch.Tensor]:
    # One graph per (architecture, method, input shape, grad mode, memory format): an evaluation alone needs four
    # (training and test blocks, full and last), a bench process many more. Past torch's default limit of 8 the
    # function would silently run eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(_call, backend=backend, dynamic=False)


def network_forward(net: nn.Module, method: str = "forward") -> Callable[[torch.Tensor], torch.Tensor]:
    """``net.<method>`` (its forward, or e.g. ``embed``), compiled when ``$GENDISTILL_COMPILE`` asks for it (else
    the bound method itself)."""
    backend = compile_backend()
    if backend is None:
        return net if method == "forward" else getattr(net, method)
    return functools.partial(_compiled_call(backend), net, method)
