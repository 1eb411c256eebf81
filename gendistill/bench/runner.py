"""The benchmark runner: every cell of a :class:`~gendistill.bench.spec.BenchSpec` as a normal run folder.

Layout of ``--out DIR``::

    spec.yaml                       the resolved spec of the last invocation
    runs/<distill id>/              a normal run folder (config.yaml, checkpoint.pt, synset/, ...)
    runs/<distill id>/eval/<protocol>__<net>.json   one evaluation cell (an EvalResult record)
    runs/<distill id>/failed.json   the one-line error of a failed distillation (cleared when it succeeds)
    runs/<distill id>/eval/<...>.failed.json        the one-line error of a failed evaluation
    cells.json                      every cell's status, result and cost (what the leaderboard reads)
    leaderboard.md / .csv, index.html, plots/

Running the same spec again does only what is missing: finished sets and evaluations are reused, unfinished
distillations resume from their checkpoints, failed cells are retried. Every file is written atomically, so a
kill at any point loses at most the work since the last checkpoint. A failed cell is recorded with its one-line
error and does not stop the others.

Dispatch: sequential by default; ``cluster="ray"`` (or ``"ray://ADDRESS"``) runs each distillation cell with its
evaluations as a Ray task asking for ``cpus_per_cell`` / ``gpus_per_cell``, on one machine or a cluster whose
workers share the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from pathlib import Path
from typing import Any

from gendistill.bench.spec import BenchSpec, DistillCell, EvalCell, parse_spec
from gendistill.utils.atomic import atomic_json
from gendistill.utils.errors import ConfigError, GendistillError
from gendistill.utils.faults import fault_point
from gendistill.utils.locks import FolderLockedError, StageBusyError, deferring_busy_stages, folder_lock
from gendistill.utils.resources import peak_memory_mb

__all__ = ["collect_cells", "label_regime", "label_regime_rows", "robust_scores", "run_bench", "run_distill_cell"]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, GendistillError) else text


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


def run_distill_cell(spec_dict: dict[str, Any], cell_index: int, out: str, data_root: str | None = None,
                     progress: bool = False) -> str:
    """Distill one cell (or reuse its set) and run its missing evaluations; returns the cell id.

    Takes plain arguments so that it can run as a Ray task on another worker.
    """
    from gendistill.data.datasets import load_dataset
    from gendistill.pipeline import distill
    from gendistill.synset.format import SyntheticSet

    spec = parse_spec(spec_dict)  # validated by the caller already: an error here is a bug, not a cell failure
    cell = spec.distill_cells()[cell_index]
    run_dir = Path(out) / "runs" / cell.id
    failed = run_dir / "failed.json"
    options = {"resolution": spec.resolution} if spec.resolution else {}
    try:
        splits = load_dataset(cell.dataset, data_root, **options)
        if (run_dir / "synset" / "synset.json").is_file():
            synset = SyntheticSet.load(run_dir / "synset")
        else:
            start = time.perf_counter()
            _event(Path(out), cell.id, "distill")
            overrides = list(cell.method.set) + _cell_overrides(spec, cell, Path(out))
            if spec.device != "cpu" and not any(o.startswith("device=") for o in overrides):
                overrides.append(f"device={spec.device}")
            synset = distill(cell.method.name, splits, cell.ipc, run_dir, seed=cell.seed, preset=cell.method.preset,
                             overrides=overrides, resume=run_dir.exists(), progress=progress,
                             checkpoint_every=spec.checkpoint_every, overwrite=False)
            atomic_json(run_dir / "cost.json", {"distill_wall_s": time.perf_counter() - start,
                                                "distill_peak_rss_mb": peak_memory_mb(),
                                                "device": _device_name(spec.device)})
        failed.unlink(missing_ok=True)
    except StageBusyError:
        raise  # another process trains a stage this cell shares: the scheduler comes back to it
    except Exception as exc:  # a failed cell is recorded and does not stop the others
        if isinstance(exc, KeyboardInterrupt):
            raise
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_json(failed, {"error": _one_line(exc), "traceback": traceback.format_exc()})
        return cell.id
    if spec.quality:
        _run_quality(synset, splits, run_dir, progress)
    for ecell in spec.eval_cells(cell):
        _run_eval_cell(spec, ecell, synset, splits, run_dir, progress)
    return cell.id


def _event(out: Path, cell: str, event: str) -> None:
    """Append ``{time, host, pid, cell, event}`` to ``out/events.jsonl`` (one short O_APPEND write: lines from
    several processes do not interleave), so a folder shows which process did what."""
    import os
    import socket

    line = json.dumps({"time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), "cell": cell,
                       "event": event}) + "\n"
    with open(out / "events.jsonl", "a") as fh:
        fh.write(line)


def _cell_overrides(spec: BenchSpec, cell: DistillCell, out: Path) -> list[str]:
    """Settings the runner adds to a cell: its sampling seed, and the shared stage folder of generative methods."""
    from gendistill.registry import get_method

    fields = {f.name for f in dataclasses.fields(get_method(cell.method.name).config_cls)}
    extra = [f"sample_seed={cell.sample_seed}"] if cell.sample_seed is not None else []
    given = any(o.startswith("stage_cache=") for o in cell.method.set)
    if spec.shared_stages and "stage_cache" in fields and not given:
        extra.append(f"stage_cache={(out / 'stages').resolve()}")
    return extra


def _run_quality(synset: Any, splits: Any, run_dir: Path, progress: bool) -> None:
    """The set-quality report into ``quality.json`` (once; a failure is recorded, the cell goes on)."""
    from gendistill.evaluation.metrics import set_quality

    target = run_dir / "quality.json"
    if target.is_file():
        return
    try:
        atomic_json(target, set_quality(synset, splits.train, progress=progress))
        target.with_suffix(".failed.json").unlink(missing_ok=True)
    except Exception as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        atomic_json(target.with_suffix(".failed.json"), {"error": _one_line(exc),
                                                         "traceback": traceback.format_exc()})


def _quality_columns(report: dict[str, Any] | None) -> dict[str, float] | None:
    """The leaderboard's set-quality columns from a report: PRDC, diversity relative to random real, agreement."""
    if not report:
        return None
    s = report["summary"]
    ratio = s["diversity"] / s["diversity_random_real"] if s.get("diversity_random_real") else None
    return {**{k: s.get(k) for k in ("precision", "recall", "density", "coverage", "agreement", "fd")},
            "diversity": ratio}


