"""Does bfloat16 autocast change the evaluation's accuracy? The ``dsa`` evaluation of one random-real set, float32
against bf16 autocast (the same set, networks and seeds; each precision in its own process), ``--runs`` networks each.

    python scripts/perf/precision_check.py mnist 10 100 --json results/perf/avx512_bf16/precision/mnist_ipc10.json

The rule for turning bf16 on by default (issue "Speed"): the mean accuracy moves by at most 0.3 points over 3 runs.
Needs a CPU with ``avx512_bf16``/AMX (or a GPU); the seconds are wall time on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, os, sys, time
import gendistill
dataset, ipc, epochs, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
splits = gendistill.load_dataset(dataset, os.environ.get("GENDISTILL_DATA") or None)
syn = gendistill.distill("random", splits, ipc=ipc, progress=False)
start = time.perf_counter()
r = gendistill.evaluate(syn, splits.test, "dsa", runs=runs, epochs=epochs, progress=False)
print("PRECISION", json.dumps({"autocast": r.autocast, "accs": r.accs, "s": time.perf_counter() - start}))
"""


def run_side(dataset: str, ipc: int, epochs: int, runs: int, precision: str) -> dict:
    env = {**os.environ, "GENDISTILL_AUTOCAST": precision}
    proc = subprocess.run([sys.executable, "-c", CHILD, dataset, str(ipc), str(epochs), str(runs)], env=env,
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PRECISION ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the {precision} evaluation failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1].split(" ", 1)[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("ipc", type=int)
    ap.add_argument("epochs", type=int)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if min(args.ipc, args.epochs, args.runs) < 1:
        ap.error("ipc, epochs and --runs take positive counts")
    fp32 = run_side(args.dataset, args.ipc, args.epochs, args.runs, "0")
    bf16 = run_side(args.dataset, args.ipc, args.epochs, args.runs, "bf16")
    delta = statistics.fmean(bf16["accs"]) - statistics.fmean(fp32["accs"])
    record = {"dataset": args.dataset, "ipc": args.ipc, "epochs": args.epochs, "runs": args.runs, "fp32": fp32,
              "bf16": bf16, "delta": delta, "within_0_3": abs(delta) <= 0.3}
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
