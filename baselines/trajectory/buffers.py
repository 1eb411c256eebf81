"""Expert trajectories ("buffers") for trajectory matching (MTT, DATM; reference §2.7-2.8, details §4).

:func:`train_buffers` trains ``experts`` networks on the real training split with the reference recipe
(mtt-distillation ``buffer.py``): SGD at ``lr`` 0.01, momentum 0, weight decay 0, batch 256, shuffled batches,
non-siamese DSA on every real batch, and records the flattened parameters at initialisation and after every
epoch. ``optimizer="gsam"`` trains the DATM/FTD "flat trajectory" experts instead (DATM ``buffer_FTD.py``): GSAM
(Zhuang et al., ICLR 2022) around the same SGD, constant lr and rho (0.01), ``alpha`` 0.3, adaptive perturbation;
GSAM comes from the ``pytorch-optimizer`` package (a port of the GSAM reference code that DATM imports).

Folder layout::

    manifest.json                dataset, preprocessing, network, recipe, seeds, sha256 of every shard
    expert_000.safetensors       ``trajectory`` [epochs + 1, num_params] (float32), one row per snapshot
    expert_001.safetensors ...
    expert_003.part/             the expert in progress: ``epoch_007.safetensors`` per finished epoch

Every file is written atomically; the manifest is rewritten after every epoch. Training is resumable per
expert and per epoch: expert ``i`` initialises from ``derive_seed(seed, "expert", i, "init")`` and epoch ``e``
draws its batch order and augmentations from ``derive_seed(seed, "expert", i, "epoch", e)``, so a resumed
buffer holds exactly the parameters an uninterrupted one would (optimizer state, when it has any, is stored
beside the epoch snapshots). Asking an existing folder for more experts extends it.

:class:`ExpertBuffer` reads a buffer (one snapshot at a time, checksum verified on first use) and
:meth:`ExpertBuffer.check_compatible` refuses, in one line, a buffer made for another dataset, another
preprocessing (normalisation, ZCA) or another network when a distillation uses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gendistill.data.datasets import DatasetSplits, RealDataset
from gendistill.data.preprocessing import Preprocessing
from gendistill.nn.augment import DSA, FULL_DSA
from gendistill.nn.blocking import block_rows, blocked_mean_backward
from gendistill.nn.nets import create_network
from gendistill.utils.atomic import atomic_json, atomic_torch_save, atomic_write, sha256_file
from gendistill.utils.errors import ConfigError, GendistillError, NonFiniteLossError
from gendistill.utils.seeding import derive_seed, make_generator

__all__ = ["FORMAT", "BufferRecipe", "ExpertBuffer", "expert_optimizer", "flat_parameters", "train_buffers"]

FORMAT = "gendistill.buffer"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

@dataclasses.dataclass
class BufferRecipe:
    """How the experts are trained (defaults: mtt-distillation ``buffer.py``).

    Attributes:
        model: network-registry name of the experts (the student network of the distillation).
        epochs: training epochs per expert (snapshots: ``epochs + 1``).
        lr: SGD learning rate (``lr_teacher`` of the reference), constant.
        momentum: SGD momentum (0 in the reference).
        weight_decay: SGD weight decay (0 in the reference).
        batch_size: real images per step (``batch_train`` 256).
        dsa: non-siamese DSA on every real batch.
        dsa_strategy: DSA families (flip is dropped for digit datasets).
        optimizer: ``sgd`` (MTT) or ``gsam`` (DATM/FTD flat trajectories).
        rho: GSAM perturbation radius (``rho_max = rho_min``: constant).
        alpha: GSAM surrogate-gap coefficient.
        adaptive: GSAM's element-wise adaptive perturbation (DATM's default).
        images_per_class: train on a seeded class-balanced subset of this many images per class (0 = all).
    """

    model: str = "convnet"
    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    dsa: bool = True
    dsa_strategy: str = FULL_DSA
    optimizer: Literal["sgd", "gsam"] = "sgd"
    rho: float = 0.01
    alpha: float = 0.3
    adaptive: bool = True
    images_per_class: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.images_per_class < 0:
            raise ConfigError("buffer epochs, batch size and lr must be positive (images per class >= 0)")
        if self.optimizer not in ("sgd", "gsam"):
            raise ConfigError(f"unknown expert optimizer {self.optimizer!r}; use sgd or gsam")


# ------------------------------------------------------------------------------------------- helpers
def flat_parameters(net: nn.Module) -> torch.Tensor:
    """All parameters of ``net`` as one detached float32 CPU vector (``named_parameters`` order)."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).float().cpu()