def _run_eval_cell(spec: BenchSpec, ecell: EvalCell, synset: Any, splits: Any, run_dir: Path,
                   progress: bool) -> None:
    from gendistill.evaluation.evaluate import evaluate

    target = run_dir / "eval" / ecell.file_name
    failed = target.with_suffix(".failed.json")
    if _current(spec, _read(target), ecell):
        return
    try:
        result = evaluate(synset, splits.test, ecell.protocol, model=ecell.model, runs=spec.runs, train=splits.train,
                          epochs=spec.epochs_for(ecell.distill.ipc, ecell.model), seed=ecell.distill.seed,
                          device=spec.device, progress=progress, test_subset=spec.test_subset,
                          **spec.overrides(ecell.protocol))
        record = result.to_dict()
        record["device"] = _device_name(spec.device)
        record["bench_settings"] = spec.settings(ecell.distill.ipc, ecell.model, ecell.protocol)
        atomic_json(target, record)
        failed.unlink(missing_ok=True)
    except Exception as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        atomic_json(failed, {"error": _one_line(exc), "traceback": traceback.format_exc()})


def _current(spec: BenchSpec, record: dict[str, Any] | None, ecell: EvalCell) -> bool:
    """Whether a stored evaluation is this cell's, made with the spec's evaluation settings: its protocol and network
    are the cell's (a stale or hand-edited file is never shown as the result) - else it is redone."""
    if record is None:
        return False
    protocol = record.get("protocol") or {}
    if protocol.get("name") != ecell.protocol or protocol.get("model") not in (None, ecell.model):
        return False
    ipc = (record.get("synset") or {}).get("ipc")
    return record.get("bench_settings") == spec.settings(ipc, ecell.model, ecell.protocol)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (json.JSONDecodeError, OSError):
        return None


