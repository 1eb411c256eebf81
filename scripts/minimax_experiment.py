"""The experiment that decides whether the Minimax losses help (issue 10), end to end and resumable.

One DiT per dataset (pretrained here with the ``minimax`` ``cpu`` preset, or ``--pretrained``) is shared by every
arm; each arm is generated once at the largest IPC and the smaller IPCs are its first images per class (per-image
seeds make that identical to generating the smaller IPC):

    dit_g4          dit, guidance 4.0 (no fine-tuning)
    dit_g1          dit, guidance 1.0
    minimax_l0_g4   minimax with lambda = 0 (fine-tuning alone), guidance 4.0
    minimax_g4      minimax as the reference (lambda 0.002 / 0.008), guidance 4.0
    minimax_g1      the same fine-tuned model sampled at guidance 1.0
    minimax_x10_g4  minimax with lambda x10, guidance 4.0
    minimax_centered_g4     extension: mean-centred cosine in both Minimax terms
    minimax_centered_g1     the mean-centred model sampled at guidance 1.0
    minimax_feature_g4      extension: cosines in a real-data ConvNet's feature space (its own seed, not the
                            report's network)
    minimax_feature_centered_g4   extension: the same, mean-centred
    minimax_feature_x3_g4   extension: feature-space cosine with lambda x3 (about the pixel arm's grad ratio)
    minimax_os4_kcenter_g4  extension: minimax_g4's model, 4x oversampled, k-center selection
    minimax_os4_conf_g4     extension: the same, keeping the images the feature network is surest of
                            (that network is also the report's: agreement and precision of this arm are biased)
    random, dm      random real and DM (cpu preset), per IPC

Every set is evaluated under the same ``dsa`` protocol (``--epochs`` per IPC, reduced and labelled, ``--runs``
networks) and measured by the set-quality report (:mod:`gendistill.metrics`). Writes ``<out>/table.md``,
``<out>/summary.json``, ``<out>/accuracy.png`` and a grid per set; rerunning skips what is done.

``--resample N`` draws every arm's set again with N further sampling seeds (the arm's own model, no new
fine-tuning; random real: a new subset) and reports the set-quality columns as mean ± std over the N + 1 sets
(``<out>/resampled.json`` and a second table in ``table.md``), so a difference in coverage or recall between arms
can be set against the spread from sampling alone; ``--resample-accuracy`` evaluates those sets too.

    python scripts/minimax_experiment.py --dataset fashion_mnist --out results/minimax_experiment/fashion_mnist
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from gendistill.data.datasets import load_dataset
from gendistill.evaluation.evaluate import evaluate
from gendistill.evaluation.metrics import set_quality
from gendistill.pipeline import distill
from gendistill.synset.format import SyntheticSet
from gendistill.utils.atomic import atomic_json, atomic_text
from gendistill.utils.resources import peak_memory_mb

# arm -> (method, preset, overrides, note); "@minimax_g4" = sample the fine-tuned model of that arm.
ARMS: dict[str, tuple[str, str | None, list[str], str]] = {
    "dit_g4": ("dit", "cpu", ["cfg_scale=4.0"], "DiT, no fine-tuning, guidance 4.0"),
    "dit_g1": ("dit", "cpu", ["cfg_scale=1.0"], "DiT, no fine-tuning, guidance 1.0"),
    "minimax_l0_g4": ("minimax", "cpu", ["lambda_pos=0.0", "lambda_neg=0.0", "cfg_scale=4.0"],
                      "fine-tuning alone (lambda = 0), guidance 4.0"),
    "minimax_g4": ("minimax", "cpu", ["cfg_scale=4.0"], "Minimax as the reference (0.002 / 0.008), guidance 4.0"),
    "minimax_g1": ("@minimax_g4", "cpu", ["cfg_scale=1.0"], "the same fine-tuned model, guidance 1.0"),
    "minimax_l0_g1": ("@minimax_l0_g4", "cpu", ["cfg_scale=1.0"], "fine-tuning alone (lambda = 0), guidance 1.0"),
    "minimax_x10_g4": ("minimax", "cpu", ["lambda_pos=0.02", "lambda_neg=0.08", "cfg_scale=4.0"],
                       "Minimax with lambda x10, guidance 4.0"),
    "minimax_centered_g4": ("minimax", "cpu", ["minimax_centered=true", "cfg_scale=4.0"],
                            "extension: mean-centred cosine in the Minimax losses, guidance 4.0"),
    "minimax_centered_g1": ("@minimax_centered_g4", "cpu", ["cfg_scale=1.0"],
                            "extension: minimax_centered_g4's model, guidance 1.0"),
    "minimax_feature_g4": ("minimax", "cpu", ["minimax_space=feature", "cfg_scale=4.0"],
                           "extension: cosine in a real-data ConvNet's feature space, guidance 4.0"),
    "minimax_feature_centered_g4": ("minimax", "cpu", ["minimax_space=feature", "minimax_centered=true",
                                                       "cfg_scale=4.0"],
                                    "extension: mean-centred cosine in a real-data ConvNet's feature space, "
                                    "guidance 4.0"),
    "minimax_feature_x3_g4": ("minimax", "cpu", ["minimax_space=feature", "lambda_pos=0.006", "lambda_neg=0.024",
                                                 "cfg_scale=4.0"],
                              "extension: feature-space cosine, lambda x3 (grad ratio near the pixel arm's), "
                              "guidance 4.0"),
    "minimax_os4_kcenter_g4": ("@minimax_g4", "cpu", ["cfg_scale=4.0", "oversample=4", "select=kcenter"],
                               "extension: minimax_g4's model, 4x oversampled, k-center selection in features"),
    "minimax_os4_kcenter_g1": ("@minimax_g4", "cpu", ["cfg_scale=1.0", "oversample=4", "select=kcenter"],
                               "extension: minimax_g4's model at guidance 1.0, 4x oversampled, k-center selection"),
    "minimax_os4_conf_g4": ("@minimax_g4", "cpu", ["cfg_scale=4.0", "oversample=4", "select=confidence"],
                            "extension: minimax_g4's model, 4x oversampled, most confident per class kept"),
    "random": ("random", None, [], "random real images"),
    "dm": ("dm", "cpu", [], "DM, cpu preset (300 iterations, 64 real per class)"),
}
# generated separately for every IPC (a selected set is not a prefix of the larger one)
PER_IPC = {"dm"} | {arm for arm, (_, _, sets, _) in ARMS.items() if any(s.startswith("oversample=") for s in sets)}


def _folder(out: Path, arm: str, ipc: int) -> Path:
    """Run folder of an arm: one per arm, or one per arm and IPC for the arms generated per IPC."""
    return out / arm if arm not in PER_IPC else out / f"{arm}_ipc{ipc}"


def _read_json(path: Path) -> dict[str, Any]:
    """summary.json or resampled.json as it is on disk now (another process may be adding arms to it)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _pretrained(args: argparse.Namespace, splits: Any, out: Path) -> Path:
    if args.pretrained:
        return Path(args.pretrained)
    from gendistill.generative.method import pretrain
    from gendistill.presets import resolve_config

    config = resolve_config("minimax", splits.name, 0, preset="cpu", overrides=args.pretrain_set)
    start = time.perf_counter()
    path = pretrain(splits.train, config, out / "pretrain", seed=args.seed, resume=True,
                    record={"preset": "cpu", "overrides": list(args.pretrain_set)})
    info = json.loads((path / "gendistill.json").read_text()) if (path / "gendistill.json").is_file() else {}
    print(f"pretrained model: {path} ({info.get('train_time_s', time.perf_counter() - start):.0f} s)")
    return path


