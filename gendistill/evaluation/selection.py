"""Best-of-run set selection, the statistic MTT (Cazenavette et al., CVPR 2022) and DATM (Guo et al., ICLR 2024)
publish: every ``every`` distillation iterations the set as it stands is evaluated (``runs`` fresh networks under
``protocol``), and the set with the best mean is kept (their ``images_best.pt``).

The selection is made on the test split, as those papers' tables are (MTT's author, mtt-distillation issue #23). It is
optimistic, so it is never the headline: the final set and its final-epoch accuracy stay that. The best set is saved
in ``<run>/best_synset/`` and its record in ``<run>/best_of_run.json`` (atomically, before the checkpoint of the same
iteration, so a resumed run re-evaluates at most what it redoes and reaches the same record).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from gendistill.data.datasets import RealDataset
from gendistill.synset.format import SyntheticSet
from gendistill.utils.atomic import atomic_json
from gendistill.utils.errors import ConfigError
from gendistill.utils.seeding import derive_seed

__all__ = ["BestOfRun", "best_of_run_fields"]

RECORD = "best_of_run.json"
BEST_SET = "best_synset"
SELECTED_ON = "test split, as MTT/DATM publish (optimistic; the headline stays the final set's final-epoch accuracy)"


@dataclasses.dataclass
class BestOfRun:
    """Periodic evaluation of a distillation in progress; keeps the best set (see module docstring).

    Args:
        every: evaluate after every this many iterations (and after the last one).
        protocol: evaluation protocol name (e.g. ``mtt``, ``datm``).
        runs: networks per evaluation (MTT: 5).
        epochs: training epochs per network (None: the protocol's; fewer marks the record reduced).
        test: the test split the selection is made on.
        train: the real training split (protocols with a teacher need it).
        seed: base seed; the evaluation after iteration ``i`` uses ``derive_seed(seed, "best-of-run", i)``.
        folder: the run folder (record and best set; :meth:`attach`); None keeps them in memory only.
    """

    every: int
    protocol: str
    runs: int
    test: RealDataset
    train: RealDataset | None = None
    epochs: int | None = None
    seed: int = 0
    folder: Path | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.every < 1 or self.runs < 1:
            raise ConfigError(f"best-of-run selection needs every >= 1 and runs >= 1 (got {self.every}, {self.runs})")
        if self.folder is not None:
            self.attach(self.folder)

    def attach(self, folder: Path) -> None:
        """Keep the record and best set in the run folder ``folder``, continuing a record already there."""
        self.folder = Path(folder)
        path = self.folder / RECORD
        if path.is_file():
            try:
                self.history = list(json.loads(path.read_text())["history"])
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"{path} is damaged ({e}); delete it and {BEST_SET}/ to redo the selection") from e

    def due(self, done: int, last: bool) -> bool:
        """Whether to evaluate after ``done`` iterations."""
        return last or done % self.every == 0

    @property
    def best(self) -> dict[str, Any] | None:
        """The first evaluation reaching the highest mean (as the references' ``acc > best_acc``)."""
        return max(self.history, key=lambda h: h["mean"], default=None)

    def consider(self, done: int, synset: SyntheticSet) -> None:
        """Evaluate the set after ``done`` iterations; keep it when it is the best so far."""
        from gendistill.evaluation.evaluate import evaluate

        # entries from iterations this run is redoing (a resume from an earlier checkpoint) are replaced
        self.history = [h for h in self.history if h["iteration"] < done]
        previous = self.best
        result = evaluate(synset, self.test, self.protocol, runs=self.runs, epochs=self.epochs, train=self.train,
                          progress=False, seed=derive_seed(self.seed, "best-of-run", done))
        entry = {"iteration": done, "mean": result.mean, "std": result.std, "accs": result.accs,
                 "reduced_note": result.reduced_note}
        self.history.append(entry)
        if self.folder is not None:
            if previous is None or entry["mean"] > previous["mean"]:
                synset.save(self.folder / BEST_SET, grid=False)
            atomic_json(self.folder / RECORD, {**self.fields(), "history": self.history})

    def fields(self) -> dict[str, Any]:
        """The record a finished set carries (``meta["best_of_run"]``)."""
        best = self.best
        return {"protocol": self.protocol, "every": self.every, "runs": self.runs, "epochs": self.epochs,
                "reduced_note": best["reduced_note"] if best else "", "selected_on": SELECTED_ON,
                "iteration": best["iteration"] if best else None, "mean": best["mean"] if best else None,
                "std": best["std"] if best else None, "accs": best["accs"] if best else None,
                "evaluations": len(self.history)}


def best_of_run_fields(meta: dict[str, Any], protocol: str) -> dict[str, Any]:
    """``best_*`` fields of an evaluation under ``protocol`` from a set's best-of-run record (empty when the set
    has none, or one made under another protocol)."""
    record = meta.get("best_of_run") or {}
    if record.get("protocol") != protocol or record.get("mean") is None:
        return {}
    return {"best_mean": float(record["mean"]), "best_std": float(record["std"]),
            **({"best_reduced_note": record["reduced_note"]} if record.get("reduced_note") else {}),
            "best_accs": [float(a) for a in record["accs"]], "best_over": "distillation checkpoints",
            "best_iteration": int(record["iteration"])}
