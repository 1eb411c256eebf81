"""Side-by-side speed of gendistill and a reference implementation, on this machine, one command per comparison.

    python scripts/perf/compare.py dm --ref /path/to/DatasetCondensation --iterations 12 --json results/perf/dm.json
    python scripts/perf/compare.py evaluate --ref /path/to/DatasetCondensation --json results/perf/evaluate.json

``--ref`` is a checkout of the reference repository (or a bare git directory, e.g. what the project's ``fetch`` tool
brings: it is exported to a temporary folder). Nothing of the reference is committed here. The reference copy gets only
the edits this harness lists for it (``PATCHES``): what the current torch/scipy need, ``eval_it_pool = []`` so that
distillation is timed alone, and one timing print per iteration. Its commit is recorded.

Both sides run as child processes of this one, one after the other, with the same thread count, the same data (the
MNIST files of ``--data-root``, linked into the reference's layout) and the published setting (MNIST, IPC 10). Reported
per side: the median seconds per iteration over the timed iterations (after ``--warmup``), their mean loss and its
std; the ratio reference / ours; and whether the mean losses agree within the noise (|difference| below 3 standard
errors). ``evaluate`` times one run of the ``dsa`` recipe (ConvNet-3, ``--epochs`` epochs, random real MNIST IPC 10,
then the 10k-image test) through the reference's ``evaluate_synset`` and through ``gendistill.evaluate``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: reference file -> [(old, new)]: the only edits allowed (torch/scipy compatibility, no evaluation, timing print)
PATCHES: dict[str, list[tuple[str, str]]] = {
    "utils.py": [("from scipy.ndimage.interpolation import rotate as scipyrotate",
                  "from scipy.ndimage import rotate as scipyrotate")],
    "main_DM.py": [(
        "eval_it_pool = np.arange(0, args.Iteration+1, 2000).tolist() if args.eval_mode == 'S' or args.eval_mode == "
        "'SS' else [args.Iteration]", "eval_it_pool = []"), (
        "            loss_avg /= (num_classes)\n",
        "            loss_avg /= (num_classes)\n            print('PERF_ITER', it, time.perf_counter(), loss_avg, "
        "flush=True)\n")],
    "main.py": [(
        "eval_it_pool = np.arange(0, args.Iteration+1, 500).tolist() if args.eval_mode == 'S' or args.eval_mode == "
        "'SS' else [args.Iteration]", "eval_it_pool = []"), (
        "            loss_avg /= (num_classes*args.outer_loop)\n",
        "            loss_avg /= (num_classes*args.outer_loop)\n"
        "            print('PERF_ITER', it, time.perf_counter(), loss_avg, flush=True)\n")],
}

#: comparison -> (reference script and arguments, gendistill method, overrides)
SETTINGS = {
    "dm": (["main_DM.py", "--dataset", "MNIST", "--model", "ConvNet", "--ipc", "10", "--dsa_strategy",
            "color_crop_cutout_flip_scale_rotate", "--init", "real", "--lr_img", "1", "--batch_real", "256"],
           "dm", []),
    "dc": (["main.py", "--method", "DC", "--dataset", "MNIST", "--model", "ConvNet", "--ipc", "10"], "dc", []),
    "dsa": (["main.py", "--method", "DSA", "--dataset", "MNIST", "--model", "ConvNet", "--ipc", "10", "--init",
             "real", "--dsa_strategy", "color_crop_cutout_flip_scale_rotate"], "dsa", []),
}

EVAL_DRIVER = '''
import sys, time, json
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from utils import get_dataset, get_network, evaluate_synset, ParamDiffAug
data = torch.load(sys.argv[2])
(channel, im_size, num_classes, class_names, mean, std, dst_train, dst_test,
 testloader) = get_dataset("MNIST", sys.argv[3])
class A: pass
args = A()
args.device = "cpu"; args.lr_net = 0.01; args.epoch_eval_train = int(sys.argv[4]); args.batch_train = 256
args.dsa = True; args.dsa_strategy = "color_crop_cutout_flip_scale_rotate"; args.dsa_param = ParamDiffAug()
args.dc_aug_param = None
torch.random.manual_seed(0)
net = get_network("ConvNet", channel, num_classes, im_size)
start = time.perf_counter()
_, acc_train, acc_test = evaluate_synset(0, net, data["images"], data["labels"], testloader, args)
print("PERF_EVAL", time.perf_counter() - start, acc_test, flush=True)
'''


def export_reference(ref: Path, dst: Path) -> str:
    """Copy the reference into ``dst`` (a bare git directory is exported); returns its commit."""
    git_dir = ref if (ref / "HEAD").is_file() and (ref / "objects").is_dir() else ref / ".git"
    commit = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() if git_dir.exists() else "unknown"
    if git_dir == ref:  # bare
        archive = subprocess.run(["git", "--git-dir", str(ref), "archive", "HEAD"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dst)], input=archive.stdout, check=True)
    else:
        shutil.copytree(ref, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
    for name, edits in PATCHES.items():
        path = dst / name
        if not path.is_file():
            continue
        text = path.read_text()
        for old, new in edits:
            if old not in text:
                raise SystemExit(f"patch does not apply to {name}: {old[:60]!r} (another reference version?)")
            text = text.replace(old, new)
        path.write_text(text)
    return commit


def link_mnist(data_root: Path, dst: Path) -> Path:
    """The reference reads torchvision's MNIST layout under its --data_path: link the raw files (read-only data)."""
    raw = dst / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in (data_root / "MNIST" / "raw").iterdir():
        (raw / f.name).symlink_to(f)
    return dst


