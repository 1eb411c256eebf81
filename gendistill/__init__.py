"""gendistill: dataset distillation - Minimax diffusion and the classic baselines under one protocol."""

__version__ = "0.1.0"

import os as _os

# OpenMP threads that sleep instead of spinning while they wait: measured on 2 cores next to another torch job,
# a DM step went from 3.9x to 1.6x slower and a DiT step from 3.8x to 1.6x, for 4-21 % when the machine is idle
# (README, "Threads on a shared CPU"). Read when torch loads OpenMP, so it only applies when gendistill is
# imported before torch; OMP_WAIT_POLICY=ACTIVE in the environment keeps the spinning default.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .data import DatasetSplits, RealDataset, list_datasets, load_dataset  # noqa: E402
from .errors import GendistillError  # noqa: E402
from .evaluation import PROTOCOLS, EvalProtocol, EvalResult, evaluate, get_protocol  # noqa: E402
from .methods import Distiller, IterativeDistiller, get_method, list_methods, register_method  # noqa: E402
from .nets import create_network, list_networks  # noqa: E402
from .synset import SyntheticSet  # noqa: E402


def load_synset(path: str) -> SyntheticSet:
    """Load a synthetic set from its folder or from the run folder ``gendistill distill --out`` wrote."""
    return SyntheticSet.load(path)


def distill(method: str, dataset: str | DatasetSplits, ipc: int, out: str | None = None, *,
            data_root: str | None = None, preset: str | None = None, overrides: list[str] | None = None,
            seed: int = 0, progress: bool = True, resume: bool = False, overwrite: bool = False) -> SyntheticSet:
    """Distill ``dataset`` (a name or loaded :class:`DatasetSplits`) with ``method`` into ``ipc`` images per class.

    With ``out``, the run gets a run folder (config, checkpoints, ``synset/``; see the README), exactly as
    ``gendistill distill --out``; without it, the set is only returned. ``preset`` and ``overrides``
    (``["key=value", ...]``) select the settings as on the command line.
    """
    from .pipeline import distill as _distill_to_folder
    from .pipeline import resolve_config

    splits = dataset if isinstance(dataset, DatasetSplits) else load_dataset(dataset, data_root)
    if out is not None:
        return _distill_to_folder(method, splits, ipc, out, seed=seed, preset=preset, overrides=overrides,
                                  progress=progress, resume=resume, overwrite=overwrite)
    from .pipeline import preset_reductions, stamp_budget

    config = resolve_config(method, splits.name, ipc, preset=preset, overrides=overrides)
    synset = get_method(method).cls(config).distill(splits.train, ipc, seed=seed, progress=progress)
    stamp_budget(synset, preset, preset_reductions(method, splits, ipc, config, preset), overrides, None, splits)
    return synset


__all__ = [
    "PROTOCOLS",
    "DatasetSplits",
    "Distiller",
    "EvalProtocol",
    "EvalResult",
    "GendistillError",
    "IterativeDistiller",
    "RealDataset",
    "SyntheticSet",
    "create_network",
    "distill",
    "evaluate",
    "get_method",
    "get_protocol",
    "list_datasets",
    "list_methods",
    "list_networks",
    "load_dataset",
    "load_synset",
    "register_method",
]