def _finetuned_model(out: Path, arm: str, needed_by: str) -> Path:
    """The fine-tuned model folder of ``arm`` in ``out``; a clear exit when that arm has not run yet."""
    source = out / arm / "finetune" / "model"
    if not source.is_dir():
        raise SystemExit(f"{needed_by} needs {source}: run the {arm} arm first")
    return source


def _make_set(arm: str, ipc: int, args: argparse.Namespace, splits: Any, out: Path, model: Path) -> SyntheticSet:
    method, preset, overrides, _ = ARMS[arm]
    folder = _folder(out, arm, ipc)
    extra = []
    if method.startswith("@"):  # sample another arm's fine-tuned model
        method, extra = "dit", [f"pretrained={_finetuned_model(out, method[1:], arm)}"]
    elif method in ("dit", "minimax"):
        extra = [f"pretrained={model}"]
    syn = distill(method, splits, ipc, folder, seed=args.seed, preset=preset, overrides=[*overrides, *extra],
                  resume=True, progress=not args.quiet)
    syn.meta["arm"] = arm
    return syn


# the report columns summarised over sampling seeds
RESAMPLED_COLUMNS = ("precision", "recall", "density", "coverage", "diversity", "agreement", "fd")


def _resampled_set(arm: str, ipc: int, offset: int, args: argparse.Namespace, splits: Any, out: Path,
                   model: Path | None) -> SyntheticSet | None:
    """``arm``'s set drawn again with sampling seed ``args.seed + offset``: the arm's own model sampled anew (no
    new fine-tuning), or a new random real subset; None for the arms generated per IPC (selection, DM)."""
    method, preset, overrides, _ = ARMS[arm]
    if arm in PER_IPC:
        return None
    folder = out / arm / "resampled" / f"seed{args.seed + offset}"
    if method == "random":
        return distill("random", splits, ipc, folder, seed=args.seed + offset, resume=True, progress=False)
    if method.startswith("@") or method == "minimax":
        source = _finetuned_model(out, method[1:] if method.startswith("@") else arm, f"resampling {arm}")
    elif model is None or not Path(model).is_dir():
        raise SystemExit(f"resampling {arm} needs the pretrained model {model}: pass --pretrained")
    else:
        source = model
    # dit shares minimax's config and only samples: the arm's fine-tuning keys are recorded but not used
    return distill("dit", splits, ipc, folder, seed=args.seed + offset, preset=preset,
                   overrides=[*overrides, f"pretrained={source}"], resume=True, progress=False)


