"""Importers of other repositories' synthetic-set files into :class:`SyntheticSet`.

* DatasetCondensation's ``res_*.pt`` (DC, DSA, DM; also CAFE's copies) - :func:`import_dc_pt`;
* MTT/DATM's ``images_best.pt`` / ``labels_best.pt`` / ``lr_best.pt`` folders - :func:`import_mtt_dir`;
* KIP / Label Solve's released ``.npz`` files - :func:`import_kip_npz`.

``.pt`` files are read with ``weights_only`` unless the user passes ``trust_pickle`` (the documented exception).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.preprocessing import Preprocessing
from ..utils.errors import SynsetFormatError
from .format import SyntheticSet

__all__ = ["IMPORTERS", "import_dc_pt", "import_kip_npz", "import_mtt_dir"]


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    if not path.is_file():
        raise SynsetFormatError(f"{path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        if not trust_pickle and "weights_only" in str(exc):
            raise SynsetFormatError(
                f"{path} holds pickled Python objects besides tensors; if you trust its source, pass "
                "--trust-pickle (this runs code from the file)"
            ) from exc
        raise SynsetFormatError(f"{path} cannot be read ({type(exc).__name__}); the file is corrupt") from exc

def import_dc_pt(path: str | Path, dataset_spec: tuple[list[str], Preprocessing], method: str = "dc",
               experiment: int = 0, trust_pickle: bool = False) -> SyntheticSet:
    """Import a DatasetCondensation ``res_*.pt`` (``{'data': [[images, labels], ...], ...}``).

    Args:
        path: the ``.pt`` file.
        dataset_spec: ``(class_names, preprocessing)`` of the dataset it was distilled from.
        method: the method that produced it (recorded in meta).
        experiment: which of the stored experiments to take.
        trust_pickle: allow arbitrary pickled objects (runs code from the file).
    """
    obj = _torch_load(Path(path), trust_pickle)
    try:
        images, labels = obj["data"][experiment][0], obj["data"][experiment][1]
    except (KeyError, IndexError, TypeError) as exc:
        raise SynsetFormatError(f"{path} is not a DC res_*.pt file (expected {{'data': [[images, labels]]}})") \
            from exc
    names, pre = dataset_spec
    return SyntheticSet(images.float(), labels.long(), names, pre,
               meta={"method": method, "imported_from": str(path), "experiment": experiment})

def import_mtt_dir(directory: str | Path, dataset_spec: tuple[list[str], Preprocessing],
                 method: str = "mtt", trust_pickle: bool = False) -> SyntheticSet:
    """Import MTT/DATM ``images_best.pt``, ``labels_best.pt`` and optional ``lr_best.pt``."""
    directory = Path(directory)
    images = _torch_load(directory / "images_best.pt", trust_pickle)
    labels = _torch_load(directory / "labels_best.pt", trust_pickle)
    lr = None
    if (directory / "lr_best.pt").is_file():
        lr_obj = _torch_load(directory / "lr_best.pt", trust_pickle)
        lr = float(torch.as_tensor(lr_obj).reshape(-1)[0])
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise SynsetFormatError(f"{directory}: images_best.pt and labels_best.pt must each hold one tensor")
    names, pre = dataset_spec
    labels = labels.float() if labels.dim() == 2 else labels.long()
    return SyntheticSet(images.float(), labels, names, pre, lr=lr,
                        meta={"method": method, "imported_from": str(directory)})


def import_kip_npz(path: str | Path, dataset_spec: tuple[list[str], Preprocessing], method: str = "kip",
                 train_pixels: torch.Tensor | None = None) -> SyntheticSet:
    """Import a released KIP / Label Solve ``.npz`` (google-research ``kip/dataset.ipynb``; DC-Bench evaluates
    ``kip_<dataset>_ConvNet3_ssize<C*IPC>_zca_nol_noaug_ckpt1000.npz``).

    Assumed format (the KIP dataset notebook; read the same way by DC-Bench and KIP's ``nn_training.ipynb``):
    keys ``images`` ``[N, H, W, C]`` float (NHWC; NCHW is accepted) and ``labels`` ``[N, K]`` - one-hot - 1/K,
    or learned rows for ``_l_`` files (``support_images`` / ``support_labels`` and integer ``[N]`` labels are
    accepted too). Images are in KIP's space: per-channel standardisation with the training split's mean and
    population std over all pixels, then, for ``_zca_`` files, KIP's regularised ZCA (per-image centring and
    L2 normalisation, whitening with reg 0.1 x mean eigenvalue).

    Mapping into the dataset's space: without ZCA, the images are un-standardised with the statistics of
    ``train_pixels`` (uint8 ``[N, C, H, W]``; None: the file is assumed to use the dataset's normalisation)
    and normalised with ``dataset_spec``'s preprocessing - exact. ``_zca_`` files need the dataset loaded with
    ``--zca kip`` and are taken as they are - approximate where the dataset's normalisation differs from
    KIP's standardisation (CIFAR's DC statistics scale the channels ~1.2-1.3x more before the per-image
    normalisation). Labels: rows that are a one-hot (shifted by 0 or 1/K) become hard labels (the argmax, as
    DC-Bench); learned rows stay soft labels in KIP's target space (meta ``kip_label_space``).
    """
    path = Path(path)
    if not path.is_file():
        raise SynsetFormatError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise SynsetFormatError(f"{path} is not a readable .npz file ({exc})") from exc
    key_x = next((k for k in ("images", "support_images", "x") if k in arrays), None)
    key_y = next((k for k in ("labels", "support_labels", "y") if k in arrays), None)
    if key_x is None or key_y is None:
        raise SynsetFormatError(f"{path} lacks images/labels arrays (has {', '.join(arrays) or 'none'}); "
                                "expected a KIP .npz with keys 'images' and 'labels'")
    names, pre = dataset_spec
    channels, k = len(pre.mean), len(names)
    x = torch.from_numpy(np.asarray(arrays[key_x], dtype=np.float64))
    if x.dim() != 4 or channels not in (x.shape[1], x.shape[3]):
        raise SynsetFormatError(f"{path}: images of shape {tuple(x.shape)} are not [N, H, W, {channels}]")
    if x.shape[3] == channels and x.shape[1] != channels:
        x = x.permute(0, 3, 1, 2)
    y = torch.from_numpy(np.asarray(arrays[key_y]))
    meta: dict[str, Any] = {"method": method, "imported_from": str(path), "kip_reg": 1e-6}
    if y.dim() == 2:
        if y.shape[1] != k:
            raise SynsetFormatError(f"{path}: labels have {y.shape[1]} columns but the dataset has {k} classes")
        y = y.double()
        hot = torch.nn.functional.one_hot(y.argmax(1), k).double()
        if any(torch.allclose(y, hot - shift, atol=1e-5) for shift in (0.0, 1.0 / k)):
            y = y.argmax(1)
        else:
            y = y.float()
            meta["kip_label_space"] = "centred"
    elif y.dim() != 1:
        raise SynsetFormatError(f"{path}: labels must be [N, {k}] or [N], got {tuple(y.shape)}")
    labels = y.long() if y.dim() == 1 else y
    found = re.search(r"(ConvNet3|ConvNet|FC\d*)_ssize(\d+)(?:_(zca|nozca))?(?:_(l|nol))?(?:_(aug|noaug))?"
                      r"(?:_ckpt(\d+))?", path.name)
    if found:
        arch, ssize, zca_tag, lab, aug, ckpt = found.groups()
        meta["kip_file"] = {"architecture": arch, "support_size": int(ssize), "zca": zca_tag, "labels": lab,
                            "aug": aug, "ckpt": int(ckpt) if ckpt else None}
        if arch.startswith("ConvNet"):  # KIP's "ConvNet" = ConvNet3 with a leading conv/ReLU (nn_training)
            meta["kip_kernel"] = {"arch": "conv", "depth": 3, "pre_conv": arch == "ConvNet", "w_var": 2.0,
                                  "b_var": 0.01, "get": "ntk"}
    tag = found.group(3) if found else None  # no tag in the name: the file follows the dataset's space
    whitened = tag == "zca" or (tag is None and pre.zca is not None)
    if whitened and (pre.zca is None or pre.zca.variant != "kip"):
        raise SynsetFormatError(f"{path.name} holds KIP-ZCA images; load the dataset with --zca kip")
    if not whitened and pre.zca is not None:
        raise SynsetFormatError(f"{path.name} is not ZCA-whitened ('_nozca_' in its name) but the dataset "
                                "is; load it without --zca")
    if not whitened and train_pixels is not None:
        mean, std = _channel_stats(train_pixels)
        shape = (1, channels, 1, 1)
        x = pre.apply(x * std.view(shape) + mean.view(shape))
        meta["kip_standardisation"] = {"mean": mean.tolist(), "std": std.tolist()}
    return SyntheticSet(x.float(), labels, list(names), pre, meta=meta)


def _channel_stats(pixels: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population std over all pixels of uint8 ``[N, C, H, W]`` images, in [0, 1]."""
    total = torch.zeros(pixels.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, pixels.shape[0], chunk):
        x = pixels[start : start + chunk].double() / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    n = pixels.shape[0] * pixels.shape[2] * pixels.shape[3]
    mean = total / n
    return mean, (squares / n - mean * mean).clamp_min(0).sqrt()


#: ``gendistill import --format NAME`` -> importer.
IMPORTERS = {"dc": import_dc_pt, "mtt": import_mtt_dir, "kip_npz": import_kip_npz}
