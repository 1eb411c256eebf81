"""The leaderboard writer: markdown, CSV and one self-contained HTML page from hand-made benchmark cells."""

from __future__ import annotations

import base64
import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gendistill.bench.leaderboard import CSV_COLUMNS, write_leaderboard


@dataclass
class FakeFigure:
    """Stands in for a published figure (``value``, ``std``, ``protocol``, ``network``, ``citation()``)."""

    value: float
    std: float | None
    protocol: str
    network: str

    def citation(self) -> str:
        return "Fake et al. 2024"


def fake_published(method: str, dataset: str, ipc: int, network: str, protocol: str) -> FakeFigure | None:
    if (method, dataset, ipc, network) == ("dm", "mnist", 10, "convnet"):
        return FakeFigure(97.0, 0.1, protocol, network)
    if (method, dataset, ipc, network) == ("dc", "mnist", 1, "convnet"):
        return FakeFigure(91.7, 0.5, "dc", "convnet")  # published under another protocol than our "dsa"
    return None


def make_grid(root: Path, name: str, seed: int) -> str:
    rel = f"runs/{name}/grid.png"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / rel)
    return rel


def make_cell(method: str, ipc: int, net: str, mean: float, out: Path, *, status: str = "done",
              error: str | None = None, reduced: bool = False, quality: dict | None = None) -> dict:
    preset = "cpu" if method == "dm" else None
    set_name = f"{method}{'-cpu' if preset else ''}_mnist_ipc{ipc}_s0"
    accs = [mean - 0.2, mean, mean + 0.2]
    result = None if status != "done" else {
        "mean": mean, "std": float(np.std(accs)), "accs": accs, "reduced": reduced,
        "reduced_note": "epochs 20 of 1000" if reduced else "", "wall_time_s": 12.5, "peak_memory_mb": 321.0,
        "protocol": {"name": "dsa", "model": net, "epochs": 20 if reduced else 1000,
                     "dsa_strategy": "color_crop_cutout_scale_rotate", "dc_aug": "", "lr": 0.01},
        "synset": {"method": method, "reduced_budget": preset == "cpu", "preset": preset},
    }
    return {
        "cell": f"{set_name}__dsa__{net}", "method": method, "preset": preset,
        "overrides": ["iterations=100"] if preset else [], "dataset": "mnist", "ipc": ipc, "distill_seed": 0,
        "protocol": "dsa", "eval_model": net, "status": status, "error": error, "result": result,
        "distill_time_s": {"dm": 30.0, "dc": 300.0}.get(method, 60.0) * ipc, "eval_time_s": 12.5 if result else None,
        "peak_memory_mb": 321.0 if result else None, "device": "cpu", "flops": 1.5e9 if method == "dm" else None,
        "grid": make_grid(out, set_name, ipc + len(method)), "quality": quality, "run_dir": f"runs/{set_name}",
    }


ROBUST = [{"method": "dm", "dataset": "mnist", "ipc": 10, "protocol": "dsa", "eval_model": "convnet",
           "hlr": 0.0213, "ior": 0.4567, "lrs": 0.6123, "ars": None}]


@pytest.fixture
def board(tmp_path: Path) -> tuple[list[dict], dict[str, Path], Path]:
    out = tmp_path / "board"
    quality = {"precision": 0.81234, "recall": 0.5, "density": 1.1, "coverage": 0.7, "diversity": 0.42}
    cells = [
        make_cell("dm", 1, "convnet", 88.0, out, reduced=True),
        make_cell("dm", 1, "resnet18", 80.0, out),
        make_cell("dc", 1, "convnet", 91.0, out),
        make_cell("dc", 1, "resnet18", 85.0, out),
        make_cell("dm", 10, "convnet", 96.4, out, quality=quality),
        make_cell("dm", 10, "resnet18", 93.0, out, quality=quality),
        make_cell("dc", 10, "convnet", 94.5, out),
        make_cell("dc", 10, "resnet18", 0.0, out, status="failed", error="RuntimeError: out of memory"),
    ]
    paths = write_leaderboard(cells, out, published=fake_published, robust=ROBUST, title="test board")
    return cells, paths, out