def collect_cells(spec: BenchSpec, out: str | Path) -> list[dict[str, Any]]:
    """The status, result and cost of every evaluation cell of ``spec`` under ``out`` (leaderboard input)."""
    out = Path(out)
    cells = []
    for dcell in spec.distill_cells():
        run_dir = out / "runs" / dcell.id
        dfail = _read(run_dir / "failed.json")
        meta = (_read(run_dir / "synset" / "synset.json") or {}).get("meta", {})
        cost = _read(run_dir / "cost.json") or {}
        grid = run_dir / "synset" / "grid.png"
        base = {  # what the distilled set contributes to each of its rows
            "cell": dcell.id, "label": dcell.method.label, "entry_label": dcell.method.name_label,
            "method": dcell.method.name, "preset": dcell.method.preset, "overrides": list(dcell.method.set),
            "dataset": dcell.dataset, "ipc": dcell.ipc, "distill_seed": dcell.seed, "sample_seed": dcell.sample_seed,
            "protocol": "", "eval_model": "", "result": None, "error": None,
            "distill_time_s": meta.get("distill_time_s"), "eval_time_s": None,
            "peak_memory_mb": cost.get("distill_peak_rss_mb"), "device": cost.get("device"),
            "flops": meta.get("flops_per_iteration"),
            "grid": str(grid.relative_to(out)) if grid.is_file() else None,
            "quality": _quality_columns(_read(run_dir / "quality.json")),
            "run_dir": str(run_dir.relative_to(out)),
        }
        ecells = spec.eval_cells(dcell)
        if not ecells:  # an IPC outside eval_ipc: the set and its quality report only
            made = (run_dir / "synset" / "synset.json").is_file()
            cells.append({**base, "status": "set only" if made else ("failed" if dfail else "pending"),
                          "error": dfail["error"] if dfail and not made else None})
        for ecell in ecells:
            target = run_dir / "eval" / ecell.file_name
            result = _read(target)
            result = result if _current(spec, result, ecell) else None
            efail = _read(target.with_suffix(".failed.json"))
            if result is not None:
                status, error = "done", None
            elif dfail or efail:
                status, error = "failed", (dfail or efail)["error"]
            else:
                status, error = "pending", None
            cells.append({
                **base, "cell": ecell.id, "protocol": ecell.protocol, "eval_model": ecell.model,
                "status": status, "error": error, "result": result,
                "eval_time_s": result.get("wall_time_s") if result else None,
                "peak_memory_mb": max(filter(None, [cost.get("distill_peak_rss_mb"),
                                                    result.get("peak_memory_mb") if result else None]), default=None),
                "device": (result or {}).get("device") or cost.get("device"),
            })
    return cells


def _fraction(result: dict[str, Any]) -> float:
    return float(result["mean"]) / 100.0


def robust_scores(cells: list[dict[str, Any]], full_accuracy: Any = None) -> list[dict[str, Any]]:
    """DD-Ranking's scores per (method, dataset, IPC, protocol, network) from the done cells (fractions).

    IOR uses the ``random`` cells of the same dataset, IPC, protocol and network; HLR the full-dataset accuracy
    from ``full_accuracy(dataset, network)`` (percent, e.g. the published table); ARS pairs a protocol with
    augmentation and one without when both were run.
    """
    from gendistill.bench.robust import augmentation_robust_score, label_robust_score

    done = [c for c in cells if c["status"] == "done"]

    def key(c: dict[str, Any]) -> tuple:
        return c.get("label", c["method"]), c["dataset"], c["ipc"], c["protocol"], c["eval_model"]

    def mean_of(label: str, dataset: str, ipc: int, protocol: str, net: str) -> float | None:
        accs = [_fraction(c["result"]) for c in done if key(c) == (label, dataset, ipc, protocol, net)]
        return sum(accs) / len(accs) if accs else None

    def random_mean(dataset: str, ipc: int, protocol: str, net: str) -> float | None:
        accs = [_fraction(c["result"]) for c in done if c["method"] == "random"
                and (c["dataset"], c["ipc"], c["protocol"], c["eval_model"]) == (dataset, ipc, protocol, net)]
        return sum(accs) / len(accs) if accs else None

    def augmented(protocol_record: dict[str, Any]) -> bool:
        return bool(protocol_record.get("dsa_strategy") or protocol_record.get("dc_aug")
                    or protocol_record.get("cutmix_prob"))

    rows = []
    for label, dataset, ipc, protocol, net in sorted({key(c) for c in done if c["method"] != "random"}):
        first = next(c for c in done if key(c) == (label, dataset, ipc, protocol, net))
        syn = mean_of(label, dataset, ipc, protocol, net)
        rnd = random_mean(dataset, ipc, protocol, net)
        full = full_accuracy(dataset, net) if full_accuracy else None
        row = {"method": label, "dataset": dataset, "ipc": ipc, "protocol": protocol, "eval_model": net,
               "hlr": None, "ior": None, "lrs": None, "ars": None}
        if full is not None:
            row["hlr"] = full / 100.0 - syn
        if rnd is not None:
            row["ior"] = syn - rnd
        if rnd is not None and full is not None:
            row["lrs"] = label_robust_score(full / 100.0, syn, syn, rnd)["lrs"]
        if augmented(first["result"]["protocol"]) and rnd is not None:
            for other in done:
                if (key(other)[:3], key(other)[4]) != ((label, dataset, ipc), net) or \
                        augmented(other["result"]["protocol"]):
                    continue
                rnd_no = random_mean(dataset, ipc, other["protocol"], net)
                if rnd_no is not None:
                    syn_no = mean_of(label, dataset, ipc, other["protocol"], net)
                    row["ars"] = augmentation_robust_score(syn, syn_no, rnd, rnd_no)["ars"]
                    break
        rows.append(row)
    return rows


