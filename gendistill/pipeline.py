"""High-level operations behind the CLI and the Python API: distill (into a run folder or in memory),
evaluate into a run folder, several seeded distillations with their aggregate."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from gendistill.data.datasets import DatasetSplits, load_dataset
from gendistill.evaluation.evaluate import EvalResult, evaluate
from gendistill.evaluation.results import format_table, result_row
from gendistill.presets import preset_reductions, resolve_config, stamp_budget
from gendistill.registry import get_method
from gendistill.runs import RunDir
from gendistill.synset.format import SyntheticSet, check_ipc, environment_meta
from gendistill.utils.atomic import atomic_json, atomic_text
from gendistill.utils.config import config_to_dict
from gendistill.utils.errors import ConfigError, GendistillError
from gendistill.utils.locks import folder_lock
from gendistill.utils.resources import peak_memory_mb

__all__ = ["aggregate_distillations", "distill", "distill_seeds", "evaluate_run", "load_for_synset"]


def distill(method: str, splits: DatasetSplits, ipc: int, out: str | Path | None, *, seed: int = 0,
            preset: str | None = None, config_file: str | Path | None = None, overrides: list[str] | None = None,
            resume: bool = False, progress: bool = True, checkpoint_every: int = 100, log_every: int = 10,
            grid_every: int = 0, overwrite: bool = False, best_of_run: dict[str, Any] | None = None
            ) -> SyntheticSet:
    """Distill ``splits.train`` with full bookkeeping; returns the synthetic set. The one path every caller takes
    (CLI, Python API, bench).

    ``best_of_run`` (``{"every": N, "runs": R, "protocol": P, "epochs": E}``; P defaults to the method's protocol,
    E to P's epochs) evaluates the set every N iterations on ``splits.test`` and keeps the best one in
    ``out/best_synset/``, as MTT and DATM publish (:mod:`gendistill.evaluation.selection`); it needs ``out`` and an
    iterative method.

    With ``out``, the run gets a run folder (config, checkpoints, ``synset/``); without it, the set is only
    returned. A run folder that already holds a run is refused unless ``resume`` or ``overwrite``. A run that fails
    on bad input before its first checkpoint leaves no folder behind. Overrides (``--set``, a ``--config`` file)
    that lower the budget below the preset's mark the set reduced and are recorded.
    """
    info = get_method(method)
    check_ipc(ipc)
    config = resolve_config(method, splits.name, ipc, preset=preset, config_file=config_file, overrides=overrides)
    reductions = preset_reductions(method, splits, ipc, config, preset)
    select = _best_of_run(info, best_of_run, splits, seed, out)
    start = time.perf_counter()
    if out is not None:
        with folder_lock(out):  # a second process writing the same folder is refused, naming the holder
            return _distill_into(info, config, splits, ipc, Path(out), seed=seed, preset=preset,
                                 config_file=config_file, overrides=overrides, reductions=reductions, resume=resume,
                                 progress=progress, checkpoint_every=checkpoint_every, log_every=log_every,
                                 grid_every=grid_every, overwrite=overwrite, select=select)
    synset = info.cls(config).distill(splits.train, ipc, seed=seed, progress=progress)
    return _stamp(synset, start, config, preset, reductions, overrides, config_file, splits)


def _best_of_run(info: Any, spec: dict[str, Any] | None, splits: DatasetSplits, seed: int,
                 out: str | Path | None) -> Any:
    """The :class:`BestOfRun` selector of a ``best_of_run`` spec (None without one)."""
    if not spec or not spec.get("every"):
        return None
    from gendistill.distiller import IterativeDistiller
    from gendistill.evaluation.selection import BestOfRun

    if out is None or not issubclass(info.cls, IterativeDistiller):
        raise ConfigError(f"best-of-run selection needs a run folder (--out) and an iterative method; {info.name} "
                          f"{'is one-shot' if out is not None else 'has no --out'}")
    unknown = set(spec) - {"every", "runs", "protocol", "epochs"}
    if unknown:
        raise ConfigError(f"unknown best_of_run key(s) {sorted(unknown)}; use every, runs, protocol, epochs")
    runs = spec.get("runs")
    return BestOfRun(every=int(spec["every"]), runs=5 if runs is None else int(runs), epochs=spec.get("epochs"),
                     protocol=spec.get("protocol") or info.default_eval, test=splits.test, train=splits.train,
                     seed=seed)


def _stamp(synset: SyntheticSet, start: float, config: Any, preset: str | None, reductions: list[str],
           overrides: list[str] | None, config_file: str | Path | None, splits: DatasetSplits) -> SyntheticSet:
    """Cost, budget and environment records of a finished distillation."""
    synset.meta.setdefault("distill_time_s", time.perf_counter() - start)
    synset.meta["distill_peak_memory_mb"] = peak_memory_mb(getattr(config, "device", "cpu"))  # this process's
    stamp_budget(synset, preset, reductions, overrides, config_file, splits)
    synset.meta["environment"] = environment_meta()
    return synset


def _distill_into(info: Any, config: Any, splits: DatasetSplits, ipc: int, out: Path, *, seed: int,
                  preset: str | None, config_file: str | Path | None, overrides: list[str] | None,
                  reductions: list[str], resume: bool, progress: bool, checkpoint_every: int, log_every: int,
                  grid_every: int, overwrite: bool, select: Any = None) -> SyntheticSet:
    """:func:`distill` into the run folder ``out`` (held by this process). ``info`` is the method's registry record."""
    run = RunDir(out, resume=resume, checkpoint_every=checkpoint_every, log_every=log_every, grid_every=grid_every,
                 progress=progress, overwrite=overwrite, select=select)
    record = {"method": info.name, "dataset": splits.name, "ipc": ipc, "seed": seed, "preset": preset,
              "zca": (splits.train.preprocessing.zca.variant if splits.train.preprocessing.zca else "none"),
              "config_file": str(config_file) if config_file else None, "overrides": list(overrides or []),
              "data": dict(splits.source), "config": config_to_dict(config)}
    if select is not None:
        record["best_of_run"] = {"every": select.every, "runs": select.runs, "protocol": select.protocol,
                                 "epochs": select.epochs}
    try:
        run.write_config(record, defaults={"config": config_to_dict(info.config_cls())})
        if resume and (out / "synset" / "synset.json").is_file():
            return SyntheticSet.load(out / "synset")  # a finished run: nothing left to do
        start = time.perf_counter()
        synset = info.cls(config).distill(splits.train, ipc, seed=seed, run=run, progress=progress)
    except GendistillError:
        # bad input (refused before any work): leave no stray run folder; never delete trained work
        if run.created and {p.name for p in run.path.iterdir()} <= {"config.yaml", "env.json"}:
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    synset = _stamp(synset, start, config, preset, reductions, overrides, config_file, splits)
    synset.save(out / "synset")
    if run.checkpoint_path.is_file():
        run.checkpoint_path.unlink()  # the finished synset supersedes the last checkpoint
    return synset


def evaluate_run(synset: SyntheticSet, splits_or_test: Any, out: str | Path | None, **kwargs: Any) -> EvalResult:
    """Evaluate and (when ``out`` is given) write ``result.json`` and ``results.md`` into it."""
    test = splits_or_test.test if isinstance(splits_or_test, DatasetSplits) else splits_or_test
    if isinstance(splits_or_test, DatasetSplits):
        kwargs.setdefault("train", splits_or_test.train)  # protocols with a teacher train it on the real split
    result = evaluate(synset, test, **kwargs)
    if out is not None:
        atomic_json(Path(out) / "result.json", result.to_dict())
        atomic_text(Path(out) / "results.md", format_table([result_row(result.to_dict())]))
    return result


def aggregate_distillations(results: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One record for several distillations, each evaluated by several networks (the references' reporting:
    DC/DSA/DM 5 experiments x 20 networks).

    ``mean``/``std`` are over every (distillation, network) accuracy (population std);
    ``std_across_distillations`` is the std of the per-distillation means.
    """
    import numpy as np

    if not results:
        raise ConfigError("no distillation results to aggregate")
    accs = [a for r in results for a in r["accs"]]
    means = [r["mean"] for r in results]
    first = results[0]
    return {
        **{k: first[k] for k in ("protocol", "reduced", "reduced_note", "ensemble", "protocol_source")
           if k in first},
        "mean": float(np.mean(accs)), "std": float(np.std(accs)), "accs": accs,
        "std_across_distillations": float(np.std(means)),
        "distill_seeds": list(seeds),
        "per_distillation": [{"seed": s, "mean": r["mean"], "std": r["std"], "accs": r["accs"]}
                             for s, r in zip(seeds, results, strict=True)],
        "wall_time_s": float(sum(r["wall_time_s"] for r in results)),
        "seconds_per_run": float(np.mean([r["seconds_per_run"] for r in results])),
        "peak_memory_mb": float(max(r.get("peak_memory_mb", 0.0) for r in results)),
        "seed": seeds[0],
        "synset": {**first["synset"], "distillations": len(results)},
    }


def distill_seeds(method: str, splits: DatasetSplits, ipc: int, out: str | Path, *, seeds: list[int],
                  evaluate: bool = True, eval_kwargs: dict[str, Any] | None = None, **distill_kwargs: Any
                  ) -> dict[str, Any] | None:
    """Run one seeded distillation per seed into ``out/seed_<k>/`` and (``evaluate``) evaluate each with its
    own seed; writes the aggregate (:func:`aggregate_distillations`) to ``out/result.json`` and returns it.

    With ``resume=True`` a seed folder that already holds a ``result.json`` is reused as it is.
    """
    import json

    out = Path(out)
    if (out / "config.yaml").is_file() and not distill_kwargs.get("overwrite"):
        raise ConfigError(f"{out} holds a single run; --distill-seeds writes seed_<k>/ folders and an aggregate "
                          "result: choose another --out")
    per_seed = []
    for s in seeds:
        run_dir = out / f"seed_{s}"
        if distill_kwargs.get("resume") and evaluate and (run_dir / "result.json").is_file():
            per_seed.append(json.loads((run_dir / "result.json").read_text()))
            continue
        synset = distill(method, splits, ipc, run_dir, seed=s, **distill_kwargs)  # a finished set is reused
        if evaluate:
            result = evaluate_run(synset, splits, run_dir, seed=s, **(eval_kwargs or {})).to_dict()
            result["distill_time_s"] = synset.meta.get("distill_time_s")
            per_seed.append(result)
    if not evaluate:
        return None
    summary = aggregate_distillations(per_seed, seeds)
    summary["distill_time_s"] = [r.get("distill_time_s") for r in per_seed]
    atomic_json(out / "result.json", summary)
    atomic_text(out / "results.md", format_table([result_row(summary)]))
    return summary


def load_for_synset(synset: SyntheticSet, data_root: str | None, download: bool = False,
                    dataset: str | None = None) -> DatasetSplits:
    """Load the dataset a synthetic set was made from, in the same preprocessing space."""
    name = dataset or synset.meta.get("dataset")
    if not name:
        raise ConfigError("the synthetic set does not record its dataset; pass --dataset")
    zca = synset.preprocessing.zca
    return load_dataset(name, data_root, download=download, zca=zca.variant if zca else None,
                        zca_eps=zca.eps if zca else 0.1)

