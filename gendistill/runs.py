"""Run folders: resolved config, metrics, atomic checkpoints, resume, results.

Layout of ``--out DIR``::

    config.yaml        resolved config (method, dataset, ipc, seed and every method field)
    env.json           versions, git sha, start time
    metrics.jsonl      one JSON line per logged iteration / evaluation
    checkpoint.pt      last periodic checkpoint (written to a temp file, then renamed)
    grids/step_N.png   pictures of the synthetic set during the run
    synset/            the final SyntheticSet
    result.json, results.md   evaluation results
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from gendistill.utils.atomic import atomic_json, atomic_text, atomic_torch_save
from gendistill.utils.errors import CheckpointError, GendistillError, NonFiniteLossError
from gendistill.utils.faults import fault_point
from gendistill.utils.seeding import make_generator

__all__ = ["Interrupted", "RunDir", "graceful_interrupts", "run_iterative"]

RUN_MARKERS = ("config.yaml", "checkpoint.pt", "synset", "result.json", "metrics.jsonl")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, raised at a clean point (after a checkpoint where the run has one)."""

    def __init__(self, signum: int, where: str = "") -> None:
        super().__init__(signum)
        self.signum = signum
        self.where = where


@contextlib.contextmanager
def graceful_interrupts():
    """Defer SIGINT/SIGTERM inside a run loop: the first signal sets ``flag["signum"]`` (the loop checkpoints
    and raises :class:`Interrupted` after the current step); a second one stops at once."""
    flag: dict[str, int | None] = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signum"] is not None:
            raise Interrupted(signum)
        flag["signum"] = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class RunDir:
    """A run folder (see module docstring).

    A folder that already holds a run is refused unless ``resume`` (continue it) or ``overwrite`` (delete it
    first, stale results included) is given.

    Args:
        path: the folder.
        resume: continue from ``checkpoint.pt`` if present (the saved config must match).
        overwrite: remove an existing run in ``path`` first.
        checkpoint_every: iterations between checkpoints (0 = only at the end).
        log_every: iterations between metric lines.
        grid_every: iterations between grid pictures (0 = never).
        select: best-of-run selection (:class:`gendistill.evaluation.selection.BestOfRun`), or None.
    """

    PROVENANCE = ("data",)

    def __init__(self, path: str | Path, *, resume: bool = False, checkpoint_every: int = 100,
                 log_every: int = 10, grid_every: int = 0, progress: bool = True, overwrite: bool = False,
                 select: Any = None) -> None:
        self.path = Path(path)
        self.created = not self.path.exists()
        if not self.created and not resume:
            entries = [p.name for p in self.path.iterdir()] if self.path.is_dir() else [self.path.name]
            if entries and overwrite:
                if not any((self.path / m).exists() for m in RUN_MARKERS):
                    raise GendistillError(f"{self.path} is not a gendistill run folder (no config.yaml or synset/); "
                                          "--overwrite only replaces run folders: choose another --out")
                shutil.rmtree(self.path)
            elif entries:
                raise GendistillError(f"{self.path} is not empty (it holds {', '.join(sorted(entries)[:4])}); pass "
                                      "--resume to continue that run, --overwrite to replace it, or another --out")
        self.resume = resume
        self.checkpoint_every = checkpoint_every
        self.log_every = max(1, log_every)
        self.grid_every = grid_every
        self.progress = progress
        self.path.mkdir(parents=True, exist_ok=True)
        self.select = select
        if select is not None:
            select.attach(self.path)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def write_config(self, config: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
        """Save the resolved config; on ``--resume`` refuse a config that differs from the saved one.

        ``defaults`` mirrors ``config`` with the values a run had before an option existed (e.g. ``{"config":
        <the method config's defaults>}``): a key the saved run lacks is accepted only at that value, so a run
        saved by an older version resumes unless a new option would change it.
        """
        path = self.path / "config.yaml"
        text = yaml.safe_dump(config, sort_keys=False)
        if path.is_file() and (self.resume or self.checkpoint_path.is_file()):
            saved = yaml.safe_load(path.read_text()) or {}
            now = yaml.safe_load(text)
            # provenance (where the data was read from) and keys older records lack do not decide a resume
            keys = [k for k in set(saved) & set(now) if k not in self.PROVENANCE]
            diff = sorted(k for k in keys if _differs(saved[k], now[k], (defaults or {}).get(k)))
            if diff:
                raise GendistillError(f"{self.path} holds a run with a different config ({', '.join(diff)}); "
                                      "use another --out or the same settings to resume")
        if not self.resume and self.checkpoint_path.is_file():
            raise GendistillError(f"{self.path} already holds a checkpoint; pass --resume to continue it or "
                                  "choose another --out")
        atomic_text(path, text)
        from gendistill.synset.format import environment_meta

        atomic_json(self.path / "env.json", environment_meta())

    def log(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl."""
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_torch_save(self.checkpoint_path, state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not (self.resume and self.checkpoint_path.is_file()):
            return None
        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{self.checkpoint_path} cannot be read ({type(exc).__name__}); it is corrupt: "
                                  "delete it to start over") from exc


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _checkpoint(distiller: Any, state: Any, generator: torch.Generator, ipc: int, seed: int, iteration: int,
                elapsed: float) -> dict[str, Any]:
    return {"method": distiller.name, "ipc": ipc, "seed": seed, "iteration": iteration,
            "state": _to_device(distiller.checkpoint_state(state), torch.device("cpu")),
            "generator": generator.get_state(), "elapsed_s": elapsed}


def _after_step(distiller: Any, state: Any, train: Any, generator: torch.Generator, ipc: int, seed: int, it: int,
                n: int, run: RunDir | None, metrics: dict[str, torch.Tensor], bar: Any, elapsed: float) -> bool:
    """Logging, NaN check, grids and periodic checkpoint after step ``it``; True when the run is complete."""
    last = it + 1 == n or distiller.finished(state)
    if run is not None and ((it + 1) % run.log_every == 0 or last):
        values = {k: float(v) for k, v in metrics.items()}
        bad = [k for k, v in values.items() if v != v or v in (float("inf"), float("-inf"))]
        if bad:
            raise NonFiniteLossError(f"{bad[0]} became NaN/inf at iteration {it + 1}; lower the learning rate "
                                     "(e.g. --set lr_img=...) or check the data")
        run.log({"iteration": it + 1, **values, "elapsed_s": elapsed})
        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
    if run is not None and run.grid_every and ((it + 1) % run.grid_every == 0):
        syn = distiller.preview(state, train, ipc, seed)
        from gendistill.synset.format import save_grid

        save_grid(syn.to_pixels(), syn.hard_labels(), syn.num_classes, run.path / "grids" / f"step_{it + 1}.png")
    if run is not None and run.select is not None and run.select.due(it + 1, last):
        run.select.consider(it + 1, distiller.preview(state, train, ipc, seed))  # before the checkpoint
    if run is not None and run.checkpoint_every and ((it + 1) % run.checkpoint_every == 0) and not last:
        run.save_checkpoint(_checkpoint(distiller, state, generator, ipc, seed, it + 1, elapsed))
    return last


def run_iterative(distiller: Any, train: Any, ipc: int, *, seed: int, run: RunDir | None = None,
                  progress: bool = True) -> Any:
    """The shared outer loop of every iterative method: steps, logging, NaN checks, checkpoints, resume."""
    from tqdm.auto import tqdm

    generator = make_generator(seed)
    state = distiller.init_state(train, ipc, generator, seed)
    start_it = 0
    elapsed = 0.0
    ckpt = run.load_checkpoint() if run is not None else None
    if ckpt is not None:
        if ckpt.get("method") != distiller.name or ckpt.get("ipc") != ipc or ckpt.get("seed") != seed:
            raise CheckpointError(f"{run.checkpoint_path} belongs to another run (method/ipc/seed differ); "
                                  "use another --out")
        state = distiller.restore_state(_to_device(ckpt["state"], distiller.device))
        generator.set_state(ckpt["generator"])
        start_it = int(ckpt["iteration"])
        elapsed = float(ckpt.get("elapsed_s", 0.0))
    n = distiller.total_iterations(train)
    bar = tqdm(total=n, initial=start_it, desc=f"{distiller.name} ipc{ipc}", unit="it", disable=not progress,
               leave=False)
    t0 = time.perf_counter()
    with graceful_interrupts() as stop:
        for it in range(start_it, n):
            metrics = distiller.step(it, state, train, generator, seed)
            fault_point("step")
            bar.update(1)
            last = _after_step(distiller, state, train, generator, ipc, seed, it, n, run, metrics, bar,
                               elapsed + time.perf_counter() - t0)
            if last:
                break
            if stop["signum"] is not None:
                where = f" after iteration {it + 1} of {n}"
                if run is not None:
                    run.save_checkpoint(_checkpoint(distiller, state, generator, ipc, seed, it + 1,
                                                    elapsed + time.perf_counter() - t0))
                    where += f"; checkpoint saved in {run.checkpoint_path}"
                bar.close()
                raise Interrupted(int(stop["signum"]), where)
    bar.close()
    synset = distiller.finalize(state, train, ipc, seed)
    synset.meta["distill_time_s"] = elapsed + time.perf_counter() - t0
    synset.meta["iterations"] = n
    if run is not None and run.select is not None:
        synset.meta["best_of_run"] = run.select.fields()
    return synset


def _differs(saved: Any, now: Any, default: Any = None) -> bool:
    """Whether a saved config value differs from the current one. In a mapping, a key the saved run lacks (an
    option added since) counts only when ``default`` does not hold the same value for it; keys since removed do
    not count; changed values do."""
    if isinstance(saved, dict) and isinstance(now, dict):
        default = default if isinstance(default, dict) else {}
        added = [k for k in now if k not in saved]
        return (any(k not in default or default[k] != now[k] for k in added)
                or any(_differs(saved[k], now[k], default.get(k)) for k in set(saved) & set(now)))
    return saved != now