def _network_record(net: nn.Module, name: str) -> dict[str, Any]:
    params = list(net.named_parameters())
    return {"name": name, "param_names": [n for n, _ in params], "param_shapes": [list(p.shape) for _, p in params],
            "num_params": int(sum(p.numel() for _, p in params))}


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, str(p),
                                           metadata=metadata))


def _interrupted_write(path: Path) -> bool:
    """A temporary file or folder of an atomic write that a kill interrupted (``.<name>.<random>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _load_tensor(path: Path, key: str) -> torch.Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))[key]
    except (SafetensorError, OSError, KeyError) as exc:
        raise GendistillError(f"{path} cannot be read ({type(exc).__name__}); delete it to retrain that "
                              "epoch") from exc


def _describe_space(desc: dict[str, Any]) -> str:
    zca = desc.get("zca")
    norm = desc.get("normalize", {})
    text = f"mean {norm.get('mean')} std {norm.get('std')}"
    return text + (f", ZCA {zca['variant']} {zca.get('fingerprint', '')}" if zca else ", no ZCA")


class _GSAMStep:
    """GSAM (``pytorch_optimizer.GSAM``) around SGD with constant lr and rho, as DATM's ``buffer_FTD.py``."""

    def __init__(self, net: nn.Module, base: torch.optim.Optimizer, recipe: BufferRecipe) -> None:
        try:
            from pytorch_optimizer import GSAM, ProportionScheduler
        except ImportError as exc:
            raise GendistillError("optimizer gsam needs the pytorch-optimizer package: pip install "
                                  "pytorch-optimizer") from exc
        self.base = base
        self.scheduler = torch.optim.lr_scheduler.StepLR(base, step_size=1, gamma=1.0)  # constant lr (gamma 1)
        rho = ProportionScheduler(self.scheduler, max_lr=recipe.lr, min_lr=recipe.lr, max_value=recipe.rho,
                                  min_value=recipe.rho)
        self.gsam = GSAM(net.parameters(), base, net, rho, alpha=recipe.alpha, adaptive=recipe.adaptive)

    def step(self, closure) -> torch.Tensor:
        def with_grad():  # GSAM.step runs under no_grad; the closure differentiates
            with torch.enable_grad():
                return closure()

        _, loss = self.gsam.step(with_grad)
        self.scheduler.step()
        self.gsam.update_rho_t()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)


class _SGDStep:
    def __init__(self, base: torch.optim.Optimizer) -> None:
        self.base = base

    def step(self, closure) -> torch.Tensor:
        _, loss = closure()
        self.base.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)


def expert_optimizer(net: nn.Module, recipe: BufferRecipe) -> _SGDStep | _GSAMStep:
    """The expert's optimiser: ``step(closure)`` where ``closure()`` zeroes the gradients, backpropagates the
    batch loss and returns ``(outputs, loss)``; GSAM calls it twice (at w and at the perturbed w + e(w))."""
    base = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)
    return _GSAMStep(net, base, recipe) if recipe.optimizer == "gsam" else _SGDStep(base)


