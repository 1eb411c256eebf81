"""The Python API's entry points that go through the pipeline: :func:`distill` and :func:`load_synset`."""

from __future__ import annotations

from pathlib import Path

from .data.datasets import DatasetSplits, load_dataset
from .pipeline import distill as _distill
from .synset.format import SyntheticSet

__all__ = ["distill", "load_synset"]


def load_synset(path: str | Path) -> SyntheticSet:
    """Load a synthetic set from its folder or from the run folder ``gendistill distill --out`` wrote."""
    return SyntheticSet.load(path)


def distill(method: str, dataset: str | DatasetSplits, ipc: int, out: str | Path | None = None, *,
            data_root: str | None = None, preset: str | None = None, overrides: list[str] | None = None,
            seed: int = 0, progress: bool = True, resume: bool = False, overwrite: bool = False) -> SyntheticSet:
    """Distill ``dataset`` (a name or loaded :class:`DatasetSplits`) with ``method`` into ``ipc`` images per class.

    With ``out``, the run gets a run folder (config, checkpoints, ``synset/``), exactly as
    ``gendistill distill --out``; without it, the set is only returned. ``preset`` and ``overrides``
    (``["key=value", ...]``) select the settings as on the command line. Both go through the same pipeline.
    """
    splits = dataset if isinstance(dataset, DatasetSplits) else load_dataset(dataset, data_root)
    return _distill(method, splits, ipc, out, seed=seed, preset=preset, overrides=overrides, progress=progress,
                    resume=resume, overwrite=overwrite)
