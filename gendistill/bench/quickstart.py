"""``gendistill quickstart``: a download-free tour on 2 CPU cores (about 10 minutes), run through ``bench``.

It benchmarks the coreset references (random, herding, k-means), DM, and the generative core - ``dit`` (a
class-conditional DiT, no fine-tuning) and ``minimax`` (the same DiT fine-tuned with the Minimax losses) - on
MNIST when the data root holds it, else scikit-learn's bundled 8x8 digits, at IPC 10. Both start from the
generator the package ships for that dataset (``gendistill models``); an installation without one pretrains a
small DiT once (``quickstart`` preset of ``minimax``, 500 steps) and shares it. Every set is evaluated under one
protocol, ``dsa``, with reduced epochs (labelled), so the rows compare like for like; herding selects among 1000
seeded candidates per class (labelled reduced) instead of embedding the whole split. The run ends with the leaderboard
page (``index.html``): the table, the published figures, plots and the grid of every set.
"""

from __future__ import annotations

from pathlib import Path

from gendistill.data.datasets import load_dataset, resolve_data_root
from gendistill.utils.errors import DatasetNotFoundError

__all__ = ["QUICKSTART_METHODS", "quickstart"]

# (method, preset, --set overrides); the generative methods get pretrained=<shared model> added.
QUICKSTART_METHODS = [
    ("random", None, []),
    ("herding", "cpu", ["candidates_per_class=1000"]),
    ("kmeans", None, []),
    ("dm", "cpu", ["iterations=100"]),
    ("dit", "quickstart", []),
    ("minimax", "quickstart", []),
]
GENERATIVE = ("dit", "minimax")
QUICKSTART_PROTOCOL = "dsa"  # one protocol for every row: the tour compares the methods like for like


def _generator(dataset: str, root: Path, out: Path, progress: bool) -> str:
    """The shipped generator of ``dataset`` (its hub-style id), else a quickstart DiT pretrained here."""
    from gendistill.generative.hub import shipped_for_dataset

    shipped = shipped_for_dataset(dataset)
    if shipped:
        print(f"quickstart: dit and minimax start from the shipped generator {shipped} (see `gendistill models`)")
        return shipped
    return str(_shared_dit(dataset, root, out, progress).resolve())


def _shared_dit(dataset: str, root: Path, out: Path, progress: bool) -> Path:
    """Pretrain the quickstart DiT once (reused by ``dit`` and ``minimax``, and by a second quickstart)."""
    from gendistill.generative.method import pretrain
    from gendistill.presets import resolve_config

    splits = load_dataset(dataset, root)
    config = resolve_config("minimax", dataset, 10, preset="quickstart")
    folder = out / "models" / f"dit-{dataset}"
    if (folder / "model" / "gendistill.json").is_file():
        return folder / "model"
    print(f"quickstart: pretraining a small DiT on {dataset} ({config.pretrain_steps} steps, shared by dit and "
          "minimax)")
    return pretrain(splits.train, config, folder, seed=0, resume=True, progress=progress,
                    record={"preset": "quickstart", "overrides": []})


def quickstart(out: str | Path = "runs/quickstart", data_root: str | None = None, ipc: int = 10,
               epochs: int | None = None, runs: int = 2, seed: int = 0, progress: bool = True,
               methods: list[str] | None = None) -> str:
    """Run the tour through :func:`gendistill.bench.runner.run_bench`; returns the leaderboard markdown."""
    from gendistill.bench.runner import run_bench
    from gendistill.bench.spec import parse_spec

    root = resolve_data_root(data_root)
    try:
        load_dataset("mnist", root)
        dataset, default_epochs = "mnist", 40
    except DatasetNotFoundError:
        dataset, default_epochs = "digits", 100
    out = Path(out)
    chosen = [m for m in QUICKSTART_METHODS if methods is None or m[0] in methods]
    entries = []
    model = None
    for name, preset, overrides in chosen:
        if name in GENERATIVE:
            model = model or _generator(dataset, root, out, progress)
            overrides = [*overrides, f"pretrained={model}"]
        entries.append({"name": name, "preset": preset, "set": overrides} if preset or overrides else name)
    epochs = epochs or default_epochs
    print(f"quickstart: {dataset}, ipc {ipc}, methods {', '.join(m[0] for m in chosen)}; each evaluated under "
          f"the dsa protocol reduced to {epochs} epochs x {runs} runs")
    spec = parse_spec({"name": f"quickstart ({dataset}, ipc {ipc})", "methods": entries, "datasets": [dataset],
                       "ipc": [ipc], "distill_seeds": [seed], "runs": runs, "epochs": epochs,
                       "protocols": [QUICKSTART_PROTOCOL]}, "quickstart")
    run_bench(spec, out, data_root=str(root), progress=progress)
    table = (out / "leaderboard.md").read_text()
    return table