def label_regime(protocol: dict[str, Any]) -> str:
    """``teacher`` (a teacher relabels every view), ``soft`` (the set's own soft labels) or ``hard``."""
    if protocol.get("teacher"):
        return "teacher"
    return "soft" if protocol.get("label_loss") in ("soft_ce", "kl") else "hard"


def label_regime_rows(cells: list[dict[str, Any]], full_accuracy: Any = None) -> list[dict[str, Any]]:
    """Each set's accuracy per label regime next to random real under the identical protocol (IOR), one row per
    (method, dataset, IPC, network, regime, protocol); ``lrs`` (DD-Ranking's label-robust score) on the rows of a
    non-hard regime, with HLR from the same set's hard-label accuracy (when both were run and the full-data
    accuracy is known). Accuracies in percent, IOR in points, LRS a fraction."""
    from gendistill.bench.robust import label_robust_score

    done = [c for c in cells if c["status"] == "done" and c.get("result")]
    groups: dict[tuple, list[float]] = {}
    for c in done:
        k = (c.get("label", c["method"]), c["dataset"], c["ipc"], c["eval_model"],
             label_regime(c["result"].get("protocol") or {}), c["protocol"])
        groups.setdefault(k, []).append(float(c["result"]["mean"]))
    means = {k: sum(v) / len(v) for k, v in groups.items()}
    randoms = {k[1:]: v for k, v in means.items() if k[0] == "random"}
    rows = []
    for (label, dataset, ipc, net, regime, protocol), acc in sorted(means.items(), key=lambda kv: str(kv[0])):
        rnd = randoms.get((dataset, ipc, net, regime, protocol))
        row = {"method": label, "dataset": dataset, "ipc": ipc, "eval_model": net, "regime": regime,
               "protocol": protocol, "accuracy": acc, "random": rnd, "ior": None if rnd is None else acc - rnd,
               "lrs": None}
        hard = [v for k, v in means.items() if k[:4] == (label, dataset, ipc, net) and k[4] == "hard"]
        full = full_accuracy(dataset, net) if full_accuracy else None
        if regime != "hard" and hard and rnd is not None and full is not None:
            row["lrs"] = label_robust_score(full / 100.0, max(hard) / 100.0, acc / 100.0, rnd / 100.0)["lrs"]
        rows.append(row)
    return rows


