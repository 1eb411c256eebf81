"""Method registry and the ``Distiller`` interface every method implements.

A method is a :class:`Distiller` subclass registered with :func:`register_method`, which records a
:class:`MethodInfo` (paper, label kind, default evaluation protocol...). One-shot methods (coresets) override
:meth:`Distiller.distill`; iterative methods subclass :class:`IterativeDistiller` and implement ``init_state``
/ ``step`` / ``finalize``, and get periodic atomic checkpoints, ``metrics.jsonl``, NaN checks, progress bars
and exact resume from :func:`gendistill.runs.run_iterative`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from .data import RealDataset
from .errors import GendistillError
from .synset import SyntheticSet

__all__ = ["Distiller", "IterativeDistiller", "MethodInfo", "get_method", "list_methods", "register_method"]


@dataclasses.dataclass
class BaseConfig:
    """Fields every method config has."""

    device: str = "cpu"


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """Registry record of a method."""

    name: str
    cls: type[Distiller]
    config_cls: type
    paper: str
    year: int
    kind: str  # "coreset", "pixel", "generative"
    label_kind: str  # "hard", "soft", "learned-lr"
    default_eval: str
    description: str


_METHODS: dict[str, MethodInfo] = {}


def register_method(name: str, *, config: type, paper: str, year: int, kind: str, label_kind: str = "hard",
                    default_eval: str = "dsa", description: str = "") -> Callable[[type], type]:
    """Class decorator adding a :class:`Distiller` to the registry under ``name``."""

    def wrap(cls: type) -> type:
        if name in _METHODS and _METHODS[name].cls is not cls:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        cls.config_cls = config
        doc = description or (cls.__doc__ or "").strip().splitlines()[0]
        _METHODS[name] = MethodInfo(name, cls, config, paper, year, kind, label_kind, default_eval, doc)
        return cls

    return wrap


def _populate() -> None:
    """Import the packages that register methods (``baselines`` registers on import)."""
    from . import coreset  # noqa: F401
    from .generative import method  # noqa: F401

    with contextlib.suppress(ImportError):
        import baselines  # noqa: F401


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching a glob ``pattern``."""
    _populate()
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def get_method(name: str) -> MethodInfo:
    """The :class:`MethodInfo` of ``name``; an unknown name lists the available ones."""
    _populate()
    if name not in _METHODS:
        raise GendistillError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


class Distiller:
    """Base class: turns a real training split into a :class:`SyntheticSet` of ``ipc`` images per class."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = BaseConfig

    def __init__(self, config: Any) -> None:
        self.config = config
        self.device = torch.device(getattr(config, "device", "cpu"))

    def distill(self, train: RealDataset, ipc: int, *, seed: int = 0, run: Any = None,
                progress: bool | None = None) -> SyntheticSet:
        """Produce the synthetic set (``run`` is a :class:`gendistill.runs.RunDir` for checkpoints and logs;
        ``progress`` shows progress bars, default: the run folder's setting, else on)."""
        raise NotImplementedError

    @staticmethod
    def show_progress(run: Any, progress: bool | None) -> bool:
        """The effective progress setting of a :meth:`distill` call."""
        if progress is not None:
            return progress
        return bool(run.progress) if run is not None else True

    def make_synset(self, train: RealDataset, images: torch.Tensor, labels: torch.Tensor, ipc: int, seed: int,
                    **extra: Any) -> SyntheticSet:
        """Wrap results in a SyntheticSet carrying the dataset's preprocessing and the run metadata."""
        from .config import config_to_dict

        meta = {"method": self.name, "dataset": train.name, "ipc": ipc, "seed": seed,
                "config": config_to_dict(self.config), **extra.pop("meta", {})}
        return SyntheticSet(images.detach().float().cpu(), labels.detach().cpu(), train.class_names,
                            train.preprocessing, meta=meta, **extra)


class IterativeDistiller(Distiller):
    """A method that runs ``iterations`` steps over a state dict of tensors (resumable).

    Subclasses implement :meth:`init_state`, :meth:`step` and :meth:`finalize`. The state must hold every
    tensor and optimiser state the next step needs; the run loop stores it with the generator state, so a
    resumed run continues exactly where the checkpoint left off. Randomness inside ``step`` must come from
    the generator it is given (or from seeds derived from ``(seed, iteration)``).
    """

    iterations_field: ClassVar[str] = "iterations"

    @property
    def iterations(self) -> int:
        return int(getattr(self.config, self.iterations_field))

    def total_iterations(self, train: RealDataset) -> int:
        """Steps of the run on ``train`` (``iterations``; a method whose budget depends on the data overrides)."""
        return self.iterations

    def init_state(self, train: RealDataset, ipc: int, generator: torch.Generator, seed: int) -> dict[str, Any]:
        raise NotImplementedError

    def step(self, it: int, state: dict[str, Any], train: RealDataset, generator: torch.Generator, seed: int
             ) -> dict[str, torch.Tensor]:
        """One iteration; returns metrics as tensors (the loop syncs them only when it logs)."""
        raise NotImplementedError

    def finalize(self, state: dict[str, Any], train: RealDataset, ipc: int, seed: int) -> SyntheticSet:
        raise NotImplementedError

    def finished(self, state: dict[str, Any]) -> bool:
        """Whether the run is complete before ``iterations`` steps (methods with their own budget unit)."""
        return False

    def checkpoint_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """What to store in a checkpoint (tensors, numbers, state dicts); defaults to the state itself."""
        return state

    def restore_state(self, saved: dict[str, Any]) -> dict[str, Any]:
        """Rebuild the live state from :meth:`checkpoint_state` output; defaults to the saved dict."""
        return saved

    def preview(self, state: dict[str, Any], train: RealDataset, ipc: int, seed: int) -> SyntheticSet:
        """The synthetic set as it stands (for periodic grids); defaults to :meth:`finalize`."""
        return self.finalize(state, train, ipc, seed)

    def distill(self, train: RealDataset, ipc: int, *, seed: int = 0, run: Any = None,
                progress: bool | None = None) -> SyntheticSet:
        from .runs import run_iterative

        return run_iterative(self, train, ipc, seed=seed, run=run, progress=self.show_progress(run, progress))