def test_files_written(board: tuple) -> None:
    _, paths, out = board
    for name in ("markdown", "csv", "html"):
        assert paths[name].is_file() and paths[name].parent == out
    pngs = {p.name for p in (out / "plots").glob("*.png")}
    assert {"acc_vs_ipc_mnist.png", "acc_vs_time_mnist_ipc1.png", "acc_vs_time_mnist_ipc10.png",
            "xarch_mnist_ipc1.png", "xarch_mnist_ipc10.png"} <= pngs
    for p in (out / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert paths[p.stem] == p


def test_markdown(board: tuple) -> None:
    cells, paths, _ = board
    md = paths["markdown"].read_text()
    for c in cells:
        assert c["cell"] in md
    assert "failed: RuntimeError: out of memory" in md
    assert "97.00 ± 0.10 final-epoch (Fake et al. 2024)" in md and "-0.60 vs our final" in md
    assert "## Summary" in md and md.index("## Summary") < md.index("## All cells")  # the pivot comes first
    assert "★" in md and "(3 runs)" in md
    assert "*under dc/convnet" in md  # published under another protocol is marked
    assert "FINAL-EPOCH" in md and "best-of-run" in md and "population std" in md
    assert "fractions" in md and "0.021" in md and "0.457" in md and "0.612" in md
    assert "0.812" in md  # set-quality table
    assert "96.40 ± 0.16 (n=3)" in md
    assert "yes: distillation: reduced budget (cpu preset); evaluation: epochs 20 of 1000" in md
    assert "dm [cpu] iterations=100" in md
    assert "dsa: 1000 ep, dsa color_crop_cutout_scale_rotate, lr 0.01" in md
    assert "## Cross-architecture" in md and "resnet18 (%" in md


def test_csv(board: tuple) -> None:
    cells, paths, _ = board
    with paths["csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == CSV_COLUMNS
    assert sorted(r["cell"] for r in rows) == sorted(c["cell"] for c in cells)
    # sorted by dataset, ipc, then mean accuracy descending (unfinished cells last)
    assert [r["mean"] for r in rows[:4]] == ["91.0", "88.0", "85.0", "80.0"]
    assert rows[-1]["status"] == "failed" and rows[-1]["error"] == "RuntimeError: out of memory"
    dm10 = next(r for r in rows if r["cell"] == "dm-cpu_mnist_ipc10_s0__dsa__convnet")
    assert float(dm10["published"]) == 97.0 and float(dm10["published_std"]) == 0.1
    assert float(dm10["gap"]) == pytest.approx(-0.6)
    assert dm10["overrides"] == "iterations=100" and dm10["n_runs"] == "3" and dm10["reduced"] == "true"
    dc1 = next(r for r in rows if r["cell"] == "dc_mnist_ipc1_s0__dsa__convnet")
    assert dc1["published_protocol"] == "dc" and dc1["published_like_for_like"] == "false"
    assert dc1["reduced"] == "false" and dc1["flops"] == ""


def test_html_self_contained(board: tuple) -> None:
    cells, paths, out = board
    page = paths["html"].read_text()
    for c in cells:
        assert f'data-cell="{c["cell"]}"' in page
    assert "<script>" in page and 'class="sortable"' in page
    for tid in ("results", "quality", "robust", "xarch"):
        assert f'id="{tid}"' in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page)
    assert "http://" not in page and "https://" not in page
    for p in (out / "plots").glob("*.png"):
        assert "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode() in page
    for c in cells:
        assert base64.b64encode((out / c["grid"]).read_bytes()).decode() in page
    for alt in ('alt="Accuracy vs IPC plot: mnist (dsa, convnet)"',
                'alt="Accuracy vs distillation time plot: mnist IPC 10 (dsa, convnet)"',
                'alt="Cross-architecture heat map: mnist IPC 10 (dsa)"',
                'alt="Image grid: dm [cpu] iterations=100 mnist IPC 10 seed 0"'):
        assert alt in page
    assert "RuntimeError: out of memory" in page and "Fake et al. 2024" in page


def test_all_failed_and_single_net(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    cells = [make_cell("dm", 1, "convnet", 0.0, out, status="failed", error="ValueError: bad"),
             make_cell("dc", 1, "convnet", 0.0, out, status="pending")]
    paths = write_leaderboard(cells, out, published=fake_published)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert "failed: ValueError: bad" in md and "pending" in md and "No finished cells" in md
    assert all(f'data-cell="{c["cell"]}"' in page for c in cells)
    assert not list((out / "plots").glob("*.png"))
    with paths["csv"].open() as fh:
        assert len(list(csv.DictReader(fh))) == 2

    one = tmp_path / "one"
    paths = write_leaderboard([make_cell("dm", 1, "convnet", 90.0, one), make_cell("dc", 1, "convnet", 92.0, one)],
                              one)
    assert "no cross-architecture heat map" in paths["html"].read_text()
    assert not list((one / "plots").glob("xarch_*.png")) and (one / "plots" / "acc_vs_ipc_mnist.png").is_file()


def test_pivot_flags_unstable_cells_hides_paths_and_compares_like_for_like(tmp_path: Path) -> None:
    class Best(FakeFigure):
        statistic, is_verified = "best", True

    class Unverified(FakeFigure):
        statistic, is_verified = "final", False

    out = tmp_path / "b"
    shaky = make_cell("dm", 10, "convnet", 60.0, out)
    shaky["result"]["accs"] = [40.0, 80.0]  # spread 40 points: the network's luck
    best = make_cell("mtt", 10, "convnet", 90.0, out)
    best["result"]["best_mean"] = 92.0
    path = make_cell("minimax", 10, "convnet", 88.0, out)
    path["overrides"] = ["pretrained=/home/someone/models/dit-digits/model"]

    def published(method, dataset, ipc, network, protocol):
        return {"mtt": Best(95.0, 0.1, protocol, network), "minimax": Unverified(99.0, 0.1, protocol, network)}.get(
            method)

    paths = write_leaderboard([shaky, best, path], out, published=published)
    md = paths["markdown"].read_text()
    assert "unstable" in md and "40.0–80.0" in md
    assert "-3.00 vs our best" in md  # a best-of-run figure against our best-of-run number
    assert "unverified: no gap computed" in md
    assert "/home/someone" not in md and "/home/someone" not in paths["html"].read_text()
    assert "pretrained=<local model #" in md


def test_cross_architecture_headers_name_each_networks_epochs_when_they_differ(tmp_path: Path) -> None:
    """A per-network recipe (LeNet at the protocol's 1000 epochs beside a reduced 20-epoch ConvNet) is visible in
    the cross-architecture table; one shared budget keeps the plain headers."""
    out = tmp_path / "b"
    cells = [make_cell("dm", 10, "convnet", 90.0, out, reduced=True), make_cell("dm", 10, "lenet", 85.0, out)]
    md = write_leaderboard(cells, out, published=fake_published)["markdown"].read_text()
    xarch = md.split("## Cross-architecture", 1)[1]
    assert "convnet (%, 20 ep)" in xarch and "lenet (%, 1000 ep)" in xarch
    same = [make_cell("dm", 10, "convnet", 90.0, out), make_cell("dm", 10, "lenet", 85.0, out)]
    xarch = write_leaderboard(same, out, published=fake_published)["markdown"].read_text().split(
        "## Cross-architecture", 1)[1]
    assert "| convnet (%) | lenet (%) |" in xarch
