"""Benchmark specs: a YAML matrix of methods x datasets x IPC x distillation seeds x protocols x evaluation nets.

```yaml
name: cpu-mnist
methods: [random, herding, {name: dm, preset: cpu, set: [iterations=100]}]
datasets: [mnist]
ipc: [1, 10]
distill_seeds: 1          # seeds 0..n-1 (or a list of seeds)
sample_seeds: [0, 1, 2]   # generative methods: one set per sampling seed from the same trained model
# an entry may narrow both: {name: minimax, preset: cpu, datasets: [mnist], sample_seeds: [0]}
# or take its own seeds: {name: random, distill_seeds: [1, 2]}
protocols: [dc]           # default: each method's own protocol
eval_models: [convnet]    # cross-architecture: convnet, resnet_ap10, resnet18, vgg11, alexnet, timm:<name>
runs: 3
epochs: 300               # optional; fewer than the protocol's marks the cells reduced ({ipc: epochs} per IPC)
network_epochs: {lenet: 1000}  # optional per-network epochs, over `epochs` (this package's cross-architecture recipe)
teacher_epochs: 2         # optional; the teacher's epochs in protocols with one (fewer than the preset's: reduced)
eval_count: 5             # optional; tests during training for a protocol's best-of figure (fewer: reduced)
```

Generative methods share their trained stages across cells (``shared_stages``): cells that differ only in how
they sample (guidance, sampler, sampling seed, IPC) reuse one pretrained and one fine-tuned model, kept in
``<out>/stages/`` under a hash of the settings that made them.

Lists expand into the matrix; unknown keys, methods, datasets, protocols or networks are refused in one line.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from gendistill.presets import config_root
from gendistill.utils.config import read_yaml
from gendistill.utils.errors import ConfigError

__all__ = ["REFERENCE_METHOD", "BenchSpec", "DistillCell", "EvalCell", "MethodEntry", "load_spec", "parse_spec"]

REFERENCE_METHOD = "random"


@dataclasses.dataclass(frozen=True)
class MethodEntry:
    """A method with its preset and ``--set`` overrides, and optionally a label of its own (an experiment's arm
    name, e.g. ``minimax_g4``)."""

    name: str
    preset: str | None = None
    set: tuple[str, ...] = ()
    name_label: str | None = None
    datasets: tuple[str, ...] | None = None  # only these of the spec's datasets (None: all)
    sample_seeds: tuple[int, ...] | None = None  # this entry's sampling seeds (None: the spec's)
    distill_seeds: tuple[int, ...] | None = None  # this entry's distillation seeds (None: the spec's)

    @property
    def label(self) -> str:
        """A folder-safe label: the entry's own ``label``, else ``dm``, ``dm-cpu``, ``dm-cpu-iterations100``; long
        override values (paths) are shortened to a hash."""
        import hashlib

        if self.name_label:
            return re.sub(r"[^A-Za-z0-9_.+-]+", "-", self.name_label)
        parts = [self.name] + ([self.preset] if self.preset else [])
        for o in self.set:
            key, _, value = o.partition("=")
            safe = re.sub(r"[^A-Za-z0-9.+-]+", "", value)
            if len(safe) > 16:
                safe = hashlib.sha1(value.encode()).hexdigest()[:8]
            parts.append(re.sub(r"[^A-Za-z0-9]+", "", key) + safe)
        return "-".join(parts)


@dataclasses.dataclass
class BenchSpec:
    """A benchmark matrix (see the module docstring).

    Attributes:
        methods: method entries (a name or ``{name, preset, set}``).
        datasets: dataset names.
        ipc: images per class.
        distill_seeds: number of seeded distillations (seeds 0..n-1) or an explicit list.
        sample_seeds: sampling seeds of the methods that have a ``sample_seed`` setting (generative ones): one set
            per seed, all drawn from the model the distillation seed trained (empty = the distillation seed).
        protocols: evaluation protocols (empty = each method's own protocol).
        eval_models: evaluation networks.
        runs: evaluation networks trained per cell.
        epochs: evaluation epochs, or ``{ipc: epochs}`` (None = the protocol's; fewer marks the cells reduced).
        network_epochs: ``{network: epochs}`` that replace ``epochs`` for those evaluation networks: this package's
            per-network recipe for cross-architecture tables (e.g. LeNet fails to train in a reduced 100-epoch run
            but trains reliably at the protocol's 1000; ``docs/results.md``), recorded in each cell.
        test_subset: test on a class-balanced subset of this many images (reduced, labelled).
        teacher_epochs: training epochs of the teacher in protocols that have one (``teacher``); None = the
            protocol's, fewer marks those cells reduced.
        eval_count: how many times protocols with a best-of figure (``eval_count`` > 0, e.g. ``teacher``) test
            during training; None = the protocol's, fewer marks those cells reduced.
        name: the benchmark's name (page title).
        resolution: image size for folder datasets.
        cpus_per_cell: CPUs a cell asks Ray for.
        gpus_per_cell: GPUs a cell asks Ray for.
        device: where cells run (``cpu``, ``cuda``).
        checkpoint_every: distillation iterations between checkpoints. A generative method's training stages
            (pretraining, fine-tuning) keep their own ``checkpoint_every`` setting (2000 steps in the presets); set
            it in the method entry (``set: [checkpoint_every=500]``; it does not change the stage's hash).
        quality: write each distilled set's set-quality report (:mod:`gendistill.evaluation.metrics`) to
            ``quality.json``.
        shared_stages: generative methods keep their trained stages in ``<out>/stages/`` and reuse them across
            cells with the same training settings.
        eval_ipc: IPCs whose sets are evaluated (empty = all); the others get only the set-quality report.
    """

    methods: list[MethodEntry]
    datasets: list[str]
    ipc: list[int]
    distill_seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    sample_seeds: list[int] = dataclasses.field(default_factory=list)
    protocols: list[str] = dataclasses.field(default_factory=list)
    eval_models: list[str] = dataclasses.field(default_factory=lambda: ["convnet"])
    runs: int = 5
    epochs: int | dict[int, int] | None = None
    network_epochs: dict[str, int] = dataclasses.field(default_factory=dict)
    test_subset: int | None = None
    teacher_epochs: int | None = None
    eval_count: int | None = None
    name: str = "benchmark"
    resolution: int | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0
    device: str = "cpu"
    checkpoint_every: int = 100
    quality: bool = True
    shared_stages: bool = True
    eval_ipc: list[int] = dataclasses.field(default_factory=list)

    def distill_cells(self) -> list[DistillCell]:
        """One cell per (method entry, dataset, IPC, distillation seed[, sampling seed])."""
        return [DistillCell(m, d, k, s, ss) for d in self.datasets for k in self.ipc for m in self.methods
                if m.datasets is None or d in m.datasets
                for s in (self.distill_seeds if m.distill_seeds is None else m.distill_seeds)
                for ss in self._sample_axis(m)]

    def _sample_axis(self, method: MethodEntry) -> list[int | None]:
        seeds = self.sample_seeds if method.sample_seeds is None else method.sample_seeds
        if not seeds:
            return [None]
        from gendistill.registry import get_method

        fields = {f.name for f in dataclasses.fields(get_method(method.name).config_cls)}
        return list(seeds) if "sample_seed" in fields else [None]

    def epochs_for(self, ipc: int, model: str | None = None) -> int | None:
        """The evaluation epochs of cells at ``ipc`` on network ``model`` (None: the protocol's own)."""
        if model in self.network_epochs:
            return self.network_epochs[model]
        if isinstance(self.epochs, dict):
            return self.epochs.get(ipc)
        return self.epochs

    def eval_cells(self, cell: DistillCell) -> list[EvalCell]:
        """The evaluation cells of one distillation: protocols x evaluation networks.

        Without explicit ``protocols`` each method gets its own; the ``random`` reference is evaluated under every
        protocol of the matrix, so that each method has a random baseline measured the same way (DD-Ranking's IOR).
        """
        from gendistill.registry import get_method

        if self.eval_ipc and cell.ipc not in self.eval_ipc:
            return []
        if self.protocols:
            protocols = self.protocols
        elif cell.method.name == REFERENCE_METHOD:
            protocols = list(dict.fromkeys(get_method(m.name).default_eval for m in self.methods))
        else:
            protocols = [get_method(cell.method.name).default_eval]
        return [EvalCell(cell, p, net) for p in protocols for net in self.eval_models]

    def settings(self, ipc: int, model: str | None = None, protocol: str | None = None) -> dict[str, Any]:
        """The evaluation settings a stored result at ``ipc`` on network ``model`` under ``protocol`` must match to be
        reused (``teacher_epochs`` and ``eval_count`` only for protocols they apply to: other cells stay current)."""
        out = {"runs": self.runs, "epochs": self.epochs_for(ipc, model), "test_subset": self.test_subset,
               "device": self.device}
        preset = _preset(protocol) if protocol is not None else None
        if self.teacher_epochs is not None and preset is not None and preset.teacher:
            out["teacher_epochs"] = self.teacher_epochs
        if self.eval_count is not None and preset is not None and preset.eval_count:
            out["eval_count"] = self.eval_count
        return out

    def overrides(self, protocol: str) -> dict[str, int]:
        """The spec's overrides of ``protocol``'s teacher epochs and test count, where they apply."""
        settings = self.settings(0, None, protocol)
        return {k: settings[k] for k in ("teacher_epochs", "eval_count") if k in settings}

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["methods"] = [{"name": m.name, "preset": m.preset, "set": list(m.set),
                           **({"label": m.name_label} if m.name_label else {}),
                           **({"datasets": list(m.datasets)} if m.datasets is not None else {}),
                           **({"sample_seeds": list(m.sample_seeds)} if m.sample_seeds is not None else {}),
                           **({"distill_seeds": list(m.distill_seeds)} if m.distill_seeds is not None else {})}
                          for m in self.methods]
        return out


@dataclasses.dataclass(frozen=True)
class DistillCell:
    """One synthetic set of the matrix; its run folder is ``runs/<id>/``."""

    method: MethodEntry
    dataset: str
    ipc: int
    seed: int
    sample_seed: int | None = None

    @property
    def id(self) -> str:
        base = f"{self.method.label}_{self.dataset}_ipc{self.ipc}_s{self.seed}"
        return base if self.sample_seed is None else f"{base}_ss{self.sample_seed}"


@dataclasses.dataclass(frozen=True)
class EvalCell:
    """One evaluation of a synthetic set; its result is ``runs/<distill id>/eval/<protocol>__<net>.json``."""

    distill: DistillCell
    protocol: str
    model: str

    @property
    def key(self) -> str:
        """``<protocol>__<network>`` with the network made folder-safe (``timm:x/y`` -> ``timm-x-y``)."""
        return f"{self.protocol}__{self.model.replace(':', '-').replace('/', '-')}"

    @property
    def id(self) -> str:
        return f"{self.distill.id}__{self.key}"

    @property
    def file_name(self) -> str:
        return f"{self.key}.json"


_LIST_KEYS = ("methods", "datasets", "ipc", "protocols", "eval_models", "eval_ipc")


def _preset(protocol: str) -> Any:
    """The registered protocol preset named ``protocol`` (None for a method's own evaluator)."""
    from gendistill.evaluation.protocols import PROTOCOL_ALIASES, PROTOCOLS

    return PROTOCOLS.get(PROTOCOL_ALIASES.get(protocol, protocol))


def _method_entry(item: Any) -> MethodEntry:
    if isinstance(item, str):
        return MethodEntry(item)
    if not isinstance(item, dict) or "name" not in item:
        raise ConfigError(f"a method entry must be a name or {{name, preset, set}}, got {item!r}")
    unknown = sorted(set(item) - {"name", "preset", "set", "label", "datasets", "sample_seeds", "distill_seeds"})
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in method entry {item['name']!r}; use name, preset, set, "
                          "label, datasets, sample_seeds, distill_seeds")
    overrides = item.get("set") or []
    if isinstance(overrides, dict):
        overrides = [f"{k}={v}" for k, v in overrides.items()]
    label = str(item["label"]) if item.get("label") else None
    lists = {}
    for key, kind in (("datasets", str), ("sample_seeds", int), ("distill_seeds", int)):
        value = item.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} of method entry {item['name']!r} must be a list of "
                              f"{'names' if kind is str else 'integers'}, got {value!r}")
        lists[key] = tuple(value)
    return MethodEntry(str(item["name"]), item.get("preset"), tuple(str(o) for o in overrides), label, **lists)


def _check_network(name: str) -> None:
    if name.lower().startswith("timm:"):
        return
    from gendistill.nn.nets import _CONVNET_RE, list_networks

    if _CONVNET_RE.match(name.lower()) is None and name.lower() not in list_networks():
        raise ConfigError(f"unknown evaluation network {name!r} in the spec; see `gendistill networks`")


def parse_spec(data: dict[str, Any], source: str = "spec") -> BenchSpec:
    """Validate a spec mapping: unknown keys, methods, datasets, protocols and networks are one-line errors."""
    from gendistill.data.datasets import list_datasets
    from gendistill.evaluation.protocols import CUSTOM_EVALUATORS, PROTOCOL_ALIASES, PROTOCOLS
    from gendistill.registry import list_methods

    fields = {f.name for f in dataclasses.fields(BenchSpec)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {source}; valid keys: {', '.join(sorted(fields))}")
    for key in ("methods", "datasets", "ipc"):
        if not data.get(key):
            raise ConfigError(f"{source} needs a non-empty {key!r} list")
    values = dict(data)
    for key in _LIST_KEYS:
        if key in values and not isinstance(values[key], list):
            values[key] = [values[key]]
    values["methods"] = [_method_entry(m) for m in values["methods"]]
    samples = values.get("sample_seeds") or []
    if not isinstance(samples, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in samples):
        raise ConfigError(f"sample_seeds in {source} must be a list of integer seeds")
    epochs = values.get("epochs")
    if isinstance(epochs, dict) and any(isinstance(v, bool) or not isinstance(v, int) or v < 1 or
                                        not isinstance(k, int) for k, v in epochs.items()):
        raise ConfigError(f"epochs in {source} must be an integer or a mapping IPC -> integer, got {epochs!r}")
    per_net = values.get("network_epochs") or {}
    if not isinstance(per_net, dict) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                            for v in per_net.values()):
        raise ConfigError(f"network_epochs in {source} must map network names to positive integers, got {per_net!r}")
    stray_nets = sorted(set(per_net) - {str(n) for n in values.get("eval_models") or ["convnet"]})
    if stray_nets:
        raise ConfigError(f"network_epochs in {source} names {stray_nets[0]!r}, which eval_models does not list")
    values["network_epochs"] = {str(k): v for k, v in per_net.items()}
    seeds = values.get("distill_seeds", 1)
    if isinstance(seeds, bool) or not (isinstance(seeds, int) and seeds >= 1 or isinstance(seeds, list) and seeds
                                       and all(isinstance(x, int) for x in seeds)):
        raise ConfigError(f"distill_seeds in {source} must be a positive count or a list of integer seeds")
    values["distill_seeds"] = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    int_keys = ("runs", "test_subset", "resolution", "teacher_epochs", "eval_count")
    for key in (*int_keys, *(() if isinstance(epochs, dict) else ("epochs",))):
        if values.get(key) is not None and (isinstance(values[key], bool) or not isinstance(values[key], int)):
            raise ConfigError(f"{key} in {source} must be an integer, got {values[key]!r}")
    methods = set(list_methods())  # also registers the method packages' evaluators
    for m in values["methods"]:
        if m.name not in methods:
            raise ConfigError(f"unknown method {m.name!r} in {source}; available: {', '.join(sorted(methods))}")
    for d in values["datasets"]:
        if d not in list_datasets():
            raise ConfigError(f"unknown dataset {d!r} in {source}; available: {', '.join(list_datasets())}")
    for m in values["methods"]:
        stray = sorted(set(m.datasets or ()) - set(values["datasets"]))
        if stray:
            raise ConfigError(f"method entry {m.label!r} in {source} names dataset {stray[0]!r}, which the spec's "
                              f"datasets ({', '.join(values['datasets'])}) do not include")
    for p in values.get("protocols") or []:
        if p not in PROTOCOLS and p not in CUSTOM_EVALUATORS and p not in PROTOCOL_ALIASES:
            raise ConfigError(f"unknown protocol {p!r} in {source}; use one of "
                              f"{', '.join([*PROTOCOLS, *CUSTOM_EVALUATORS])}")
    for net in values.get("eval_models") or ["convnet"]:
        _check_network(str(net))
    if any(not isinstance(k, int) or k < 1 for k in values["ipc"]):
        raise ConfigError(f"ipc values in {source} must be positive integers")
    if int(values.get("runs", 5)) < 1:
        raise ConfigError(f"runs in {source} must be at least 1")
    if values.get("teacher_epochs") is not None and values["teacher_epochs"] < 1:
        raise ConfigError(f"teacher_epochs in {source} must be at least 1")
    if values.get("eval_count") is not None and values["eval_count"] < 0:
        raise ConfigError(f"eval_count in {source} must be 0 or more")
    try:
        spec = BenchSpec(**values)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    ids = [c.id for c in spec.distill_cells()]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{source} lists the cell {duplicates[0]} twice (a repeated method entry, dataset, IPC or "
                          "seed); remove the duplicate")
    from gendistill.presets import preset_file

    for m in spec.methods:  # a missing preset fails now, not halfway through the matrix
        if m.preset:
            for d in spec.datasets:
                for k in spec.ipc:
                    preset_file(m.name, d, k, m.preset)
    return spec


def load_spec(path: str | Path) -> BenchSpec:
    """Read and validate a spec YAML (a name without a path looks in the packaged ``configs/bench/``)."""
    p = Path(path)
    if not p.is_file() and not p.suffix:
        packaged = config_root() / "bench" / f"{p.name}.yaml"
        if packaged.is_file():
            p = packaged
    return parse_spec(read_yaml(p), str(p))
