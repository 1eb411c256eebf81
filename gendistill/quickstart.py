"""``gendistill quickstart``: a few-minute, download-free tour on 2 CPU cores.

It distills with fast methods at a small IPC, evaluates every set under its method's own protocol (``dc`` for
the coresets, ``dsa`` for DM; epochs reduced and labelled), and writes a run folder with a markdown results
table and a grid per set.
MNIST is used when the data root holds it, else scikit-learn's bundled 8x8 digits.
"""

from __future__ import annotations

from pathlib import Path

from .atomic import atomic_text
from .data import load_dataset, resolve_data_root
from .errors import DatasetNotFoundError
from .methods import list_methods
from .pipeline import distill, evaluate_run
from .results import format_table, result_row

__all__ = ["QUICKSTART_METHODS", "quickstart"]

# (method, --set overrides, preset) - fast methods first; "dm" joins when the baselines package provides it.
QUICKSTART_METHODS = [
    ("random", [], None),
    ("herding", [], "cpu"),
    ("kmeans", [], None),
    ("dm", ["iterations=100"], "cpu"),
]


def quickstart(out: str | Path = "runs/quickstart", data_root: str | None = None, ipc: int = 10,
               epochs: int | None = None, runs: int = 2, seed: int = 0, progress: bool = True,
               methods: list[str] | None = None) -> str:
    """Run the tour and return the markdown table (also written to ``out/results.md``)."""
    root = resolve_data_root(data_root)
    try:
        splits = load_dataset("mnist", root)
        dataset, default_epochs = "mnist", 40
    except DatasetNotFoundError:
        splits = load_dataset("digits", root)
        dataset, default_epochs = "digits", 100
    epochs = epochs or default_epochs
    out = Path(out)
    available = set(list_methods())
    chosen = [m for m in QUICKSTART_METHODS if m[0] in available and (methods is None or m[0] in methods)]
    print(f"quickstart: {dataset} ({len(splits.train)} train / {len(splits.test)} test images), ipc {ipc}, "
          f"methods {', '.join(m[0] for m in chosen)}; eval: each method's own protocol reduced to {epochs} epochs "
          f"x {runs} runs")
    rows = []
    for name, overrides, preset in chosen:
        run_dir = out / name
        synset = distill(name, splits, ipc, run_dir, seed=seed, preset=preset, overrides=overrides,
                         progress=progress, checkpoint_every=0)
        result = evaluate_run(synset, splits, run_dir, protocol=None, epochs=epochs, runs=runs, seed=seed,
                              progress=progress)
        rows.append(result_row(result.to_dict(), name))
        print(f"  {name:8s} {result.summary()}  grid: {run_dir / 'synset' / 'grid.png'}")
    table = format_table(rows)
    header = (f"# gendistill quickstart\n\nDataset: {dataset}, IPC {ipc}, seed {seed}. Evaluation: ConvNet-3, "
              f"each method's own protocol reduced to {epochs} epochs, {runs} runs, final-epoch test accuracy "
              "(reduced budget: not comparable to published figures).\n\n")
    atomic_text(out / "results.md", header + table)
    return table