def run(cmd: list[str], cwd: Path, threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "GENDISTILL_THREADS": str(threads), "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def summarise(times: list[float], losses: list[float], warmup: int) -> dict:
    steps = [b - a for a, b in zip(times, times[1:], strict=False)][warmup:]
    loss = losses[warmup + 1:] if len(losses) > warmup + 1 else losses
    return {"s_per_iteration_median": statistics.median(steps) if steps else math.nan, "iterations_timed": len(steps),
            "s_per_iteration_all": steps, "loss_mean": statistics.fmean(loss),
            "loss_std": statistics.pstdev(loss) if len(loss) > 1 else 0.0, "n_loss": len(loss)}


def compare_method(name: str, ref_dir: Path, work: Path, data_root: Path, iterations: int, threads: int,
                   warmup: int) -> dict:
    script, method, overrides = SETTINGS[name]
    out = run([sys.executable, *script, "--Iteration", str(iterations), "--num_exp", "1",
               "--data_path", str(link_mnist(data_root, work / "data")), "--save_path", str(work / "save")],
              ref_dir, threads)
    rows = [line.split() for line in out.splitlines() if line.startswith("PERF_ITER")]
    reference = summarise([float(r[2]) for r in rows], [float(r[3]) for r in rows], warmup)
    # ours: per-iteration wall time from metrics.jsonl (one line per iteration)
    run_dir = work / "ours"
    run([sys.executable, "-m", "gendistill.cli", "--quiet", "--threads", str(threads), "distill", "--method",
         method, "--dataset", "mnist", "--ipc", "10", "--data-root", str(data_root), "--set",
         f"iterations={iterations + 1}", *[a for o in overrides for a in ("--set", o)], "--log-every", "1",
         "--checkpoint-every", "0", "--out", str(run_dir)], REPO, threads)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ours = summarise([line["elapsed_s"] for line in lines], [float(line["loss"]) for line in lines], warmup)
    return {"reference": reference, "ours": ours}


def compare_evaluate(ref_dir: Path, work: Path, data_root: Path, epochs: int, threads: int) -> dict:
    import torch

    import gendistill

    splits = gendistill.load_dataset("mnist", str(data_root))
    syn = gendistill.distill("random", splits, ipc=10, progress=False)
    images, labels = syn.materialize()
    torch.save({"images": images, "labels": labels}, work / "set.pt")
    (work / "driver.py").write_text(EVAL_DRIVER)
    out = run([sys.executable, str(work / "driver.py"), str(ref_dir), str(work / "set.pt"),
               str(link_mnist(data_root, work / "data")), str(epochs)], ref_dir, threads)
    seconds, acc = next(line.split()[1:] for line in out.splitlines() if line.startswith("PERF_EVAL"))
    syn.save(work / "synset")
    code = ("import json, sys, time, gendistill\n"
            f"splits = gendistill.load_dataset('mnist', {str(data_root)!r})\n"
            f"syn = gendistill.load_synset({str(work / 'synset')!r})\n"
            "start = time.perf_counter()\n"
            f"r = gendistill.evaluate(syn, splits.test, 'dsa', runs=1, epochs={epochs}, progress=False)\n"
            "print('PERF_EVAL', time.perf_counter() - start, r.mean)\n")
    ours = run([sys.executable, "-c", code], REPO, threads)
    seconds_ours, acc_ours = next(line.split()[1:] for line in ours.splitlines() if line.startswith("PERF_EVAL"))
    return {"reference": {"s_per_run": float(seconds), "accuracy": 100 * float(acc)},
            "ours": {"s_per_run": float(seconds_ours), "accuracy": float(acc_ours)}}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else \
        platform.processor()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return {"cpu": cpu, "avx512_bf16": "avx512_bf16" in flags, "cores": os.cpu_count(),
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("comparison", choices=[*SETTINGS, "evaluate"])
    ap.add_argument("--ref", required=True, help="reference checkout (or bare git directory)")
    ap.add_argument("--data-root", default=os.environ.get("GENDISTILL_DATA", ""))
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=100, help="evaluate: training epochs of the dsa recipe")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    data_root = Path(args.data_root).resolve()
    with tempfile.TemporaryDirectory(prefix="gendistill-perf-") as tmp:
        ref_dir, work = Path(tmp) / "reference", Path(tmp) / "work"
        ref_dir.mkdir()
        work.mkdir()
        commit = export_reference(Path(args.ref), ref_dir)
        start = time.perf_counter()
        if args.comparison == "evaluate":
            result = compare_evaluate(ref_dir, work, data_root, args.epochs, args.threads)
            result["ratio"] = result["reference"]["s_per_run"] / result["ours"]["s_per_run"]
        else:
            result = compare_method(args.comparison, ref_dir, work, data_root, args.iterations, args.threads,
                                    args.warmup)
            r, o = result["reference"], result["ours"]
            result["ratio"] = r["s_per_iteration_median"] / o["s_per_iteration_median"]
            se = math.sqrt(r["loss_std"] ** 2 / max(r["n_loss"], 1) + o["loss_std"] ** 2 / max(o["n_loss"], 1))
            result["losses_agree"] = abs(r["loss_mean"] - o["loss_mean"]) <= 3 * se + 1e-12
    result.update(comparison=args.comparison, reference_commit=commit, threads=args.threads, machine=machine(),
                  wall_s=time.perf_counter() - start, command=" ".join(["python", "scripts/perf/compare.py",
                                                                       *(argv or sys.argv[1:])]))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
