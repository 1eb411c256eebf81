"""Dataset registry and the in-memory real dataset every method samples from.

Each split is held as one uint8 tensor ``[N, C, H, W]`` plus labels and a per-class index, so drawing ``n``
random images of class ``c`` is a cheap indexing op (:meth:`RealDataset.sample_class`). The model-space view
(normalised, optionally ZCA-whitened; see :mod:`gendistill.preprocessing`) is computed once and cached when it
fits in memory, else on access.

Root folder: ``--data-root``, else ``$GENDISTILL_DATA``, else ``~/.cache/gendistill/data``. Nothing is
downloaded unless ``download=True`` (``--download``).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import os
import pickle
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from gendistill.data.preprocessing import Preprocessing, fit_zca
from gendistill.utils.errors import ConfigError, DatasetNotFoundError, GendistillError

__all__ = [
    "DatasetSplits",
    "RealDataset",
    "get_dataset_spec",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "resolve_data_root",
]

MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_STATS = ((0.2861,), (0.3530,))
SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_STATS = ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CACHE_LIMIT_BYTES = 3 << 30


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """The folder datasets are read from: argument, else ``$GENDISTILL_DATA``, else the user cache."""
    if data_root:
        return Path(data_root).expanduser()
    if os.environ.get("GENDISTILL_DATA"):
        return Path(os.environ["GENDISTILL_DATA"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "gendistill" / "data"


class RealDataset:
    """One split of a real dataset, held in memory.

    Args:
        pixels: uint8 images ``[N, C, H, W]``.
        labels: int64 labels ``[N]`` in ``0..num_classes-1``.
        class_names: one name per class.
        preprocessing: maps pixels to the model space.
        name: dataset name (``mnist``, ...).
        split: ``train`` or ``test``.
        flip_ok: whether horizontal flips keep the label meaning (False for digits).
    """

    def __init__(
        self,
        pixels: torch.Tensor,
        labels: torch.Tensor,
        class_names: list[str],
        preprocessing: Preprocessing,
        name: str,
        split: str,
        flip_ok: bool = True,
    ) -> None:
        if pixels.dtype != torch.uint8 or pixels.dim() != 4:
            raise ValueError("pixels must be a uint8 tensor [N, C, H, W]")
        if labels.shape != (pixels.shape[0],):
            raise ValueError("labels must be [N] with one label per image")
        self.pixels = pixels
        self.labels = labels.long()
        self.class_names = list(class_names)
        self.preprocessing = preprocessing
        self.name = name
        self.split = split
        self.flip_ok = flip_ok
        self.data_root: Path | None = None  # set by load_dataset (where caches next to the data may go)
        self._cache: torch.Tensor | None = None
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        order = torch.argsort(self.labels, stable=True)
        width = int(counts.max()) if len(counts) else 0
        # [C, max_count] matrix of indices per class, padded with -1.
        self.class_index = torch.full((self.num_classes, width), -1, dtype=torch.long)
        starts = torch.cumsum(counts, 0) - counts
        for c in range(self.num_classes):
            self.class_index[c, : counts[c]] = order[starts[c] : starts[c] + counts[c]]
        self.class_counts = counts

    # ----------------------------------------------------------------------------------------------- shape
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.pixels.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.pixels.shape[0]

    # ------------------------------------------------------------------------------------------ access
    def images(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Model-space images (float32) for ``index`` (all when None)."""
        if self._cache is None and self.pixels.numel() * 4 <= CACHE_LIMIT_BYTES:
            self._cache = self.preprocessing.apply(self.pixels)
        if self._cache is not None:
            return self._cache if index is None else self._cache[index]
        return self.preprocessing.apply(self.pixels if index is None else self.pixels[index])

    def set_preprocessing(self, preprocessing: Preprocessing) -> None:
        """Switch the model space (e.g. after fitting ZCA); drops the cached view."""
        self.preprocessing = preprocessing
        self._cache = None

    def sample_indices(self, n: int, generator: torch.Generator, classes: torch.Tensor | None = None) -> torch.Tensor:
        """``[len(classes), n]`` random indices, ``n`` distinct images per class (all of a class if it has fewer).

        One ``argsort`` of random keys over the padded per-class index: no Python loop over classes.
        """
        classes = torch.arange(self.num_classes) if classes is None else classes
        table = self.class_index[classes]
        keys = torch.rand(table.shape, generator=generator)
        keys = keys.masked_fill(table < 0, 2.0)
        n_eff = min(n, table.shape[1])
        pick = torch.argsort(keys, dim=1)[:, :n_eff]
        picked = torch.gather(table, 1, pick)
        short = picked < 0  # classes with fewer than n images: wrap around their own images
        if short.any():
            counts = self.class_counts[classes].unsqueeze(1)
            picked = torch.where(short, torch.gather(table, 1, pick % counts), picked)
        return picked

    def sample_class(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random model-space images of class ``c`` (without replacement)."""
        return self.images(self.sample_indices(n, generator, torch.tensor([c]))[0])

    def sample_all_classes(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` random images of every class, class-major: images ``[C*n, ...]`` and labels ``[C*n]``."""
        idx = self.sample_indices(n, generator).reshape(-1)
        return self.images(idx), self.labels[idx]

    def subset(self, index: torch.Tensor) -> RealDataset:
        """A new dataset holding the rows ``index`` (same classes, preprocessing and name)."""
        sub = RealDataset(self.pixels[index], self.labels[index], self.class_names, self.preprocessing, self.name,
                          self.split, self.flip_ok)
        sub._cache = self._cache[index] if self._cache is not None else None
        return sub

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Sequential model-space batches over the whole split (for testing)."""
        for start in range(0, len(self), batch_size):
            sl = slice(start, start + batch_size)
            yield self.images(sl), self.labels[sl]


@dataclasses.dataclass
class DatasetSplits:
    """Train and test splits of one dataset, sharing one preprocessing."""

    train: RealDataset
    test: RealDataset
    source: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.train.name

    def describe(self) -> str:
        """One line: where the data came from, at what size and normalisation (recorded with every run)."""
        c, h, w = self.train.image_shape
        where = self.source.get("folder") or self.source.get("data_root", "?")
        norm = self.source.get("normalisation") or f"mean {list(self.train.preprocessing.mean)} std " \
            f"{list(self.train.preprocessing.std)}"
        return (f"{self.name}: {len(self.train)} train / {len(self.test)} test images from {where}, {c}x{h}x{w}, "
                f"normalised with {norm}")

    def apply_zca(self, variant: str = "kornia", eps: float = 0.1, cache_dir: Path | None = None) -> None:
        """Fit ZCA on the training split (cached on disk when ``cache_dir`` is given) and whiten both splits."""
        from safetensors.torch import load_file, save_file

        base = Preprocessing((0.0,) * len(self.train.preprocessing.mean), (1.0,) * len(self.train.preprocessing.std))
        if variant == "kip":
            base = self.train.preprocessing
        zca = None
        cache_file = None
        if cache_dir is not None:
            sig = f"{self.name}-{len(self.train)}-{tuple(self.train.image_shape)}-{variant}-{eps}"
            cache_file = Path(cache_dir) / f"zca-{sig}.safetensors".replace(" ", "").replace(",", "x")
            if cache_file.is_file():
                from gendistill.data.preprocessing import ZCA

                t = load_file(str(cache_file))
                zca = ZCA(variant, eps, t["mean"], t["matrix"], t["inverse"])
        if zca is None:
            zca = fit_zca(base.apply(self.train.pixels), variant, eps)
            if cache_file is not None:
                from gendistill.utils.atomic import atomic_write

                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tensors = {"mean": zca.mean, "matrix": zca.matrix, "inverse": zca.inverse}
                atomic_write(cache_file, lambda p: save_file(tensors, str(p)))
        pre = Preprocessing(base.mean, base.std, zca)
        self.train.set_preprocessing(pre)
        self.test.set_preprocessing(pre)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Registry record of a dataset."""

    name: str
    loader: Callable[..., DatasetSplits]
    description: str


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, description: str) -> Callable[[Callable[..., DatasetSplits]], Callable]:
    """Register ``loader(root: Path, download: bool, **options) -> DatasetSplits`` under ``name``."""

    def wrap(fn: Callable[..., DatasetSplits]) -> Callable[..., DatasetSplits]:
        _DATASETS[name] = DatasetSpec(name, fn, description)
        return fn

    return wrap


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return sorted(_DATASETS)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The registry record of ``name``; an unknown name lists the known ones."""
    key = name.lower().replace("-", "_")
    if key not in _DATASETS:
        raise GendistillError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    return _DATASETS[key]


def load_dataset(
    name: str,
    data_root: str | Path | None = None,
    *,
    download: bool = False,
    zca: str | None = None,
    zca_eps: float = 0.1,
    **options: object,
) -> DatasetSplits:
    """Load both splits of dataset ``name``.

    Args:
        name: a registered dataset (see :func:`list_datasets`).
        data_root: folder to read from (see :func:`resolve_data_root`).
        download: fetch the files when missing (only where the dataset has a public download).
        zca: ``None``, ``"kornia"`` or ``"kip"`` to whiten both splits with ZCA fitted on the training split.
        zca_eps: the ZCA regulariser.
        **options: dataset-specific options (e.g. ``resolution`` for ImageNet-style folders).
    """
    spec = get_dataset_spec(name)
    root = resolve_data_root(data_root)
    accepted = set(inspect.signature(spec.loader).parameters) - {"root", "download"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        takes = ", ".join(sorted(accepted)) or "none"
        raise ConfigError(f"dataset {name} takes no option {', '.join(unknown)} (it takes: {takes})")
    splits = spec.loader(root, download, **options)
    splits.source = {"data_root": str(root), **{k: v for k, v in options.items() if v is not None},
                     **splits.source}
    for split in (splits.train, splits.test):
        split.data_root = root
    if zca:
        splits.apply_zca(zca, zca_eps, cache_dir=root / ".gendistill_cache")
    return splits


# ------------------------------------------------------------------------------------------- helpers
def _missing(name: str, root: Path, expected: str, download_hint: bool = True) -> DatasetNotFoundError:
    hint = " or add --download" if download_hint else ""
    return DatasetNotFoundError(
        f"{name}: expected {expected} under {root}; pass --data-root DIR or set GENDISTILL_DATA{hint}"
    )


def _to_splits(name, train, test, class_names, stats, flip_ok) -> DatasetSplits:
    pre = Preprocessing(tuple(stats[0]), tuple(stats[1]))
    return DatasetSplits(
        RealDataset(train[0], train[1], class_names, pre, name, "train", flip_ok),
        RealDataset(test[0], test[1], class_names, pre, name, "test", flip_ok),
    )


def _torchvision_mnist(cls_name: str, name: str, folder: str, stats, root: Path, download: bool) -> DatasetSplits:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    raw = root / folder / "raw"
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as exc:
        if "not found" in str(exc).lower():
            raise _missing(name, root, f"{raw}/train-images-idx3-ubyte (and the t10k files)") from exc
        raise GendistillError(f"{name}: could not read the files under {raw} ({exc}); re-download them") from exc
    except (OSError, ValueError, IndexError) as exc:
        raise GendistillError(f"{name}: the IDX files under {raw} are corrupt ({exc}); re-download them") from exc
    return _to_splits(
        name,
        (train.data.unsqueeze(1).contiguous(), train.targets),
        (test.data.unsqueeze(1).contiguous(), test.targets),
        [str(c).split(" - ")[-1] for c in train.classes],
        stats,
        flip_ok=name != "mnist",
    )


@register_dataset("mnist", "MNIST handwritten digits, 28x28 grey, 10 classes (torchvision layout)")
def _load_mnist(root: Path, download: bool) -> DatasetSplits:
    return _torchvision_mnist("MNIST", "mnist", "MNIST", MNIST_STATS, root, download)


@register_dataset("fashion_mnist", "Fashion-MNIST, 28x28 grey, 10 classes (torchvision layout)")
def _load_fashion(root: Path, download: bool) -> DatasetSplits:
    return _torchvision_mnist("FashionMNIST", "fashion_mnist", "FashionMNIST", FASHION_STATS, root, download)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batch files: only numpy array reconstruction is allowed, no other code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "bytearray"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_file(path: Path, name: str) -> dict:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        return _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError) as exc:
        raise GendistillError(f"{name}: {path} is corrupt or not a CIFAR batch file ({exc}); re-download it") from exc


def _cifar(name: str, root: Path, download: bool, folder: str, train_files, test_file, meta_file, label_key,
           names_key, stats, tv_cls: str) -> DatasetSplits:
    base = root / folder
    needed = [*train_files, test_file, meta_file]
    if not all((base / f).is_file() for f in needed) and download:
        import torchvision.datasets as tvd

        getattr(tvd, tv_cls)(str(root), train=True, download=True)
    missing = [f for f in needed if not (base / f).is_file()]
    if missing:
        raise _missing(name, root, f"{folder}/{missing[0]} (files: {', '.join(needed)})")

    def read(files):
        xs, ys = [], []
        for f in files:
            entry = _read_cifar_file(base / f, name)
            try:
                x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                ys.append(np.asarray(entry[label_key], dtype=np.int64))
            except (KeyError, ValueError) as exc:
                raise GendistillError(f"{name}: {base / f} lacks '{label_key}'/'data' ({exc}); re-download") from exc
            xs.append(x)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    meta = _read_cifar_file(base / meta_file, name)
    return _to_splits(name, read(train_files), read([test_file]), list(meta[names_key]), stats, flip_ok=True)


@register_dataset("cifar10", "CIFAR-10, 32x32 RGB, 10 classes (cifar-10-batches-py)")
def _load_cifar10(root: Path, download: bool) -> DatasetSplits:
    files = [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar("cifar10", root, download, "cifar-10-batches-py", files, "test_batch", "batches.meta",
                  "labels", "label_names", CIFAR10_STATS, "CIFAR10")


@register_dataset("cifar100", "CIFAR-100, 32x32 RGB, 100 classes (cifar-100-python)")
def _load_cifar100(root: Path, download: bool) -> DatasetSplits:
    return _cifar("cifar100", root, download, "cifar-100-python", ["train"], "test", "meta", "fine_labels",
                  "fine_label_names", CIFAR100_STATS, "CIFAR100")


@register_dataset("svhn", "SVHN cropped digits, 32x32 RGB, 10 classes (train_32x32.mat, test_32x32.mat)")
def _load_svhn(root: Path, download: bool) -> DatasetSplits:
    import scipy.io

    base = root / "SVHN" if (root / "SVHN").is_dir() else root
    files = {"train": base / "train_32x32.mat", "test": base / "test_32x32.mat"}
    if download and not all(f.is_file() for f in files.values()):
        import torchvision.datasets as tvd

        for split in files:
            tvd.SVHN(str(base), split=split, download=True)
    out = []
    for path in files.values():
        if not path.is_file():
            raise _missing("svhn", root, f"SVHN/{path.name}")
        try:
            mat = scipy.io.loadmat(str(path))
            x = torch.from_numpy(np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.uint8).copy())
            y = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1) % 10)
        except Exception as exc:  # scipy raises many types on corrupt files
            raise GendistillError(f"svhn: {path} is corrupt ({exc}); re-download it") from exc
        out.append((x, y))
    return _to_splits("svhn", out[0], out[1], [str(i) for i in range(10)], SVHN_STATS, flip_ok=False)


@register_dataset("digits", "scikit-learn's bundled 8x8 digits (1797 images, no download; 80/20 split)")
def _load_digits(root: Path, download: bool) -> DatasetSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = torch.from_numpy((bunch.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[order[: len(labels) // 5]] = True
    train_px = pixels[~is_test].float() / 255.0
    stats = ((float(train_px.mean()),), (float(train_px.std()),))
    return _to_splits("digits", (pixels[~is_test], labels[~is_test]), (pixels[is_test], labels[is_test]),
                      [str(i) for i in range(10)], stats, flip_ok=False)


# ---------------------------------------------------------------------------------------- image folders
def _read_image_folder(folder: Path, classes: list[str], resolution: int, name: str) -> tuple[torch.Tensor, ...]:
    from PIL import Image, UnidentifiedImageError

    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".jpe", ".tif", ".tiff"}
    images, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in exts) if (folder / cls).is_dir() \
            else []
        if not files:
            raise DatasetNotFoundError(f"{name}: no images in {folder / cls}; every class needs a folder of images")
        for path in files:
            try:
                with Image.open(path) as img:
                    img = img.convert("RGB")
                    w, h = img.size
                    s = min(w, h)
                    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                    img = img.resize((resolution, resolution), Image.BILINEAR)
                    images.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
            except (UnidentifiedImageError, OSError) as exc:
                raise GendistillError(f"{name}: cannot read image {path} ({exc}); remove or replace it") from exc
            labels.append(label)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _find_split_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _folder_splits(name: str, base: Path, classes: list[str], class_names: list[str], resolution: int,
                   stats, val_fraction: float = 0.1) -> DatasetSplits:
    train_dir = _find_split_dir(base, ("train",))
    test_dir = _find_split_dir(base, ("val", "test"))
    if train_dir is None:
        raise DatasetNotFoundError(f"{name}: expected class folders under {base}/train/; pass --data-root DIR")
    train = _read_image_folder(train_dir, classes, resolution, name)
    if test_dir is not None:
        test = _read_image_folder(test_dir, classes, resolution, name)
    else:  # deterministic stratified hold-out
        x, y = train
        g = torch.Generator().manual_seed(0)
        hold = torch.zeros(len(y), dtype=torch.bool)
        for c in range(len(classes)):
            idx = torch.nonzero(y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            hold[idx[: max(1, int(len(idx) * val_fraction))]] = True
        train, test = (x[~hold], y[~hold]), (x[hold], y[hold])
    splits = _to_splits(name, train, test, class_names, stats, flip_ok=True)
    splits.source = {"folder": str(base.resolve()), "resolution": resolution,
                     "test_split": test_dir.name if test_dir is not None else f"{val_fraction:.0%} hold-out of train",
                     "normalisation": "ImageNet mean/std" if stats == IMAGENET_STATS else f"mean/std {stats}"}
    return splits


@register_dataset("imagefolder", "any folder of class folders: <root>/train/<class>/*, optional <root>/val|test/")
def _load_imagefolder(root: Path, download: bool, resolution: int = 32, path: str | None = None,
                      val_fraction: float = 0.1) -> DatasetSplits:
    base = Path(path).expanduser() if path else root
    train_dir = base / "train"
    if not train_dir.is_dir():
        raise DatasetNotFoundError(f"imagefolder: expected {train_dir}/<class>/<image> files; pass --data-root DIR")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"imagefolder: {train_dir} holds no class folders")
    return _folder_splits("imagefolder", base, classes, classes, resolution, IMAGENET_STATS, val_fraction)


def _subset_classes(name: str) -> tuple[list[str], list[str]]:
    text = resources.files("gendistill.data").joinpath(f"data_files/{name}.txt").read_text()
    rows = [line.split(maxsplit=1) for line in text.splitlines() if line.strip()]
    return [r[0] for r in rows], [r[1] if len(r) > 1 else r[0] for r in rows]


def _imagenet_subset(name: str, root: Path, resolution: int) -> DatasetSplits:
    wnids, names = _subset_classes(name)
    for candidate in (root / "imagenet", root / "ImageNet", root / name, root):
        if (candidate / "train" / wnids[0]).is_dir():
            return _folder_splits(name, candidate, wnids, names, resolution, IMAGENET_STATS)
    raise DatasetNotFoundError(
        f"{name}: expected an ImageNet-style folder <root>/imagenet/train/{wnids[0]}/ (and val/) under {root}; "
        "use the original ImageNet classes, not fastai's imagewoof2/imagenette2; pass --data-root DIR"
    )


for _subset, _desc in (("imagenette", "ImageNette"), ("imagewoof", "ImageWoof"), ("imageidc", "ImageIDC")):

    def _make(subset: str):
        def load(root: Path, download: bool, resolution: int = 128) -> DatasetSplits:
            return _imagenet_subset(subset, root, resolution)

        return load

    register_dataset(_subset, f"{_desc}: 10 ImageNet classes read from an ImageNet-style folder")(_make(_subset))
