"""The ``gendistill bench``, ``leaderboard`` and ``quickstart`` subcommands."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from gendistill.utils.errors import GendistillError

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Register the benchmark subcommands; returns their handlers."""
    p = sub.add_parser("bench", help="run a benchmark matrix (resumable) and write its leaderboard")
    p.add_argument("spec", help="spec YAML (or the name of a packaged spec, e.g. cpu-mnist)")
    p.add_argument("--out", required=True, help="benchmark folder (run again to do only what is missing)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cluster", default=None, metavar="ray|ray://ADDRESS",
                   help="run cells as Ray tasks (pip install 'gendistill[ray]')")

    p = sub.add_parser("leaderboard", help="(re)write a benchmark folder's leaderboard.md/.csv and index.html")
    p.add_argument("dir", help="a folder written by `gendistill bench`")

    p = sub.add_parser("quickstart", help="a ~10-minute tour through bench: coresets, DM, DiT, Minimax, leaderboard")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=None, help="comma-separated subset")
    p.add_argument("--data-root", default=None)
    return {"bench": _cmd_bench, "leaderboard": _cmd_leaderboard, "quickstart": _cmd_quickstart}


def _cmd_bench(args) -> int:
    from gendistill.bench.runner import run_bench
    from gendistill.bench.spec import load_spec

    spec = load_spec(args.spec)
    start = time.perf_counter()
    records = run_bench(spec, args.out, data_root=args.data_root, cluster=args.cluster, progress=not args.quiet)
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "failed", "pending")}
    print(f"{spec.name}: {counts['done']} cells done, {counts['failed']} failed, {counts['pending']} pending "
          f"({time.perf_counter() - start:.0f} s); leaderboard: {Path(args.out) / 'index.html'}")
    for r in records:
        if r["status"] == "failed":
            print(f"  failed {r['cell']}: {r['error']}")
    return 1 if counts["failed"] else 0  # recorded; run the spec again to retry them


def _cmd_leaderboard(args) -> int:
    import yaml

    from gendistill.bench.runner import write_bench_leaderboard
    from gendistill.bench.spec import parse_spec

    spec_path = Path(args.dir) / "spec.yaml"
    if not spec_path.is_file():
        raise GendistillError(f"{args.dir} holds no spec.yaml; pass a folder written by `gendistill bench`")
    spec = parse_spec(yaml.safe_load(spec_path.read_text()), str(spec_path))
    paths = write_bench_leaderboard(spec, Path(args.dir))
    print(f"wrote {', '.join(str(p) for p in paths.values() if str(p).endswith(('.md', '.csv', '.html')))}")
    return 0


def _cmd_quickstart(args) -> int:
    from gendistill.bench.quickstart import quickstart

    methods = args.methods.split(",") if args.methods else None
    table = quickstart(args.out, args.data_root, ipc=args.ipc, epochs=args.epochs, runs=args.runs,
                       seed=args.seed, progress=not args.quiet, methods=methods)
    print(table, end="")
    print(f"leaderboard page: {Path(args.out) / 'index.html'} (open it in a browser; grids of every set inside)")
    return 0
