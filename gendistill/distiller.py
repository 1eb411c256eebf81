"""The ``Distiller`` interface every method implements, and the config conventions every method follows.

One-shot methods (coresets) override :meth:`Distiller.distill`; iterative methods subclass
:class:`IterativeDistiller` and implement ``init_state`` / ``step`` / ``finalize``, and get periodic atomic
checkpoints, ``metrics.jsonl``, NaN checks, progress bars and exact resume from :func:`gendistill.runs.run_iterative`.

Config fields that set a run's compute budget are declared with :func:`budget_field`: lowering one below the
preset's value marks the set *reduced* (:func:`gendistill.presets.budget_reductions` reads the marks), so a new
method needs no list to be edited elsewhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from gendistill.data.datasets import RealDataset
from gendistill.synset.format import SyntheticSet
from gendistill.utils.config import config_to_dict

__all__ = ["BaseConfig", "Distiller", "IterativeDistiller", "budget_field", "budget_fields"]

_BUDGET = "gendistill_budget"


def budget_field(default: int, *, zero_is_full: bool = False) -> Any:
    """A config field that sets the compute budget (iterations, epochs, steps, batch or pool sizes).

    Lowering it below the preset's value marks a run reduced. ``zero_is_full``: 0 means "the full budget"
    (e.g. DD's computed iteration count, all real images, uncapped phases), so 0 is never a reduction.
    """
    return dataclasses.field(default=default, metadata={_BUDGET: "zero_is_full" if zero_is_full else "budget"})


def budget_fields(config_cls: type) -> dict[str, bool]:
    """``{field: zero_is_full}`` of the budget fields of a config dataclass (inherited ones included)."""
    return {f.name: f.metadata[_BUDGET] == "zero_is_full" for f in dataclasses.fields(config_cls)
            if _BUDGET in f.metadata}


@dataclasses.dataclass
class BaseConfig:
    """Fields every method config has."""

    device: str = "cpu"



class Distiller:
    """Base class: turns a real training split into a :class:`SyntheticSet` of ``ipc`` images per class."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = BaseConfig
    default_protocol: ClassVar[str] = "dsa"  # set by :func:`gendistill.registry.register_method`

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
        meta = {"method": self.name, "dataset": train.name, "ipc": ipc, "seed": seed,
                "default_protocol": self.default_protocol,
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
        from gendistill.runs import run_iterative

        return run_iterative(self, train, ipc, seed=seed, run=run, progress=self.show_progress(run, progress))
