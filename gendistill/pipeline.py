"""High-level operations behind the CLI: resolve a method config, distill into a run folder, evaluate."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .config import config_to_dict, load_config
from .data import DatasetSplits, load_dataset
from .errors import ConfigError, GendistillError
from .evaluation import EvalResult, evaluate
from .methods import get_method
from .resources import peak_memory_mb
from .results import format_table, result_row
from .runs import RunDir
from .synset import SyntheticSet, check_ipc

__all__ = ["aggregate_distillations", "config_root", "config_roots", "distill", "distill_seeds", "evaluate_run",
           "resolve_config"]


def config_root() -> Path:
    """The packaged folder of YAML presets, ``gendistill/configs``."""
    return Path(__file__).resolve().parent / "configs"


def config_roots() -> list[Path]:
    """Preset folders searched in order: each folder of ``$GENDISTILL_CONFIGS`` (``os.pathsep``-separated; they add
    presets on top of the packaged ones and override them), then the packaged :func:`config_root`."""
    user = [Path(p) for p in os.environ.get("GENDISTILL_CONFIGS", "").split(os.pathsep) if p]
    return [*user, config_root()]


def preset_file(method: str, dataset: str, ipc: int, preset: str | None) -> Path | None:
    """The preset YAML for (method, dataset, ipc, preset name), or None for the dataclass defaults.

    In each folder of :func:`config_roots`, in order, looks for ``<method>/<dataset>_ipc<ipc>[_<preset>].yaml``,
    then ``<method>/<dataset>_<preset>.yaml``, then ``<method>/<preset>.yaml``; the first file found wins.
    ``preset=None`` (the published setting) falls back to the defaults when no file exists.
    """
    folders = [root / method for root in config_roots()]
    if preset in (None, "paper", "default"):
        published = [folder / f"{dataset}_ipc{ipc}.yaml" for folder in folders]
        return next((candidate for candidate in published if candidate.is_file()), None)
    for folder in folders:
        for candidate in (folder / f"{dataset}_ipc{ipc}_{preset}.yaml", folder / f"{dataset}_{preset}.yaml",
                          folder / f"{preset}.yaml"):
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.yaml")})
    raise ConfigError(f"no preset {preset!r} for {method} (looked in {', '.join(map(str, folders))}); "
                      f"known: {', '.join(known) or 'none'}")


def resolve_config(method: str, dataset: str, ipc: int, *, preset: str | None = None,
                   config_file: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Build the typed config of ``method``: defaults < preset < ``--config`` file < ``--set`` overrides."""
    info = get_method(method)
    return load_config(info.config_cls, preset_file(method, dataset, ipc, preset), config_file,
                       overrides=overrides)


def preferred_resolution(method: str, dataset: str, ipc: int, *, preset: str | None = None,
                         config_file: str | Path | None = None, overrides: list[str] | None = None) -> int | None:
    """The image size a method's resolved config asks the dataset to be loaded at (its ``resolution`` field, e.g.
    the ImageNet-subset Minimax presets' 256 px), or None. An explicit ``--resolution`` always wins."""
    try:
        config = resolve_config(method, dataset, ipc, preset=preset, config_file=config_file, overrides=overrides)
    except GendistillError:
        return None  # the real error is raised again, with its message, where the config is built
    value = getattr(config, "resolution", 0)
    return int(value) if value else None


# Budget fields: lowering one below the preset's value makes a reduced run. For those in ZERO_IS_FULL, 0 means
# "the full budget" (DD's computed iteration count, all real images, uncapped CAFE phases).
BUDGET_FIELDS = ("iterations", "epochs", "batch_real", "pretrain_steps", "finetune_steps", "feature_epochs",
                 "feature_images_per_class", "max_outer", "max_inner", "outer_loop", "inner_loop",
                 "syn_steps", "batch_syn", "buffer_experts", "buffer_epochs", "buffer_images_per_class")
ZERO_IS_FULL = {"iterations", "feature_images_per_class", "max_outer", "max_inner", "outer_loop", "inner_loop",
                "batch_syn", "buffer_images_per_class"}


