"""gendistill: dataset distillation - Minimax diffusion and the classic baselines under one protocol.

``import gendistill`` is cheap and has no side effect: the public names below load on first use (PEP 562), and
nothing touches the process environment (the CLI sets its thread policy itself; library users call
:func:`gendistill.utils.threads.set_thread_policy` before importing torch if they want it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> module that defines it
_API = {
    "DatasetSplits": "gendistill.data.datasets", "RealDataset": "gendistill.data.datasets",
    "list_datasets": "gendistill.data.datasets", "load_dataset": "gendistill.data.datasets",
    "GendistillError": "gendistill.utils.errors",
    "PROTOCOLS": "gendistill.evaluation.protocols", "EvalProtocol": "gendistill.evaluation.protocols",
    "get_protocol": "gendistill.evaluation.protocols",
    "EvalResult": "gendistill.evaluation.evaluate", "evaluate": "gendistill.evaluation.evaluate",
    "Distiller": "gendistill.distiller", "IterativeDistiller": "gendistill.distiller",
    "get_method": "gendistill.registry", "list_methods": "gendistill.registry",
    "register_method": "gendistill.registry",
    "create_network": "gendistill.nn.nets", "list_networks": "gendistill.nn.nets",
    "SyntheticSet": "gendistill.synset.format",
    "distill": "gendistill.api", "load_synset": "gendistill.api",
}

__all__ = ["PROTOCOLS", "DatasetSplits", "Distiller", "EvalProtocol", "EvalResult", "GendistillError",
           "IterativeDistiller", "RealDataset", "SyntheticSet", "__version__", "create_network", "distill", "evaluate",
           "get_method", "get_protocol", "list_datasets", "list_methods", "list_networks", "load_dataset",
           "load_synset", "register_method"]

if TYPE_CHECKING:  # pragma: no cover - names for type checkers and IDEs
    from .api import distill, load_synset
    from .data.datasets import DatasetSplits, RealDataset, list_datasets, load_dataset
    from .distiller import Distiller, IterativeDistiller
    from .evaluation.evaluate import EvalResult, evaluate
    from .evaluation.protocols import PROTOCOLS, EvalProtocol, get_protocol
    from .nn.nets import create_network, list_networks
    from .registry import get_method, list_methods, register_method
    from .synset.format import SyntheticSet
    from .utils.errors import GendistillError


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'gendistill' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