def _missing(entry: dict[str, Any] | None, accuracy: bool) -> bool:
    """Whether a resampled set still needs its report (or, with ``accuracy``, its evaluation)."""
    return entry is None or (accuracy and "mean" not in entry)


def _resample(arms: list[str], ipcs: list[int], epochs: dict[int, int], args: argparse.Namespace, splits: Any,
              out: Path, model: Path | None) -> None:
    """Set-quality report (and, with ``--resample-accuracy``, accuracy) of every arm over further sampling seeds;
    merged into ``<out>/resampled.json`` as ``{arm@ipc: {seed: {"metrics": ..., "mean": ..., "protocol": ...}}}``.
    """
    path = out / "resampled.json"
    for arm in arms:
        if arm in PER_IPC:
            print(f"{arm}: generated per IPC (selection or DM), not resampled")
            continue
        for offset in range(1, args.resample + 1):
            seed = str(args.seed + offset)
            done = _read_json(path)
            todo = [i for i in ipcs if _missing(done.get(f"{arm}@{i}", {}).get(seed), args.resample_accuracy)]
            if not todo:
                continue
            full = _resampled_set(arm, ipcs[-1], offset, args, splits, out, model)
            for ipc in todo:
                key, syn = f"{arm}@{ipc}", full.subset(ipc)
                entry: dict[str, Any] = dict(done.get(key, {}).get(seed) or {})
                if "metrics" not in entry:
                    report = set_quality(syn, splits.train, seed=args.seed, progress=not args.quiet)
                    entry.update(metrics=report["summary"], report_seed=args.seed)
                if args.resample_accuracy:
                    result = evaluate(syn, splits.test, "dsa", epochs=epochs[ipc], runs=args.runs, seed=args.seed,
                                      progress=not args.quiet)
                    entry.update(mean=result.mean, std=result.std, accs=result.accs,
                                 protocol=f"dsa {epochs[ipc]} epochs x {args.runs} runs")
                on_disk = _read_json(path)  # merge with other processes' arms and entries
                merged = {**on_disk.get(key, {}), seed: {**on_disk.get(key, {}).get(seed, {}), **entry}}
                atomic_json(path, {**on_disk, key: merged})
                print(f"{key} sampling seed {seed}: coverage {entry['metrics']['coverage']:.3f}  "
                      f"recall {entry['metrics']['recall']:.3f}" + (f"  accuracy {entry['mean']:.2f}"
                                                                      if "mean" in entry else ""))