def budget_reductions(config: Any, reference: Any) -> list[str]:
    """``["iterations 5 < 20000", ...]``: the budget fields of ``config`` below those of ``reference`` (configs or
    dicts of effective values, see :func:`effective_budget`)."""
    def get(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

    notes = []
    for name in BUDGET_FIELDS:
        value, ref = get(config, name), get(reference, name)
        if value is None or ref is None:
            continue
        if not isinstance(value, int | float) or not isinstance(ref, int | float):
            continue
        lowered = value > 0 and (ref == 0 or value < ref) if name in ZERO_IS_FULL else value < ref
        if lowered:
            notes.append(f"{name} {value:g} < {ref:g}" if ref else f"{name} {value:g} (full: 0)")
    return notes


def effective_budget(method: str, config: Any, train: Any, ipc: int) -> dict[str, float]:
    """The budget fields of ``config`` as they run (a method's ``effective_budget`` resolves its 0 = automatic
    values, e.g. DD's computed iteration count or DC's reference loops)."""
    values = {f: getattr(config, f) for f in BUDGET_FIELDS if isinstance(getattr(config, f, None), int | float)}
    hook = getattr(get_method(method).cls, "effective_budget", None)
    if hook is not None:
        import contextlib

        with contextlib.suppress(ConfigError):  # e.g. DC at an IPC without reference loops: nothing to resolve
            values.update(hook(get_method(method).cls(config), train, ipc))
    return values


def preset_reductions(method: str, splits: DatasetSplits, ipc: int, config: Any, preset: str | None) -> list[str]:
    """Budget reductions of ``config`` against its preset, and of a named preset against the published one."""
    reference = resolve_config(method, splits.name, ipc, preset=preset)
    mine = effective_budget(method, config, splits.train, ipc)
    reductions = budget_reductions(mine, effective_budget(method, reference, splits.train, ipc))
    if preset and preset not in ("paper", "default"):
        paper = resolve_config(method, splits.name, ipc)
        reductions = budget_reductions(effective_budget(method, reference, splits.train, ipc),
                                       effective_budget(method, paper, splits.train, ipc)) + \
            [f"override {r}" for r in reductions]
    return reductions


def stamp_budget(synset: SyntheticSet, preset: str | None, reductions: list[str], overrides: list[str] | None,
                 config_file: str | Path | None, splits: DatasetSplits) -> None:
    """Record the preset, overrides, budget reductions and data source in the set's metadata."""
    synset.meta["preset"] = preset or "paper"
    synset.meta["reduced_budget"] = bool(preset and preset.startswith("cpu")) or bool(reductions)
    synset.meta["budget_reductions"] = reductions
    synset.meta["overrides"] = list(overrides or [])
    if config_file:
        synset.meta["config_file"] = str(config_file)
    synset.meta["data_source"] = dict(splits.source)


def distill(method: str, splits: DatasetSplits, ipc: int, out: str | Path, *, seed: int = 0,
            preset: str | None = None, config_file: str | Path | None = None, overrides: list[str] | None = None,
            resume: bool = False, progress: bool = True, checkpoint_every: int = 100, log_every: int = 10,
            grid_every: int = 0, overwrite: bool = False) -> SyntheticSet:
    """Distill ``splits.train`` into ``out/synset`` with full bookkeeping; returns the synthetic set.

    A run folder that already holds a run is refused unless ``resume`` or ``overwrite``. A run that fails on
    bad input before its first checkpoint leaves no folder behind. Overrides (``--set``, a ``--config`` file)
    that lower the budget below the preset's mark the set reduced and are recorded.
    """
    import shutil

    from .errors import GendistillError

    info = get_method(method)
    check_ipc(ipc)
    config = resolve_config(method, splits.name, ipc, preset=preset, config_file=config_file, overrides=overrides)
    reductions = preset_reductions(method, splits, ipc, config, preset)
    run = RunDir(out, resume=resume, checkpoint_every=checkpoint_every, log_every=log_every, grid_every=grid_every,
                 progress=progress, overwrite=overwrite)
    record = {"method": method, "dataset": splits.name, "ipc": ipc, "seed": seed, "preset": preset,
              "zca": (splits.train.preprocessing.zca.variant if splits.train.preprocessing.zca else "none"),
              "config_file": str(config_file) if config_file else None, "overrides": list(overrides or []),
              "data": dict(splits.source),
              "config": config_to_dict(config)}
    try:
        run.write_config(record, defaults={"config": config_to_dict(info.config_cls())})
        if resume and (Path(out) / "synset" / "synset.json").is_file():
            return SyntheticSet.load(Path(out) / "synset")  # a finished run: nothing left to do
        start = time.perf_counter()
        synset = info.cls(config).distill(splits.train, ipc, seed=seed, run=run, progress=progress)
    except GendistillError:
        # bad input (refused before any work): leave no stray run folder; never delete trained work
        if run.created and {p.name for p in run.path.iterdir()} <= {"config.yaml", "env.json"}:
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    synset.meta.setdefault("distill_time_s", time.perf_counter() - start)
    synset.meta["distill_peak_memory_mb"] = peak_memory_mb(getattr(config, "device", "cpu"))  # this process's
    synset.meta["preset"] = preset or "paper"
    synset.meta["reduced_budget"] = bool(preset and preset.startswith("cpu")) or bool(reductions)
    synset.meta["budget_reductions"] = reductions
    synset.meta["overrides"] = list(overrides or [])
    synset.meta["data_source"] = dict(splits.source)
    if config_file:
        synset.meta["config_file"] = str(config_file)
    from .synset import environment_meta

    synset.meta["environment"] = environment_meta()
    synset.save(Path(out) / "synset")
    if run.checkpoint_path.is_file():
        run.checkpoint_path.unlink()  # the finished synset supersedes the last checkpoint
    return synset


def evaluate_run(synset: SyntheticSet, splits_or_test: Any, out: str | Path | None, **kwargs: Any) -> EvalResult:
    """Evaluate and (when ``out`` is given) write ``result.json`` and ``results.md`` into it."""
    test = splits_or_test.test if isinstance(splits_or_test, DatasetSplits) else splits_or_test
    result = evaluate(synset, test, **kwargs)
    if out is not None:
        from .atomic import atomic_json, atomic_text

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
    from .atomic import atomic_json, atomic_text

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

