"""Reliability figures (issue "Reliability II"): the fault suite's table and two bench processes against one.

    python scripts/reliability.py --out results/reliability            # both; --skip-suite / --skip-bench for one

1. Runs ``pytest tests/faults --faults`` (five kill points per scenario) with ``$GENDISTILL_FAULT_REPORT`` set, and
   tabulates what each scenario injected and what came out of it (``suite.json``).
2. Runs one benchmark matrix (``--cells`` small DM and coreset cells on MNIST, each evaluated) once with one
   ``gendistill bench`` process and once with two started together on the same spec and folder (one thread
   each), and reports both wall times and whether any cell was computed twice (``two_process.json``).
Both write ``README.md`` with the machine. Run it on an otherwise idle machine: the timing compares processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run_suite(out: Path) -> list[dict]:
    report = out / "suite.json"
    env = {**os.environ, "GENDISTILL_FAULT_REPORT": str(report)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/faults", "--faults", "-p", "no:cacheprovider"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    rows = json.loads(report.read_text()) if report.is_file() else []
    meta = {"exit_code": proc.returncode, "summary": tail[0], "wall_s": time.perf_counter() - t0, "rows": rows}
    report.write_text(json.dumps(meta, indent=2))
    if proc.returncode != 0:
        print(proc.stdout[-3000:], file=sys.stderr)
    return rows


def bench_spec(cells: int) -> dict:
    ipcs = list(range(1, cells // 2 + 1))
    return {"name": "two-process", "methods": ["random", {"name": "dm", "preset": "smoke", "set": ["iterations=20"]}],
            "datasets": ["mnist"], "ipc": ipcs, "protocols": ["dc"], "runs": 1, "epochs": 20, "quality": False}


def time_bench(spec_path: Path, out: Path, processes: int, data_root: str | None) -> dict:
    cmd = [sys.executable, "-m", "gendistill.cli", "--quiet", "--threads", "1", "bench", str(spec_path), "--out",
           str(out), *(["--data-root", data_root] if data_root else [])]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(processes)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"bench failed: {errors}")
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    distilled = [e["cell"] for e in events if e["event"] == "distill"]
    return {"processes": processes, "wall_s": wall, "cells": len(set(distilled)),
            "computed_twice": len(distilled) - len(set(distilled)),
            "cells_per_process": {str(pid): sum(1 for e in events if e["event"] == "distill" and e["pid"] == pid)
                                  for pid in sorted({e["pid"] for e in events})}}


def machine() -> dict:
    from gendistill.utils.resources import cpu_info

    return {"cpu": cpu_info()["model"], "cores": os.cpu_count(), "python": platform.python_version()}


def write_readme(out: Path) -> None:
    lines = ["# Reliability figures", "", f"Machine: {json.dumps(machine())}. Made by `python scripts/reliability.py "
             "--out results/reliability`.", ""]
    suite = out / "suite.json"
    if suite.is_file():
        meta = json.loads(suite.read_text())
        lines += ["## Fault-injection suite (`pytest tests/faults --faults`)", "",
                  f"Outcome: {meta['summary']} (exit code {meta['exit_code']}, {meta['wall_s']:.0f} s). A scenario's "
                  "counts are added only when its assertions pass. *Survived*: resumed to completion or refused with "
                  "a one-line error naming the file; *identical*: the resumed result equals the uninterrupted run's "
                  "bitwise; bad inputs are hypothesis-generated, so some are valid and accepted.", "",
                  "| category | scenario | faults injected | survived | identical on resume | inputs tried | "
                  "one-line errors |", "|---|---|---|---|---|---|---|"]
        for r in meta["rows"]:
            lines.append(f"| {r['category']} | {r['scenario']} | {r['injected'] or '–'} | {r['survived'] or '–'} | "
                         f"{r['identical'] or '–'} | {r['inputs'] or '–'} | {r['clean_errors'] or '–'} |")
        lines.append("")
    two = out / "two_process.json"
    if two.is_file():
        runs = json.loads(two.read_text())
        one = runs[0]["wall_s"]
        lines += ["## Two bench processes on one spec and folder", "",
                  f"Spec: {runs[0]['cells']} cells (random and DM smoke sets on MNIST, each evaluated under `dc` "
                  "for 20 epochs); each process on one thread.", "",
                  "| processes | wall time (s) | speed-up | cells computed twice | cells per process |",
                  "|---|---|---|---|---|"]
        for r in runs:
            per_process = ", ".join(map(str, r["cells_per_process"].values()))
            lines.append(f"| {r['processes']} | {r['wall_s']:.1f} | {one / r['wall_s']:.2f}× | "
                         f"{r['computed_twice']} | {per_process} |")
        lines.append("")
    (out / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/reliability")
    parser.add_argument("--cells", type=int, default=8, help="cells of the two-process matrix (even)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--skip-suite", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_suite:
        run_suite(out)
    if not args.skip_bench:
        with tempfile.TemporaryDirectory() as tmp:
            spec_path = Path(tmp) / "spec.yaml"
            spec_path.write_text(yaml.safe_dump(bench_spec(args.cells)))
            runs = [time_bench(spec_path, Path(tmp) / f"p{n}", n, args.data_root) for n in (1, 2)]
        (out / "two_process.json").write_text(json.dumps(runs, indent=2))
    write_readme(out)
    print((out / "README.md").read_text())


if __name__ == "__main__":
    main()
