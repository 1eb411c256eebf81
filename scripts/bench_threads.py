"""Thread settings on a shared CPU: seconds per step of one DM iteration and one DiT pretraining step, alone and
next to a competing process, for torch's default threads, a passive OpenMP wait policy, and fewer threads.

    python scripts/bench_threads.py [--json results/bench/threads.json] [--steps 4]

Every (setting, load) cell runs in a fresh subprocess (OpenMP reads its wait policy at start-up). The competing
process is another torch job: a 1024x1024 fp32 matmul loop with torch's default threads, started before the
measurement and killed after it. Workloads: DM on MNIST IPC 10 with the ``cpu`` preset (64 real images per
class) and a DiT pretraining step of the ``minimax`` ``cpu`` preset (batch 64, 4 blocks, width 128). Needs
MNIST under $GENDISTILL_DATA. Run it alone: it measures contention on purpose.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "default (2 threads, active wait)": {},
    "2 threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"GENDISTILL_THREADS": "1"},
}

COMPETITOR = ("import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n")

WORKER = r'''
import json, statistics, sys, tempfile, time
from pathlib import Path
import torch
from gendistill.threads import apply_threads
apply_threads()
from gendistill.data import load_dataset
from gendistill.seeding import make_generator
workload, steps = sys.argv[1], int(sys.argv[2])
splits = load_dataset("mnist")
if workload == "dm":
    from gendistill.methods import get_method
    from gendistill.pipeline import resolve_config
    cfg = resolve_config("dm", "mnist", 10, preset="cpu")
    d = get_method("dm").cls(cfg)
    gen = make_generator(0)
    state = d.init_state(splits.train, 10, gen, 0)
    times = []
    for it in range(steps + 1):
        t = time.perf_counter()
        d.step(it, state, splits.train, gen, 0)
        times.append(time.perf_counter() - t)
    times = times[1:]
else:
    import dataclasses
    from gendistill.generative.method import new_backbone
    from gendistill.generative.train import train_backbone
    from gendistill.pipeline import resolve_config
    cfg = resolve_config("minimax", "mnist", 10, preset="cpu")
    cfg = dataclasses.replace(cfg, pretrain_steps=steps + 1, log_every=1, checkpoint_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        bb = new_backbone(splits.train, cfg, 0)
        train_backbone(bb, splits.train, torch.arange(10), cfg.train_spec("pretrain"), Path(tmp), progress=False)
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    stamps = [r["time_s"] for r in rows]
    times = [b - a for a, b in zip(stamps, stamps[1:])]
print(json.dumps({"median_s": statistics.median(times), "times": times, "threads": torch.get_num_threads()}))
'''


def measure(workload: str, steps: int, extra_env: dict[str, str], competing: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                                          "GENDISTILL_THREADS")}
    env.update(extra_env)
    rival = None
    if competing:
        rival_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        rival = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=rival_env)
        time.sleep(2.0)
    try:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", WORKER, workload, str(steps)], env=env, capture_output=True,
                             text=True, timeout=1800)
        wall = time.perf_counter() - start
    finally:
        if rival is not None:
            rival.kill()
            rival.wait()
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    record = json.loads(out.stdout.strip().splitlines()[-1])
    record["wall_s"] = wall
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args(argv)
    rows = []
    for workload in ("dm", "dit"):
        for name, extra in SETTINGS.items():
            for competing in (False, True):
                r = measure(workload, args.steps, extra, competing)
                rows.append({"workload": workload, "setting": name, "competing": competing, **r})
                print(f"{workload:4s} {name:36s} {'with' if competing else 'alone':5s} "
                      f"{r['median_s']:.3f} s/step (threads {r['threads']})", flush=True)
    print("\n| workload | setting | alone (s/step) | with a competing torch job (s/step) | slowdown |")
    print("|---|---|---|---|---|")
    for workload in ("dm", "dit"):
        for name in SETTINGS:
            a = next(r for r in rows if r["workload"] == workload and r["setting"] == name and not r["competing"])
            c = next(r for r in rows if r["workload"] == workload and r["setting"] == name and r["competing"])
            print(f"| {workload} | {name} | {a['median_s']:.3f} | {c['median_s']:.3f} | "
                  f"{c['median_s'] / a['median_s']:.1f}x |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
