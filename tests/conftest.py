"""Shared fixtures: tiny real datasets in their real on-disk formats, built inside the tests."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gendistill.data.datasets import RealDataset
from gendistill.data.preprocessing import Preprocessing

# The suite pins float32 numerics; the bfloat16 default of CPUs with the unit (GENDISTILL_AUTOCAST unset: auto) is
# tested where it is named (tests/test_precision.py), so that results do not depend on which CPU runs the suite.
os.environ.setdefault("GENDISTILL_AUTOCAST", "0")


def class_pattern_images(n_per_class: int, num_classes: int, channels: int, size: int, seed: int = 0) -> tuple:
    """uint8 images whose class is visible (a bright block at a class-specific place) plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(n_per_class * num_classes, channels, size, size), dtype=np.uint8)
    y = np.repeat(np.arange(num_classes), n_per_class)
    block = max(2, size // 4)
    for i, c in enumerate(y):
        r, col = (c * 3) % (size - block), (c * 5) % (size - block)
        x[i, :, r : r + block, col : col + block] = 230
    return x, y


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX (MNIST) file: magic 0x0000080N with N dims, big-endian sizes, uint8 data."""
    header = struct.pack(">I", 0x00000800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist_root(root: Path, folder: str = "MNIST", n_per_class: int = 6, n_test_per_class: int = 3) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_per_class, 0), ("t10k", n_test_per_class, 1)):
        x, y = class_pattern_images(n, 10, 1, 28, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:, 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
            (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes()))
    return root


def make_cifar10_root(root: Path, n_per_class: int = 3) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        x, y = class_pattern_images(n_per_class, 10, 3, 32, seed=i)
        with open(base / f"data_batch_{i}", "wb") as fh:
            pickle.dump({"batch_label": f"training batch {i} of 5", "labels": y.tolist(),
                         "data": x.reshape(len(x), -1), "filenames": [f"{j}.png" for j in range(len(x))]}, fh,
                        protocol=2)
    x, y = class_pattern_images(2, 10, 3, 32, seed=9)
    with open(base / "test_batch", "wb") as fh:
        pickle.dump({"labels": y.tolist(), "data": x.reshape(len(x), -1)}, fh, protocol=2)
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_vis": 3072}, fh, protocol=2)
    return root


def tiny_dataset() -> RealDataset:
    """10 classes x 12 images, 1x16x16, learnable class pattern."""
    x, y = class_pattern_images(12, 10, 1, 16)
    return RealDataset(torch.from_numpy(x), torch.from_numpy(y), [f"c{i}" for i in range(10)],
                       Preprocessing((0.2,), (0.3,)), "tiny", "train", flip_ok=True)


@pytest.fixture
def tiny_train() -> RealDataset:
    """10 classes x 12 images, 1x16x16, learnable class pattern."""
    return tiny_dataset()


@pytest.fixture
def tiny_test() -> RealDataset:
    x, y = class_pattern_images(5, 10, 1, 16, seed=3)
    return RealDataset(torch.from_numpy(x), torch.from_numpy(y), [f"c{i}" for i in range(10)],
                       Preprocessing((0.2,), (0.3,)), "tiny", "test", flip_ok=True)


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    return make_mnist_root(tmp_path / "data")


@pytest.fixture
def data_env(monkeypatch, mnist_root):
    """GENDISTILL_DATA pointing at a tiny MNIST in the real IDX format."""
    monkeypatch.setenv("GENDISTILL_DATA", str(mnist_root))
    return mnist_root


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Keep tests away from the user's data root and cache unless a test sets them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("GENDISTILL_CONFIGS", raising=False)


def pytest_addoption(parser):
    parser.addoption("--faults", action="store_true", default=False,
                     help="run the whole fault-injection suite (tests/faults), not only its fast subset")


@pytest.fixture
def fault_points(request) -> int:
    """How many kill points each fault scenario tries: 1 in the fast subset CI runs, 5 with --faults."""
    return 5 if request.config.getoption("--faults") else 1
