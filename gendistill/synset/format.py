"""The synthetic-set format shared by every method.

A :class:`SyntheticSet` holds images in the space they were optimised in (normalised and maybe ZCA-whitened),
hard or soft labels, an optional learned learning rate, the preprocessing that defines that space, class
names and metadata (method, dataset, ipc, resolved config, seeds, timings). On disk it is a folder:

* ``synset.safetensors`` - images, labels, optional lr / source indices / ZCA matrices (no pickle);
* ``synset.json`` - metadata, preprocessing, shapes and the sha256 of the tensor file;
* ``grid.png`` - one row per class.

Saving is atomic (a temporary folder renamed into place); loading verifies the checksum, shapes and labels
and refuses anything inconsistent with one line. Importers read the reference repositories' outputs
(DC/DSA/DM ``res_*.pt``; MTT/DATM ``images_best.pt`` + ``labels_best.pt`` + ``lr_best.pt``) without running
pickled code unless ``trust_pickle=True``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

import torch

from gendistill.data.preprocessing import Preprocessing
from gendistill.utils.atomic import replace_dir, sha256_file, temp_dir_beside
from gendistill.utils.errors import GendistillError, SynsetFormatError

__all__ = ["SCHEMA_VERSION", "SyntheticSet", "imagefolder_names", "resolve_synset_dir", "save_grid"]

SCHEMA_VERSION = 1
TENSOR_FILE = "synset.safetensors"
META_FILE = "synset.json"


def imagefolder_names(class_names: list[str]) -> list[str]:
    """Folder names ``<NNN>_<class>`` that sort in label order (``ImageFolder`` sorts folders by name)."""
    width = max(3, len(str(len(class_names) - 1)))
    return [f"{i:0{width}d}_{name.replace('/', '_')}" for i, name in enumerate(class_names)]


def resolve_synset_dir(path: str | Path) -> Path:
    """The synthetic-set folder for ``path``: the folder itself, or the ``synset/`` of a run folder."""
    path = Path(path)
    if not (path / META_FILE).is_file() and (path / "synset" / META_FILE).is_file():
        return path / "synset"
    return path


def save_grid(pixels: torch.Tensor, labels: torch.Tensor, num_classes: int, path: str | Path,
              max_per_class: int = 20, upscale_to: int = 32) -> Path:
    """Write a PNG grid with one row per class (pixels in [0, 1], ``[N, C, H, W]``)."""
    from PIL import Image

    rows = []
    per_class = [torch.nonzero(labels == c).flatten()[:max_per_class] for c in range(num_classes)]
    width = max((len(p) for p in per_class), default=1) or 1
    c, h, w = pixels.shape[1:]
    scale = max(1, upscale_to // max(h, 1))
    blank = torch.ones(c, h, w)
    for idx in per_class:
        tiles = [pixels[i] for i in idx] + [blank] * (width - len(idx))
        rows.append(torch.cat([torch.nn.functional.pad(t, (1, 1, 1, 1), value=1.0) for t in tiles], dim=2))
    grid = torch.cat(rows, dim=1)
    if c == 1:
        grid = grid.expand(3, -1, -1)
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@dataclasses.dataclass
class SyntheticSet:
    """A distilled (or selected) training set.

    Attributes:
        images: ``[N, C, H, W]`` float32 in the model space described by ``preprocessing``.
        labels: ``[N]`` int64 hard labels or ``[N, K]`` float soft labels (logits or probabilities; see meta).
        class_names: one name per class.
        preprocessing: maps [0, 1] pixels to the model space and back.
        lr: learned evaluation learning rate (MTT/DATM), else None.
        source_indices: indices into the real training split for selection methods.
        meta: method, dataset, ipc, config, seed, timings, versions.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    preprocessing: Preprocessing
    lr: float | None = None
    source_indices: torch.Tensor | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------ basics
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def soft(self) -> bool:
        return self.labels.dim() == 2

    def hard_labels(self) -> torch.Tensor:
        """Class indices (argmax of soft labels)."""
        return self.labels.argmax(1) if self.soft else self.labels

    @property
    def ipc(self) -> int:
        """Images per class (the largest class count)."""
        return int(torch.bincount(self.hard_labels(), minlength=self.num_classes).max())

    def __len__(self) -> int:
        return self.images.shape[0]

    def validate(self) -> None:
        """Check shapes, dtypes and label range; raise SynsetFormatError in one line if inconsistent."""
        x, y = self.images, self.labels
        if x.dim() != 4:
            raise SynsetFormatError(f"synthetic images must be [N, C, H, W], got shape {tuple(x.shape)}")
        if y.shape[0] != x.shape[0]:
            raise SynsetFormatError(f"{x.shape[0]} images but {y.shape[0]} labels; the set is inconsistent")
        if y.dim() == 1:
            if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise SynsetFormatError(f"hard labels must be integers, got {y.dtype}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise SynsetFormatError(f"labels must lie in 0..{self.num_classes - 1}")
        elif y.dim() != 2 or y.shape[1] != self.num_classes:
            raise SynsetFormatError(f"soft labels must be [N, {self.num_classes}], got {tuple(y.shape)}")
        if x.shape[1] != len(self.preprocessing.mean):
            raise SynsetFormatError(
                f"images have {x.shape[1]} channels but the preprocessing has {len(self.preprocessing.mean)}"
            )
        if not torch.isfinite(x).all():
            raise SynsetFormatError("synthetic images contain NaN or inf values; the run diverged")

    def materialize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the evaluator trains on: ``(images, labels)``, decoded when ``meta["decoder"]`` names a
        decoder (e.g. IDC's multi-formation, :mod:`gendistill.decoders`)."""
        from gendistill.synset.decoders import decode

        return decode(self.images, self.labels, self.meta.get("decoder"), self.preprocessing)

    def to_pixels(self) -> torch.Tensor:
        """Images mapped back to [0, 1] pixels (for grids and PNG export)."""
        return self.preprocessing.invert(self.images)

    def subset(self, ipc: int) -> SyntheticSet:
        """The first ``ipc`` images of every class (e.g. IPC 10 from an IPC 50 generation)."""
        hard = self.hard_labels()
        keep = torch.cat([torch.nonzero(hard == c).flatten()[:ipc] for c in range(self.num_classes)])
        meta = {**self.meta, "ipc": ipc, "subset_of_ipc": self.ipc}
        src = self.source_indices[keep] if self.source_indices is not None else None
        return dataclasses.replace(self, images=self.images[keep], labels=self.labels[keep], source_indices=src,
                                   meta=meta)

    def with_hard_labels(self) -> SyntheticSet:
        """The same images with each soft label replaced by its argmax (DATM's label ablation: how much of a
        soft-label method's accuracy its labels carry). Recorded as ``meta["labels_hardened"]``; a hard-label set
        is returned unchanged."""
        if not self.soft:
            return self
        meta = {**self.meta, "labels_hardened": "argmax of the set's soft labels"}
        return dataclasses.replace(self, labels=self.hard_labels(), meta=meta)

    # --------------------------------------------------------------------------------------------- disk
    def save(self, directory: str | Path, grid: bool = True) -> Path:
        """Write the folder atomically (see the module docstring); returns its path."""
        from safetensors.torch import save_file

        directory = Path(directory)
        tmp = temp_dir_beside(directory)
        tensors = {"images": self.images.detach().float().contiguous().cpu(),
                   "labels": self.labels.detach().contiguous().cpu()}
        if self.source_indices is not None:
            tensors["source_indices"] = self.source_indices.long().contiguous().cpu()
        tensors.update({k: v.contiguous().cpu() for k, v in self.preprocessing.tensors().items()})
        save_file(tensors, str(tmp / TENSOR_FILE), metadata={"format": "gendistill.synset",
                                                             "schema_version": str(SCHEMA_VERSION)})
        meta = {
            "format": "gendistill.synset",
            "schema_version": SCHEMA_VERSION,
            "num_images": len(self),
            "image_shape": list(self.images.shape[1:]),
            "label_kind": "soft" if self.soft else "hard",
            "ipc": self.ipc,
            "class_names": self.class_names,
            "lr": self.lr,
            "preprocessing": self.preprocessing.describe(),
            "sha256": sha256_file(tmp / TENSOR_FILE),
            "meta": self.meta,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if grid:
            save_grid(self.to_pixels(), self.hard_labels(), self.num_classes, tmp / "grid.png")
        return replace_dir(tmp, directory)

    @classmethod
    def load(cls, directory: str | Path) -> SyntheticSet:
        """Read a folder written by :meth:`save`, verifying checksum, shapes and metadata."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = resolve_synset_dir(directory)
        meta_path, tensor_path = directory / META_FILE, directory / TENSOR_FILE
        if not directory.is_dir():
            raise SynsetFormatError(f"{directory} is not a folder; pass the folder a distill run wrote (…/synset)")
        if not meta_path.is_file() or not tensor_path.is_file():
            raise SynsetFormatError(f"{directory} lacks {META_FILE} or {TENSOR_FILE}; it is not a synthetic set")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise SynsetFormatError(f"{meta_path} is not valid JSON ({exc.msg}); the file is corrupt") from exc
        if meta.get("format") != "gendistill.synset":
            raise SynsetFormatError(f"{meta_path} is not a gendistill synthetic-set record")
        if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
            raise SynsetFormatError(f"{directory} uses schema {meta['schema_version']}; upgrade gendistill")
        if meta.get("sha256") and sha256_file(tensor_path) != meta["sha256"]:
            raise SynsetFormatError(
                f"{tensor_path} does not match the checksum in {META_FILE}: truncated or modified; re-export the set"
            )
        try:
            tensors = load_file(str(tensor_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise SynsetFormatError(f"{tensor_path} cannot be read ({exc}); the file is corrupt") from exc
        if "images" not in tensors or "labels" not in tensors:
            raise SynsetFormatError(f"{tensor_path} lacks images or labels")
        images = tensors["images"]
        if list(images.shape[1:]) != list(meta.get("image_shape", [])) or images.shape[0] != meta.get("num_images"):
            raise SynsetFormatError(f"{tensor_path} holds images of shape {tuple(images.shape)}, "
                                    f"but {META_FILE} says {meta.get('num_images')} x {meta.get('image_shape')}")
        pre = Preprocessing.from_description(meta.get("preprocessing", {}), tensors)
        return cls(images, tensors["labels"], list(meta["class_names"]), pre, meta.get("lr"),
                   tensors.get("source_indices"), dict(meta.get("meta", {})))

    # ------------------------------------------------------------------------------------------- export
    def decoded(self) -> SyntheticSet:
        """The set as training sees it: a set with a decoder (IDC's multi-formation) becomes its decoded images
        and repeated labels, with ``meta["decoded_from"]`` recording the decoder; any other set is returned as is."""
        spec = self.meta.get("decoder")
        if not spec:
            return self
        images, labels = self.materialize()
        meta = {k: v for k, v in self.meta.items() if k != "decoder"}
        meta["decoded_from"] = {"decoder": spec, "stored_images": len(self)}
        return dataclasses.replace(self, images=images, labels=labels, source_indices=None, meta=meta)

    def to_imagefolder(self, directory: str | Path, decoded: bool = True) -> Path:
        """Write de-normalised 8-bit PNGs as ``<NNN>_<class>/<i>.png``, folder names that sort in label order so
        that torchvision's ``ImageFolder`` assigns the same label indices, plus ``class_to_idx.json`` and
        ``metadata.jsonl`` (HF datasets' imagefolder; soft labels kept there). :meth:`from_imagefolder` reads it
        back to the same images (in 8 bits) and labels.

        ``decoded`` (default): a set with a decoder (IDC) is written as the decoded images a network trains on, so
        any downstream ``ImageFolder`` pipeline sees the right training set; ``False`` writes the stored mosaics
        and keeps the decoder in ``export.json`` (re-imported, they decode again)."""
        from PIL import Image

        if decoded and self.meta.get("decoder"):
            return self.decoded().to_imagefolder(directory, decoded=False)
        directory = Path(directory)
        tmp = temp_dir_beside(directory)
        pixels = (self.to_pixels().clamp(0, 1) * 255).round().to(torch.uint8)
        hard = self.hard_labels()
        folders = imagefolder_names(self.class_names)
        lines = []
        counters = [0] * self.num_classes
        for i in range(len(self)):
            c = int(hard[i])
            (tmp / folders[c]).mkdir(exist_ok=True)
            rel = f"{folders[c]}/{counters[c]:05d}.png"
            counters[c] += 1
            array = pixels[i].permute(1, 2, 0).numpy()
            Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(tmp / rel)
            record: dict[str, Any] = {"file_name": rel, "label": c, "class_name": self.class_names[c]}
            if self.soft:
                record["soft_label"] = [float(v) for v in self.labels[i]]
            lines.append(json.dumps(record))
        (tmp / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        (tmp / "class_to_idx.json").write_text(json.dumps({f: c for c, f in enumerate(folders)}, indent=1) + "\n")
        (tmp / "export.json").write_text(json.dumps({"class_names": self.class_names,
                                                     "preprocessing": self.preprocessing.describe(),
                                                     "lr": self.lr, "meta": self.meta}, indent=1, default=str))
        return replace_dir(tmp, directory)

    @classmethod
    def from_imagefolder(cls, directory: str | Path, dataset_spec: tuple[list[str], Preprocessing] | None = None,
                         method: str | None = None) -> SyntheticSet:
        """Read a folder written by :meth:`to_imagefolder` (or any ``<class>/<image>`` folder whose class
        folders sort in label order, as torchvision's ``ImageFolder`` assumes).

        Args:
            directory: the folder.
            dataset_spec: ``(class_names, preprocessing)`` of the dataset; default: the export's ``export.json``.
            method: method name to record (default: the exported set's).
        """
        import numpy as np
        from PIL import Image

        directory = Path(directory)
        if not directory.is_dir():
            raise SynsetFormatError(f"{directory} is not a folder of class folders")
        exported = json.loads((directory / "export.json").read_text()) if (directory / "export.json").is_file() \
            else {}
        if (directory / "class_to_idx.json").is_file():
            class_to_idx = json.loads((directory / "class_to_idx.json").read_text())
        else:
            class_to_idx = {d.name: i for i, d in enumerate(sorted(p for p in directory.iterdir() if p.is_dir()))}
        if dataset_spec is None:
            if not exported or exported["preprocessing"].get("zca"):
                raise SynsetFormatError(f"{directory} does not carry its preprocessing (no export.json, or ZCA); "
                                        "pass the dataset it was made from (--dataset)")
            dataset_spec = (exported["class_names"], Preprocessing.from_description(exported["preprocessing"], {}))
        names, pre = dataset_spec
        if len(class_to_idx) > len(names):
            raise SynsetFormatError(f"{directory} has {len(class_to_idx)} class folders but the dataset has "
                                    f"{len(names)} classes")
        soft: dict[str, list[float]] = {}
        if (directory / "metadata.jsonl").is_file():
            for line in (directory / "metadata.jsonl").read_text().splitlines():
                rec = json.loads(line)
                if "soft_label" in rec:
                    soft[rec["file_name"]] = rec["soft_label"]
        images, labels, soft_rows = [], [], []
        mode = "L" if len(pre.mean) == 1 else "RGB"
        for folder, c in sorted(class_to_idx.items(), key=lambda kv: kv[1]):
            if not (directory / folder).is_dir():
                raise SynsetFormatError(f"{directory} lacks the class folder {folder!r} named in class_to_idx.json")
            for f in sorted((directory / folder).iterdir()):
                if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
                    continue
                with Image.open(f) as img:
                    array = np.asarray(img.convert(mode) if img.mode != mode else img)
                array = array[:, :, None] if array.ndim == 2 else array
                if images and array.shape[:2] != tuple(images[0].shape[1:]):
                    raise SynsetFormatError(f"{f} is {array.shape[1]}x{array.shape[0]} but the first image is "
                                            f"{images[0].shape[2]}x{images[0].shape[1]}; a set needs one size")
                images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
                labels.append(int(c))
                soft_rows.append(soft.get(f"{folder}/{f.name}"))
        if not images:
            raise SynsetFormatError(f"{directory} holds no images in class folders")
        pixels = torch.stack(images).float() / 255.0
        label_tensor = torch.tensor(soft_rows) if all(r is not None for r in soft_rows) else torch.tensor(labels)
        meta = {**exported.get("meta", {}), "imported_from": str(directory)}
        if method:
            meta["method"] = method
        return cls(pre.apply(pixels), label_tensor, list(names), pre, lr=exported.get("lr"), meta=meta)


def environment_meta() -> dict[str, Any]:
    """Versions and time recorded with every set and run."""
    import os

    from gendistill._version import __version__

    info = {"gendistill": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    try:
        import subprocess

        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        if sha.returncode == 0:
            info["git_sha"] = sha.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def check_ipc(ipc: int, available: int | None = None) -> int:
    """Validate an IPC value (1..1000 and not more than the real images of the smallest class)."""
    if not isinstance(ipc, int) or ipc < 1:
        raise GendistillError(f"--ipc must be a positive integer, got {ipc!r}")
    if available is not None and ipc > available:
        raise GendistillError(f"--ipc {ipc} exceeds the {available} real images of the smallest class")
    return ipc