def _dispatch_ray(spec: BenchSpec, out: Path, data_root: str | None, cluster: str, indices: list[int]) -> None:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--cluster ray needs Ray: pip install 'gendistill[ray]'") from exc
    import os

    address = None if cluster == "ray" else cluster
    started = not ray.is_initialized()
    keys = ("GENDISTILL_DATA", "GENDISTILL_CONFIGS", "GENDISTILL_THREADS", "GENDISTILL_COMPILE",
            "GENDISTILL_AUTOCAST")
    env = {k: os.environ[k] for k in keys if k in os.environ}
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": env} if env else None)
    try:
        task = ray.remote(run_distill_cell).options(num_cpus=spec.cpus_per_cell, num_gpus=spec.gpus_per_cell,
                                                    max_retries=1)
        cells = spec.distill_cells()
        pending = {task.remote(spec.to_dict(), i, str(out.resolve()), data_root, False): i for i in indices}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            try:
                ray.get(ready[0])
            except Exception as exc:  # a crashed worker (OOM kill, lost node): record the cell, keep the others
                run_dir = out / "runs" / cells[index].id
                run_dir.mkdir(parents=True, exist_ok=True)
                atomic_json(run_dir / "failed.json", {"error": f"Ray task failed: {_one_line(exc)}"})
    finally:
        if started:
            ray.shutdown()


def run_bench(spec: BenchSpec, out: str | Path, *, data_root: str | None = None, cluster: str | None = None,
              progress: bool = True, leaderboard: bool = True) -> list[dict[str, Any]]:
    """Run every missing cell of ``spec`` into ``out`` and write ``cells.json`` and the leaderboard."""
    from gendistill.data.datasets import resolve_data_root

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = str(resolve_data_root(data_root).resolve())  # workers may run elsewhere (Ray)
    import yaml

    from gendistill.utils.atomic import atomic_text

    atomic_text(out / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    cells = spec.distill_cells()
    missing = [i for i, c in enumerate(cells) if _missing(spec, out, c)]
    if cluster:
        _dispatch_ray(spec, out, data_root, cluster, missing)
    else:
        _run_claimed(spec, out, data_root, missing, progress)
    records = collect_cells(spec, out)
    atomic_json(out / "cells.json", records)
    if leaderboard:
        write_bench_leaderboard(spec, out, records)
    return records


def _run_claimed(spec: BenchSpec, out: Path, data_root: str | None, indices: list[int], progress: bool) -> None:
    """Run the cells in this process, claiming each first, so that N processes started on one spec and folder (on
    one machine or several sharing it) split the matrix: a cell claimed by another live process - or one whose shared
    trained stage another process is still training - is put back and retried after the others; a cell whose holder
    died is taken over."""
    from tqdm.auto import tqdm

    cells = spec.distill_cells()
    claims = out / "claims"
    queue = list(indices)
    bar = tqdm(total=len(queue), desc=f"bench {spec.name}", unit="cell", disable=not progress)
    while queue:
        deferred = []
        for i in queue:
            try:
                with folder_lock(claims / cells[i].id, what="bench cell"), deferring_busy_stages():
                    if _missing(spec, out, cells[i]):  # another process may have finished it meanwhile
                        run_distill_cell(spec.to_dict(), i, str(out), data_root, progress)
                        fault_point("bench_cell")
            except FolderLockedError:  # the cell itself (claimed) or its shared stage (StageBusyError) is busy
                deferred.append(i)
                continue
            bar.update(1)
        if len(deferred) == len(queue):
            time.sleep(5.0)  # everything left is being worked on elsewhere: check again shortly
        queue = deferred
    bar.close()


def _missing(spec: BenchSpec, out: Path, cell: DistillCell) -> bool:
    run_dir = out / "runs" / cell.id
    if not (run_dir / "synset" / "synset.json").is_file():
        return True
    return any(not _current(spec, _read(run_dir / "eval" / e.file_name), e) for e in spec.eval_cells(cell))


def write_bench_leaderboard(spec: BenchSpec, out: Path, records: list[dict[str, Any]] | None = None) -> dict:
    """The leaderboard page, tables and plots of a benchmark folder (published figures and robust scores)."""
    from gendistill.bench.leaderboard import write_leaderboard
    from gendistill.bench.published import load_published

    if records is None:
        records = collect_cells(spec, out)
        atomic_json(out / "cells.json", records)  # rewritten from the run folders (a damaged copy is replaced)
    table = load_published()

    def published(method: str, dataset: str, ipc: int, network: str, protocol: str):
        return table.lookup(method, dataset, ipc, network, protocol)

    robust = robust_scores(records, table.full)
    return write_leaderboard(records, out, published=published, robust=robust,
                             regimes=label_regime_rows(records, table.full), title=f"gendistill: {spec.name}")