def resampled_table(summary: dict[str, Any], resampled: dict[str, Any]) -> str:
    """Markdown table of the report columns (and accuracy where measured under the summary's protocol) as mean ±
    population std over sampling seeds, the experiment's own set (the summary's) included."""

    def spread(values: list[float], digits: int) -> str:
        sd = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"

    head = ("| arm | IPC | sets | " + " | ".join(RESAMPLED_COLUMNS) + " | accuracy (mean ± std of per-set means) |\n"
            "|---|---|---|" + "---|" * len(RESAMPLED_COLUMNS) + "---|\n")
    lines = []
    order = list(ARMS)
    for key in sorted(resampled, key=lambda k: (int(k.split("@")[1]), order.index(k.split("@")[0]))):
        if key not in summary:
            continue
        own = summary[key]
        others = [e for s, e in resampled[key].items() if int(s) != own.get("seed", 0)]  # never count a set twice
        sets = [own, *others]
        cols = [spread([s["metrics"][c] for s in sets], 1 if c == "fd" else 3) for c in RESAMPLED_COLUMNS]
        accs = [s["mean"] for s in sets if "mean" in s and s.get("protocol") == own["protocol"]]
        acc = spread(accs, 2) + f" ({len(accs)} sets)" if len(accs) > 1 else "–"
        lines.append(f"| {own['arm']} | {own['ipc']} | {len(sets)} | " + " | ".join(cols) + f" | {acc} |")
    return head + "\n".join(lines) + "\n"


def _write_tables(out: Path, dataset: str) -> None:
    summary = _read_json(out / "summary.json")
    text = table(summary, dataset)
    resampled = _read_json(out / "resampled.json")
    if resampled:
        text += ("\nSet-quality report over sampling seeds: mean ± population std over the experiment's set and its "
                 "resampled sets (same model, new sampling seeds; random real: new subsets)\n\n"
                 + resampled_table(summary, resampled))
    atomic_text(out / "table.md", text)
    plot(summary, dataset, out / "accuracy.png")


def _grad_ratio(folder: Path) -> dict[str, float] | None:
    path = folder / "finetune" / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "grad_norm_diffusion" in r]
    if not rows:
        return None
    keys = ("grad_norm_diffusion", "grad_norm_repr", "grad_norm_div", "grad_ratio_minimax")
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys if all(k in r for r in rows)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pretrained", default=None, help="a DiT pipeline folder (default: pretrain with the cpu preset)")
    ap.add_argument("--pretrain-set", action="append", default=[], help="override of the pretraining config")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ",".join(ARMS))
    ap.add_argument("--ipcs", default="10,50")
    ap.add_argument("--epochs", default="10:300,50:300", help="dsa epochs per IPC, e.g. 10:200,50:100")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="rewrite table.md from summary.json and stop")
    ap.add_argument("--resample", type=int, default=0, metavar="N",
                    help="report every arm over N further sampling seeds (no new fine-tuning)")
    ap.add_argument("--resample-accuracy", action="store_true", help="evaluate the resampled sets as well")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ipcs = sorted(int(x) for x in args.ipcs.split(","))
    epochs = {int(k): int(v) for k, v in (x.split(":") for x in args.epochs.split(","))}
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; choose from {list(ARMS)}")
    if args.resample < 0:
        raise SystemExit(f"--resample must be 0 or more, got {args.resample}")
    if args.table_only:
        summary = _read_json(out / "summary.json")
        for v in summary.values():  # runs before the fix stored zero ratios for arms without Minimax terms
            v["grad"] = _grad_ratio(_folder(out, v["arm"], v["ipc"]))
        atomic_json(out / "summary.json", summary)
        _write_tables(out, args.dataset)
        print((out / "table.md").read_text())
        return 0
    splits = load_dataset(args.dataset, args.data_root)
    model = _pretrained(args, splits, out) if any(ARMS[a][0] in ("dit", "minimax") for a in arms) else None
    summary_path = out / "summary.json"
    summary = _read_json(summary_path)
    for arm in arms:
        if all(f"{arm}@{ipc}" in summary for ipc in ipcs):
            continue  # done: its folder is not opened again (its config may predate newer config keys)
        full = None if arm in PER_IPC else _make_set(arm, ipcs[-1], args, splits, out, model)
        for ipc in ipcs:
            key = f"{arm}@{ipc}"
            if key in summary:
                continue
            syn = _make_set(arm, ipc, args, splits, out, model) if full is None else full.subset(ipc)
            folder = _folder(out, arm, ipc)
            result = evaluate(syn, splits.test, "dsa", epochs=epochs[ipc], runs=args.runs, seed=args.seed,
                              progress=not args.quiet)
            report = set_quality(syn, splits.train, seed=args.seed, progress=not args.quiet)
            atomic_json(folder / f"eval_ipc{ipc}.json", result.to_dict())
            atomic_json(folder / f"metrics_ipc{ipc}.json", report)
            entry = {"arm": arm, "ipc": ipc, "note": ARMS[arm][3], "mean": result.mean, "std": result.std,
                     "accs": result.accs, "protocol": f"dsa {epochs[ipc]} epochs x {args.runs} runs",
                     "seed": args.seed, "eval_s": result.wall_time_s, "distill_time_s": syn.meta.get("distill_time_s"),
                     "metrics": report["summary"], "grad": _grad_ratio(folder), "peak_rss_mb": peak_memory_mb()}
            summary = {**_read_json(summary_path), key: entry}  # merge with other processes' arms
            atomic_json(summary_path, summary)
            print(f"{key}: {result.mean:.2f} ± {result.std:.2f}  coverage {report['summary']['coverage']:.3f}  "
                  f"recall {report['summary']['recall']:.3f}  agreement {report['summary']['agreement']:.3f}")
    if args.resample > 0:
        _resample(arms, ipcs, epochs, args, splits, out, model)
    _write_tables(out, splits.name)
    grids = out / "grids"
    grids.mkdir(exist_ok=True)
    for png in out.glob("*/synset/grid.png"):
        shutil.copyfile(png, grids / f"{png.parent.parent.name}.png")
    print((out / "table.md").read_text())
    return 0


