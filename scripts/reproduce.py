"""Run a grid of (method, dataset, ipc) cells through distill + evaluate and write a markdown table.

Example (the fidelity issue's closing-note figures, ``dc`` protocol with DC's per-dataset rule, 5 runs):

    python scripts/reproduce.py --out results/fidelity --protocol dc --runs 5 \
        --cell random:mnist:1 --cell random:mnist:10 --cell random:fashion_mnist:10 --cell herding:mnist:10

Without ``--protocol`` every cell is evaluated under its method's own protocol (``dsa`` for DM/DSA, ``dc`` for
DC and the coresets, ``cafe`` for CAFE, ``dd`` for DD), printed per cell. ``--distill-seeds N`` runs N seeded
distillations per cell (``<cell>/seed_<k>/``) and reports mean ± std over all (distillation, network) pairs
plus the std across distillations.

Each cell writes ``<out>/<method>_<dataset>_ipc<k>/`` (config, synset, result.json); the table goes to
``<out>/table.md``. Cells already holding a result.json are skipped, so an interrupted grid resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gendistill.data.datasets import load_dataset
from gendistill.evaluation.results import format_table, result_row
from gendistill.pipeline import distill, distill_seeds, evaluate_run
from gendistill.utils.atomic import atomic_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cell", action="append", required=True,
                    help="method:dataset:ipc[:preset[:key=value,key=value]] (per-cell method overrides)")
    ap.add_argument("--protocol", default=None, help="default: each method's own protocol")
    ap.add_argument("--distill-seeds", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--set", action="append", default=[], help="method override applied to every cell")
    ap.add_argument("--also", action="append", default=[], metavar="PROTOCOL[+hard][:EPOCHS[:RUNS]]",
                    help="also evaluate every cell under this protocol (into result_<protocol>.json), e.g. a "
                         "method's own protocol next to the shared one; cells whose method cannot take it are "
                         "skipped. '+hard' replaces soft labels by their argmax first (e.g. dsa+hard for DATM)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = []
    cache: dict[str, object] = {}
    for cell in args.cell:
        method, dataset, ipc, *rest = cell.split(":")
        preset = rest[0] if rest and rest[0] else None
        cell_overrides = rest[1].split(",") if len(rest) > 1 and rest[1] else []
        variant = "".join(f"_{o.replace('=', '-')}" for o in cell_overrides)
        run_dir = out / f"{method}_{dataset}_ipc{ipc}{'_' + preset if preset else ''}{variant}"
        if (run_dir / "result.json").is_file():
            result = json.loads((run_dir / "result.json").read_text())
        else:
            splits = cache.get(dataset) or load_dataset(dataset, args.data_root)
            cache[dataset] = splits
            eval_kwargs = dict(protocol=args.protocol, runs=args.runs, epochs=args.epochs)
            distill_kwargs = dict(preset=preset, overrides=[*args.set, *cell_overrides], checkpoint_every=25,
                                  resume=True)
            if args.distill_seeds > 1:
                result = distill_seeds(method, splits, int(ipc), run_dir, eval_kwargs=eval_kwargs,
                                       seeds=list(range(args.seed, args.seed + args.distill_seeds)),
                                       **distill_kwargs)
            else:
                synset = distill(method, splits, int(ipc), run_dir, seed=args.seed, **distill_kwargs)
                result = evaluate_run(synset, splits, run_dir, seed=args.seed, **eval_kwargs).to_dict()
                result["distill_time_s"] = synset.meta.get("distill_time_s")
                (run_dir / "result.json").write_text(json.dumps(result, indent=2))
        label = f"{method} ({', '.join(cell_overrides)})" if cell_overrides else method
        rows.append(result_row(result, label))
        rows += [result_row(extra, label) for extra in _also(args, run_dir, dataset, cache)]
        print(f"{cell}: {result['mean']:.2f} ± {result['std']:.2f} under {result['protocol']['name']} "
              f"({result.get('protocol_source', 'given')}; {result['wall_time_s']:.0f} s eval, "
              f"{result['seconds_per_run']:.0f} s/run)", flush=True)
        atomic_text(out / "table.md", format_table(rows))
    print(format_table(rows))
    return 0


def _also(args: argparse.Namespace, run_dir: Path, dataset: str, cache: dict) -> list[dict]:
    """The ``--also`` evaluations of one cell (cached in ``result_<protocol>.json``)."""
    from gendistill.synset.format import SyntheticSet
    from gendistill.utils.errors import GendistillError

    found = []
    for spec in args.also:
        name, *rest = spec.split(":")
        target = run_dir / f"result_{name}.json"
        if target.is_file():
            found.append(json.loads(target.read_text()))
            continue
        splits = cache.get(dataset) or load_dataset(dataset, args.data_root)
        cache[dataset] = splits
        try:
            protocol, _, hard = name.partition("+")
            if hard not in ("", "hard"):
                raise SystemExit(f"--also {spec}: the only suffix is '+hard' (e.g. dsa+hard:200:3)")
            synset = SyntheticSet.load(run_dir / "synset")
            if hard:
                if not synset.soft:
                    print(f"{run_dir.name}: not evaluated under {name}: the set has hard labels already")
                    continue
                synset = synset.with_hard_labels()
            result = evaluate_run(synset, splits, None, protocol=protocol, seed=args.seed,
                                  epochs=int(rest[0]) if rest and rest[0] else None,
                                  runs=int(rest[1]) if len(rest) > 1 else args.runs).to_dict()
        except GendistillError as exc:
            print(f"{run_dir.name}: not evaluated under {name}: {exc}")
            continue
        atomic_text(target, json.dumps(result, indent=2))
        print(f"{run_dir.name} under {name}: {result['mean']:.2f} ± {result['std']:.2f}", flush=True)
        found.append(result)
    return found


if __name__ == "__main__":
    sys.exit(main())