def _train_epoch(net: nn.Module, opt: _SGDStep | _GSAMStep, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 dsa: DSA, generator: torch.Generator) -> torch.Tensor:
    """One pass over ``(x, y)`` in shuffled batches (the last one smaller), DSA per batch; mean batch loss."""
    net.train()
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator).to(x.device)  # one host-to-device copy per epoch
    total = torch.zeros((), device=x.device)
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        xb, yb = x[idx], y[idx]
        if dsa.enabled:
            xb = dsa(xb, generator)

        def closure(xb=xb, yb=yb):
            opt.base.zero_grad(set_to_none=True)
            return None, blocked_mean_backward(F.cross_entropy, net, xb, yb, rows=block_rows(net, xb))

        total += opt.step(closure).detach()
    return total / -(-n // batch_size)


# ------------------------------------------------------------------------------------------- reading
class ExpertBuffer:
    """A buffer folder written by :func:`train_buffers` (complete experts only).

    Args:
        path: the folder.
        in_memory: load every trajectory now (for small buffers in temporary folders); otherwise snapshots are
            read on demand (memory-mapped), each file's checksum verified the first time it is used.
    """

    def __init__(self, path: str | Path, in_memory: bool = False) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise GendistillError(f"{self.path} holds no {MANIFEST}; pass a folder written by `gendistill buffers`")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise GendistillError(f"{manifest_path} is not valid JSON ({exc.msg}); the buffer is corrupt") from exc
        if self.manifest.get("format") != FORMAT:
            raise GendistillError(f"{manifest_path} is not a gendistill expert buffer")
        if int(self.manifest.get("schema_version", 0)) > SCHEMA_VERSION:
            raise GendistillError(f"{self.path} uses buffer schema {self.manifest['schema_version']}; upgrade "
                                  "gendistill")
        self.experts = list(self.manifest.get("experts", []))
        if not self.experts:
            raise GendistillError(f"{self.path} holds no finished expert yet; run `gendistill buffers` on it")
        self._verified: set[int] = set()
        self._memory: dict[int, torch.Tensor] | None = None
        if in_memory:
            self._memory = {i: self._read(i, slice(None)) for i in range(len(self.experts))}

    # ------------------------------------------------------------------------------------- properties
    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def epochs(self) -> int:
        """Training epochs per expert (snapshots ``0..epochs``)."""
        return int(self.manifest["recipe"]["epochs"])

    @property
    def num_params(self) -> int:
        return int(self.manifest["network"]["num_params"])

    @property
    def recipe(self) -> dict[str, Any]:
        return dict(self.manifest["recipe"])

    @property
    def experts_sha256(self) -> str:
        """A short hash of the per-expert sha256 list (identifies the experts' contents, in order)."""
        joined = "\n".join(str(e.get("sha256", "")) for e in self.experts)
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        """What a distillation checkpoint records to check, on resume, that it reads the same buffer."""
        return {"experts": self.num_experts, "epochs": self.epochs, "experts_sha256": self.experts_sha256}

    def summary(self) -> dict[str, Any]:
        """What a distillation records about the buffer it used."""
        m = self.manifest
        return {"path": str(self.path), "experts": self.num_experts, "epochs": self.epochs,
                "network": m["network"]["name"], "recipe": m["recipe"], "seed": m.get("seed"),
                "train_images": m.get("train_images"), "subset": m.get("subset"),
                "manifest_sha256": hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()[:16]}

    # ------------------------------------------------------------------------------------- checking
    def check_compatible(self, train: RealDataset, model: str) -> None:
        """Refuse, in one line, a buffer made for another dataset, preprocessing or network."""
        m = self.manifest
        if m.get("dataset") != train.name or list(m.get("image_shape", [])) != list(train.image_shape) \
                or int(m.get("num_classes", -1)) != train.num_classes:
            raise GendistillError(
                f"buffer {self.path} was trained on {m.get('dataset')} {tuple(m.get('image_shape', []))} with "
                f"{m.get('num_classes')} classes, not {train.name} {tuple(train.image_shape)}; train experts for this "
                "dataset (gendistill buffers)")
        mine = train.preprocessing.describe()
        if not Preprocessing.same_description(m["preprocessing"], mine):
            raise GendistillError(
                f"buffer {self.path} was trained with other preprocessing ({_describe_space(m['preprocessing'])}) "
                f"than this data ({_describe_space(mine)}); use the same normalisation/ZCA (--zca) as the buffer")
        c, h, _ = train.image_shape
        expected = _network_record(create_network(model, c, train.num_classes, h, seed=0), model)
        net = m["network"]
        if net.get("name") != model or net.get("param_shapes") != expected["param_shapes"]:
            raise GendistillError(
                f"buffer {self.path} holds {net.get('name')} experts ({net.get('num_params')} parameters) but the "
                f"distillation uses {model} ({expected['num_params']}); set model={net.get('name')} or train "
                f"{model} experts")

    # ------------------------------------------------------------------------------------- snapshots
    def _file(self, expert: int) -> Path:
        return self.path / self.experts[expert]["file"]

    def _read(self, expert: int, rows: slice | int) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        path = self._file(expert)
        if expert not in self._verified:
            if not path.is_file():
                raise GendistillError(f"{path} is missing; the buffer is incomplete (rerun gendistill buffers)")
            if sha256_file(path) != self.experts[expert]["sha256"]:
                raise GendistillError(f"{path} does not match its checksum in {MANIFEST}: truncated or modified; "
                                      "delete it and rerun gendistill buffers to retrain that expert")
            self._verified.add(expert)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                return fh.get_slice("trajectory")[rows]
        except (SafetensorError, OSError) as exc:
            raise GendistillError(f"{path} cannot be read ({exc}); the buffer is corrupt") from exc

    def snapshot(self, expert: int, epoch: int) -> torch.Tensor:
        """Flat parameters of ``expert`` after ``epoch`` epochs (0 = initialisation)."""
        if not 0 <= epoch <= self.epochs:
            raise GendistillError(f"epoch {epoch} outside the buffer's 0..{self.epochs}")
        if self._memory is not None:
            return self._memory[expert][epoch].clone()
        return self._read(expert, epoch).clone()

    def trajectory(self, expert: int) -> torch.Tensor:
        """All snapshots of ``expert``: ``[epochs + 1, num_params]``."""
        if self._memory is not None:
            return self._memory[expert].clone()
        return self._read(expert, slice(None))


# ------------------------------------------------------------------------------------------- writing
def _subset_indices(train: RealDataset, per_class: int, seed: int) -> torch.Tensor:
    if per_class > int(train.class_counts.min()):
        raise GendistillError(f"--images-per-class {per_class} exceeds the {int(train.class_counts.min())} images of "
                              f"the smallest class of {train.name}")
    idx = train.sample_indices(per_class, make_generator(derive_seed(seed, "buffer-subset"))).reshape(-1)
    return idx.sort().values


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest that must match for a buffer to be resumed or extended."""
    keys = ("dataset", "image_shape", "num_classes", "train_images", "subset", "preprocessing", "network", "recipe",
            "seed")
    return {k: manifest.get(k) for k in keys}


def train_buffers(data: RealDataset | DatasetSplits, out: str | Path, experts: int = 100, epochs: int | None = None,
                  zca: str | None = None, *, recipe: BufferRecipe | None = None, seed: int = 0,
                  device: str | torch.device = "cpu", test_accuracy: bool = True, progress: bool = True,
                  **recipe_fields: Any) -> ExpertBuffer:
    """Train (or resume, or extend) ``experts`` expert trajectories into the folder ``out``.

    Args:
        data: the real training split (or the dataset's splits; then each finished expert's test accuracy is
            recorded when ``test_accuracy``). Its preprocessing (normalisation, ZCA) is the buffer's.
        out: the buffer folder (created; an existing buffer made with the same settings is resumed/extended).
        experts: number of experts the folder should hold.
        epochs: training epochs per expert (overrides ``recipe.epochs``).
        zca: the ZCA variant the data must carry (``None`` = no check; recorded from the data in any case).
        recipe: the training recipe (defaults: the reference ``buffer.py``); ``recipe_fields`` override fields.
        seed: base seed (see the module docstring for the per-expert and per-epoch derivation).
        device: where to train.
        test_accuracy: record each finished expert's final test accuracy (needs splits).
        progress: show a progress bar.

    Returns:
        the finished :class:`ExpertBuffer`.
    """
    from tqdm.auto import tqdm

    from gendistill.evaluation.trainer import split_accuracy
    from gendistill.synset.format import environment_meta

    train = data.train if isinstance(data, DatasetSplits) else data
    test = data.test if isinstance(data, DatasetSplits) and test_accuracy else None
    recipe = dataclasses.replace(recipe or BufferRecipe(), **recipe_fields)
    if epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=int(epochs))
    if experts < 1:
        raise ConfigError("--experts must be at least 1")
    have_zca = train.preprocessing.zca.variant if train.preprocessing.zca is not None else None
    if zca is not None and zca != (have_zca or "none"):
        raise GendistillError(f"buffers requested with ZCA {zca!r} but the data carries {have_zca or 'none'}; load "
                              "the dataset with the same --zca")
    device = torch.device(device)
    dsa = DSA.for_dataset(train.flip_ok, recipe.dsa_strategy) if recipe.dsa else DSA("none")
    c, h, _ = train.image_shape
    probe = create_network(recipe.model, c, train.num_classes, h, seed=0)
    subset = None
    used = train
    if recipe.images_per_class:
        idx = _subset_indices(train, recipe.images_per_class, seed)
        used = train.subset(idx)
        subset = {"images_per_class": recipe.images_per_class, "rule": "sample_indices(seeded by derive_seed(seed, "
                  "'buffer-subset'))", "indices_sha256": hashlib.sha256(idx.numpy().tobytes()).hexdigest()[:16]}
    out = Path(out)
    manifest: dict[str, Any] = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "dataset": train.name,
        "image_shape": list(train.image_shape), "num_classes": train.num_classes,
        "train_images": len(used), "subset": subset,
        "preprocessing": train.preprocessing.describe(),
        "network": _network_record(probe, recipe.model),
        "recipe": {**dataclasses.asdict(recipe), "dsa_strategy": dsa.strategy if dsa.enabled else "",
                   "lr_schedule": "constant", "loss": "cross_entropy"},
        "seed": seed,
        "seed_rule": "expert i: init derive_seed(seed, 'expert', i, 'init'); epoch e (batch order and DSA) "
                     "derive_seed(seed, 'expert', i, 'epoch', e)",
        "experts": [], "in_progress": None, "target_experts": experts,
    }
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        try:
            saved = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise GendistillError(f"{manifest_path} is corrupt ({exc.msg}); choose another --out") from exc
        mine, theirs = _identity(json.loads(json.dumps(manifest))), _identity(saved)
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        if diff:
            raise GendistillError(f"{out} holds a buffer made with other settings ({', '.join(diff)}); use the same "
                                  "settings to resume or extend it, or another --out")
        manifest["experts"] = saved.get("experts", [])
        manifest["created"] = saved.get("created")
    elif out.exists() and any(not _interrupted_write(p) for p in out.iterdir()):
        raise GendistillError(f"{out} is not empty and holds no {MANIFEST}; choose another --out")
    manifest.setdefault("created", None)
    manifest["created"] = manifest["created"] or time.strftime("%Y-%m-%dT%H:%M:%S")
    manifest["environment"] = environment_meta()
    out.mkdir(parents=True, exist_ok=True)
    if not manifest_path.is_file():  # the record comes first: whatever a kill leaves later is resumable
        atomic_json(manifest_path, manifest)
    x_all = used.images().to(device)
    y_all = used.labels.to(device)
    done = {int(e["index"]) for e in manifest["experts"]}
    todo = [i for i in range(experts) if i not in done]
    bar = tqdm(total=len(todo) * recipe.epochs, unit="epoch", disable=not progress, leave=False,
               desc=f"experts {recipe.model} on {train.name} ({len(used)} images)")
    for i in todo:
        init_seed = derive_seed(seed, "expert", i, "init")
        net = create_network(recipe.model, c, train.num_classes, h, seed=init_seed).to(device)
        opt = expert_optimizer(net, recipe)
        part = out / f"expert_{i:03d}.part"
        snaps = [flat_parameters(net)]
        start = time.perf_counter()
        first = 0
        while (part / f"epoch_{first + 1:03d}.safetensors").is_file() and first < recipe.epochs:
            first += 1
        if first:
            snaps += [_load_tensor(part / f"epoch_{e:03d}.safetensors", "params") for e in range(1, first + 1)]
            torch.nn.utils.vector_to_parameters(snaps[-1].to(device, copy=True), net.parameters())
            if (part / "optimizer.pt").is_file():
                opt.load_state_dict(torch.load(part / "optimizer.pt", map_location=device, weights_only=True))
            bar.update(first)
        loss = torch.zeros(())
        for e in range(first, recipe.epochs):
            loss = _train_epoch(net, opt, x_all, y_all, recipe.batch_size, dsa,
                                make_generator(derive_seed(seed, "expert", i, "epoch", e)))
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"expert {i} loss became NaN/inf in epoch {e + 1}; lower the lr")
            snaps.append(flat_parameters(net))
            _save_tensors(part / f"epoch_{e + 1:03d}.safetensors", {"params": snaps[-1]})
            if opt.state_dict()["state"]:
                atomic_torch_save(part / "optimizer.pt", opt.state_dict())
            manifest["in_progress"] = {"index": i, "epochs_done": e + 1}
            atomic_json(manifest_path, manifest)
            bar.update(1)
        name = f"expert_{i:03d}.safetensors"
        _save_tensors(out / name, {"trajectory": torch.stack(snaps)},
                      metadata={"format": FORMAT, "expert": str(i), "epochs": str(recipe.epochs)})
        record = {"index": i, "file": name, "sha256": sha256_file(out / name), "epochs": recipe.epochs,
                  "init_seed": init_seed, "final_train_loss": float(loss), "seconds": time.perf_counter() - start}
        if test is not None:
            record["test_accuracy"] = split_accuracy(net, test, device=device)
        manifest["experts"] = sorted([*manifest["experts"], record], key=lambda r: r["index"])
        manifest["in_progress"] = None
        atomic_json(manifest_path, manifest)
        shutil.rmtree(part, ignore_errors=True)
    bar.close()
    atomic_json(manifest_path, manifest)
    return ExpertBuffer(out)