def plot(summary: dict[str, Any], dataset: str, path: Path) -> None:
    """One panel per IPC: accuracy (mean ± std) per arm, with recall and coverage of the set beside it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ipcs = sorted({v["ipc"] for v in summary.values()})
    fig = Figure(figsize=(5.5 * len(ipcs), 0.45 * len(ARMS) + 1.5))
    FigureCanvasAgg(fig)
    for i, ipc in enumerate(ipcs):
        rows = sorted((v for v in summary.values() if v["ipc"] == ipc), key=lambda r: list(ARMS).index(r["arm"]))
        ax = fig.add_subplot(1, len(ipcs), i + 1)
        y = range(len(rows))
        colours = ["tab:grey" if r["arm"] in ("random", "dm") else "tab:blue" for r in rows]
        ax.barh(y, [r["mean"] for r in rows], xerr=[r["std"] for r in rows], color=colours, capsize=3)
        ax.set_yticks(y, [f"{r['arm']}  (rec {r['metrics']['recall']:.2f}, cov {r['metrics']['coverage']:.3f})"
                          for r in rows], fontsize=7)
        low = min(r["mean"] for r in rows)
        ax.set_xlim(max(0.0, low - 5), 100)
        ax.invert_yaxis()
        ax.set_xlabel("final-epoch accuracy (%)")
        ax.set_title(f"{dataset} IPC {ipc} ({rows[0]['protocol']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def table(summary: dict[str, Any], dataset: str) -> str:
    """Markdown table: accuracy and the report's main columns per arm and IPC."""
    head = ("| arm | IPC | accuracy (dsa) | precision | recall | density | coverage | diversity (random real) | "
            "agreement | FD | repr min/max cos | max cos own class | grad ratio |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for v in sorted(summary.values(), key=lambda r: (r["ipc"], list(ARMS).index(r["arm"]))):
        m, g = v["metrics"], v.get("grad") or {}
        ratio = f"{g['grad_ratio_minimax']:.4f}" if "grad_ratio_minimax" in g else "–"
        lines.append(
            f"| {v['arm']} | {v['ipc']} | {v['mean']:.2f} ± {v['std']:.2f} | {m['precision']:.3f} | "
            f"{m['recall']:.3f} | {m['density']:.3f} | {m['coverage']:.3f} | {m['diversity']:.2f} "
            f"({m['diversity_random_real']:.2f}) | {m['agreement']:.3f} | {m['fd']:.1f} | "
            f"{m['feature_repr_min']:.3f}/{m['feature_repr_max']:.3f} | {m['feature_div_max']:.3f} | {ratio} |")
    protocols = sorted({v["protocol"] for v in summary.values()})
    return (f"{dataset}: accuracy mean ± std (final epoch, {', '.join(protocols)}; reduced, labelled), "
            "set-quality report in the reference ConvNet's feature space (k = 5, 1000 real per class)\n\n"
            + head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
