import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import class_pattern_images, make_cifar10_root, make_mnist_root

from gendistill.data.datasets import list_datasets, load_dataset, resolve_data_root
from gendistill.utils.errors import DatasetNotFoundError, GendistillError
from gendistill.utils.seeding import make_generator


def test_registry_lists_all_datasets():
    assert {"mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "digits", "imagefolder", "imagewoof",
            "imagenette", "imageidc"} <= set(list_datasets())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_loaders_read_real_format(tmp_path, name, folder):
    make_mnist_root(tmp_path, folder)
    s = load_dataset(name, tmp_path)
    assert s.train.pixels.shape == (60, 1, 28, 28) and s.test.pixels.shape == (30, 1, 28, 28)
    assert s.train.pixels.dtype == torch.uint8 and s.train.num_classes == 10
    x, y = class_pattern_images(6, 10, 1, 28, 0)
    assert torch.equal(s.train.pixels, torch.from_numpy(x)) and torch.equal(s.train.labels, torch.from_numpy(y))
    mean, std = (0.1307, 0.3081) if name == "mnist" else (0.2861, 0.3530)
    assert s.train.preprocessing.mean == (mean,) and s.train.preprocessing.std == (std,)
    expected = (torch.from_numpy(x[:2]).float() / 255 - mean) / std
    assert torch.allclose(s.train.images(slice(0, 2)), expected, atol=1e-6)
    assert s.train.flip_ok == (name != "mnist")


def test_cifar10_pickle_format(tmp_path):
    make_cifar10_root(tmp_path)
    s = load_dataset("cifar10", tmp_path)
    assert s.train.pixels.shape == (150, 3, 32, 32) and s.test.pixels.shape == (20, 3, 32, 32)
    assert s.train.class_names[0] == "airplane"
    x, _ = class_pattern_images(3, 10, 3, 32, seed=1)
    assert torch.equal(s.train.pixels[:30], torch.from_numpy(x))


def test_cifar100_pickle_format(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    for split, n in (("train", 2), ("test", 1)):
        x, y = class_pattern_images(n, 100, 3, 32)
        with open(base / split, "wb") as fh:
            pickle.dump({"fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(), "data": x.reshape(len(x), -1)},
                        fh, protocol=2)
    with open(base / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)]}, fh, protocol=2)
    s = load_dataset("cifar100", tmp_path)
    assert s.train.num_classes == 100 and len(s.train) == 200 and len(s.test) == 100


def test_cifar_refuses_pickled_code(tmp_path):
    make_cifar10_root(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": Evil()}, fh)
    with pytest.raises(GendistillError, match="corrupt"):
        load_dataset("cifar10", tmp_path)


def test_svhn_mat_format(tmp_path):
    import scipy.io

    for split in ("train", "test"):
        x, y = class_pattern_images(2, 10, 3, 32)
        y = np.where(y == 0, 10, y)  # SVHN stores digit 0 as label 10
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": np.transpose(x, (2, 3, 1, 0)), "y": y[:, None]})
    s = load_dataset("svhn", tmp_path)
    assert s.train.pixels.shape == (20, 3, 32, 32) and int(s.train.labels.min()) == 0
    assert torch.equal(s.train.pixels, torch.from_numpy(class_pattern_images(2, 10, 3, 32)[0]))


def test_digits_needs_no_files(tmp_path):
    s = load_dataset("digits", tmp_path / "nothing")
    assert s.train.image_shape == (1, 8, 8) and len(s.train) + len(s.test) == 1797 and s.train.num_classes == 10


def _write_pngs(folder, classes, n, size=20):
    from PIL import Image

    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((size, size + 4, 3), 20 * i, dtype=np.uint8)).save(folder / c / f"{i}.png")


def test_imagefolder_with_and_without_val(tmp_path):
    _write_pngs(tmp_path / "train", ["cat", "dog"], 10)
    s = load_dataset("imagefolder", tmp_path, resolution=16)
    assert s.train.image_shape == (3, 16, 16) and len(s.train) == 18 and len(s.test) == 2
    _write_pngs(tmp_path / "val", ["cat", "dog"], 2)
    s = load_dataset("imagefolder", tmp_path, resolution=16)
    assert len(s.train) == 20 and len(s.test) == 4 and s.train.class_names == ["cat", "dog"]


def test_imagenet_subset_reads_class_list(tmp_path):
    from gendistill.data.datasets import _subset_classes

    wnids, names = _subset_classes("imagenette")
    assert len(wnids) == 10 and names[0] == "tench"
    _write_pngs(tmp_path / "imagenet" / "train", wnids, 2)
    _write_pngs(tmp_path / "imagenet" / "val", wnids, 1)
    s = load_dataset("imagenette", tmp_path, resolution=16)
    assert len(s.train) == 20 and len(s.test) == 10 and s.train.class_names[0] == "tench"
    with pytest.raises(DatasetNotFoundError, match="imagewoof"):
        load_dataset("imagewoof", tmp_path)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "imagefolder"])
def test_missing_dataset_is_one_line_naming_files(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset(name, tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path) in msg and ("--data-root" in msg)


def test_unknown_dataset_lists_known():
    with pytest.raises(GendistillError, match="available: .*mnist"):
        load_dataset("mnistt")


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("GENDISTILL_DATA", str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"
    assert resolve_data_root(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("GENDISTILL_DATA")
    assert resolve_data_root().name == "data"


def test_sample_indices_distinct_per_class_and_deterministic(tiny_train):
    idx = tiny_train.sample_indices(5, make_generator(1))
    assert idx.shape == (10, 5)
    for c in range(10):
        assert (tiny_train.labels[idx[c]] == c).all() and len(set(idx[c].tolist())) == 5
    assert torch.equal(idx, tiny_train.sample_indices(5, make_generator(1)))
    assert not torch.equal(idx, tiny_train.sample_indices(5, make_generator(2)))
    # asking for more than a class holds wraps around its own images
    big = tiny_train.sample_indices(15, make_generator(0))
    assert big.shape == (10, 12) or (tiny_train.labels[big] == torch.arange(10)[:, None]).all()
    x = tiny_train.sample_class(3, 4, make_generator(0))
    assert x.shape == (4, 1, 16, 16)
    xs, ys = tiny_train.sample_all_classes(2, make_generator(0))
    assert xs.shape == (20, 1, 16, 16) and ys.tolist() == sum([[c, c] for c in range(10)], [])


def test_zca_is_fitted_once_and_cached(tmp_path):
    make_mnist_root(tmp_path)
    s = load_dataset("mnist", tmp_path, zca="kornia")
    assert s.train.preprocessing.zca is not None and s.test.preprocessing.same_space(s.train.preprocessing)
    cached = list((tmp_path / ".gendistill_cache").glob("zca-*.safetensors"))
    assert len(cached) == 1
    s2 = load_dataset("mnist", tmp_path, zca="kornia")
    assert s2.train.preprocessing.same_space(s.train.preprocessing)
    assert torch.allclose(s2.train.images(), s.train.images())


def test_shared_mnist_when_available():
    """The real MNIST files (CI points GENDISTILL_DATA at them); skipped where they are absent."""
    import os

    root = os.environ.get("GENDISTILL_DATA")
    if not root or not (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip("no MNIST under GENDISTILL_DATA")
    s = load_dataset("mnist", root)
    assert len(s.train) == 60000 and len(s.test) == 10000
    assert torch.equal(s.train.class_counts, torch.bincount(s.train.labels, minlength=10))
    assert int(s.train.class_counts.min()) == 5421  # digit 5
