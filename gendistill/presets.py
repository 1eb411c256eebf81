"""Presets and settings: where a method's YAML presets live, how a config is resolved from them, which budget
a run has against its preset, and the text that describes a method's settings.

Resolution order: dataclass defaults < preset (``configs/<method>/<dataset>_ipc<k>[_<name>].yaml``,
``<dataset>_<name>.yaml`` or ``<name>.yaml``) < ``--config`` file < ``--set`` overrides. Field meanings come
from the ``Attributes:`` sections of the config dataclass docstrings (inherited fields included).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import typing
from pathlib import Path
from typing import Any

from gendistill.data.datasets import DatasetSplits
from gendistill.distiller import budget_fields
from gendistill.registry import get_method
from gendistill.synset.format import SyntheticSet
from gendistill.utils.config import config_to_dict, load_config
from gendistill.utils.errors import ConfigError, GendistillError

__all__ = ["budget_reductions", "config_root", "config_roots", "describe_method", "describe_resolved",
           "effective_budget", "field_docs", "method_presets", "preferred_resolution", "preset_file",
           "preset_reductions", "resolve_config", "stamp_budget"]


def config_root() -> Path:
    """The packaged presets and bench specs: the repository's top-level ``configs/``, installed as the package
    data ``gendistill.configs`` (an editable install reads the folder itself, so edits apply at once)."""
    from importlib.resources import files

    return Path(str(files("gendistill.configs")))


def config_roots(method: str | None = None) -> list[Path]:
    """Preset folders searched in order: each folder of ``$GENDISTILL_CONFIGS`` (``os.pathsep``-separated; they add
    presets on top of the packaged ones and override them), then the method's own preset folders (a third-party
    method's ``register_method(presets=...)``), then the packaged :func:`config_root`."""
    user = [Path(p) for p in os.environ.get("GENDISTILL_CONFIGS", "").split(os.pathsep) if p]
    own = list(get_method(method).presets) if method else []
    return [*user, *own, config_root()]


def preset_file(method: str, dataset: str, ipc: int, preset: str | None) -> Path | None:
    """The preset YAML for (method, dataset, ipc, preset name), or None for the dataclass defaults.

    In each folder of :func:`config_roots`, in order, looks for ``<method>/<dataset>_ipc<ipc>[_<preset>].yaml``,
    then ``<method>/<dataset>_<preset>.yaml``, then ``<method>/<preset>.yaml``; the first file found wins.
    ``preset=None`` (the published setting) falls back to the defaults when no file exists.
    """
    folders = [root / method for root in config_roots(method)]
    if preset in (None, "paper", "default"):
        published = [folder / f"{dataset}_ipc{ipc}.yaml" for folder in folders]
        return next((candidate for candidate in published if candidate.is_file()), None)
    for folder in folders:
        for candidate in (folder / f"{dataset}_ipc{ipc}_{preset}.yaml", folder / f"{dataset}_{preset}.yaml",
                          folder / f"{preset}.yaml"):
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.yaml")})
    raise ConfigError(f"no preset {preset!r} for {method} (looked in {', '.join(map(str, folders))}); "
                      f"known: {', '.join(known) or 'none'}")


def resolve_config(method: str, dataset: str, ipc: int, *, preset: str | None = None,
                   config_file: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Build the typed config of ``method``: defaults < preset < ``--config`` file < ``--set`` overrides."""
    info = get_method(method)
    return load_config(info.config_cls, preset_file(method, dataset, ipc, preset), config_file,
                       overrides=overrides)


def preferred_resolution(method: str, dataset: str, ipc: int, *, preset: str | None = None,
                         config_file: str | Path | None = None, overrides: list[str] | None = None) -> int | None:
    """The image size a method's resolved config asks the dataset to be loaded at (its ``resolution`` field, e.g.
    the ImageNet-subset Minimax presets' 256 px), or None. An explicit ``--resolution`` always wins."""
    try:
        config = resolve_config(method, dataset, ipc, preset=preset, config_file=config_file, overrides=overrides)
    except GendistillError:
        return None  # the real error is raised again, with its message, where the config is built
    value = getattr(config, "resolution", 0)
    return int(value) if value else None


def budget_reductions(config: Any, reference: Any, fields: dict[str, bool] | None = None) -> list[str]:
    """``["iterations 5 < 20000", ...]``: the budget fields of ``config`` below those of ``reference`` (configs or
    dicts of effective values, see :func:`effective_budget`). ``fields`` maps each budget field to its
    ``zero_is_full`` flag (default: the marks on ``config``'s dataclass, see
    :func:`gendistill.distiller.budget_field`).
    """
    def get(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

    if fields is None:
        fields = budget_fields(type(config))
    notes = []
    for name, zero_is_full in fields.items():
        value, ref = get(config, name), get(reference, name)
        if value is None or ref is None:
            continue
        if not isinstance(value, int | float) or not isinstance(ref, int | float):
            continue
        lowered = value > 0 and (ref == 0 or value < ref) if zero_is_full else value < ref
        if lowered:
            notes.append(f"{name} {value:g} < {ref:g}" if ref else f"{name} {value:g} (full: 0)")
    return notes


def effective_budget(method: str, config: Any, train: Any, ipc: int) -> dict[str, float]:
    """The budget fields of ``config`` as they run (a method's ``effective_budget`` resolves its 0 = automatic
    values, e.g. DD's computed iteration count or DC's reference loops)."""
    values = {f: getattr(config, f) for f in budget_fields(type(config))}
    hook = getattr(get_method(method).cls, "effective_budget", None)
    if hook is not None:
        import contextlib

        with contextlib.suppress(ConfigError):  # e.g. DC at an IPC without reference loops: nothing to resolve
            values.update(hook(get_method(method).cls(config), train, ipc))
    return values


def preset_reductions(method: str, splits: DatasetSplits, ipc: int, config: Any, preset: str | None) -> list[str]:
    """Budget reductions of ``config`` against its preset, and of a named preset against the published one."""
    reference = resolve_config(method, splits.name, ipc, preset=preset)
    mine = effective_budget(method, config, splits.train, ipc)
    fields = budget_fields(type(config))
    reductions = budget_reductions(mine, effective_budget(method, reference, splits.train, ipc), fields)
    if preset and preset not in ("paper", "default"):
        paper = resolve_config(method, splits.name, ipc)
        reductions = budget_reductions(effective_budget(method, reference, splits.train, ipc),
                                       effective_budget(method, paper, splits.train, ipc), fields) + \
            [f"override {r}" for r in reductions]
    return reductions


def stamp_budget(synset: SyntheticSet, preset: str | None, reductions: list[str], overrides: list[str] | None,
                 config_file: str | Path | None, splits: DatasetSplits) -> None:
    """Record the preset, overrides, budget reductions and data source in the set's metadata."""
    synset.meta["preset"] = preset or "paper"
    synset.meta["reduced_budget"] = bool(preset and preset.startswith("cpu")) or bool(reductions)
    synset.meta["budget_reductions"] = reductions
    synset.meta["overrides"] = list(overrides or [])
    if config_file:
        synset.meta["config_file"] = str(config_file)
    synset.meta["data_source"] = dict(splits.source)


def field_docs(config_cls: type) -> dict[str, str]:
    """``{field: one-line meaning}`` from the ``Attributes:`` sections of ``config_cls`` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(config_cls.__mro__):
        text = inspect.getdoc(klass) or ""
        if "Attributes:" not in text:
            continue
        section = text.split("Attributes:", 1)[1]
        current = None
        for line in section.splitlines():
            m = re.match(r"^    (\w+):\s*(.*)$", line)
            if m:
                current = m.group(1)
                docs[current] = m.group(2).strip()
            elif current and line.startswith("        "):
                docs[current] += " " + line.strip()
            elif line.strip() and not line.startswith(" "):
                break
    return {k: v.split(". ")[0].rstrip(".") + "." if v else "" for k, v in docs.items()}


def _type_name(tp: Any) -> str:
    if isinstance(tp, str):
        return tp
    if typing.get_origin(tp) is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def method_presets(name: str) -> dict[str, list[str]]:
    """``{folder: [preset file stems]}`` of the presets that exist for a method."""
    found: dict[str, list[str]] = {}
    for root in config_roots(name):
        folder = root / name
        if folder.is_dir():
            found[str(folder)] = sorted(p.stem for p in folder.glob("*.yaml"))
    return found


def describe_method(name: str) -> str:
    """Settings of ``name`` (type, default, meaning) and its presets, as plain text."""
    info = get_method(name)
    docs = field_docs(info.config_cls)
    hints = typing.get_type_hints(info.config_cls)
    lines = [f"{name}: {info.paper}", f"  kind {info.kind}, labels {info.label_kind}, "
             f"default evaluation protocol: {info.default_eval}", "", "settings (--set KEY=VALUE):"]
    for f in dataclasses.fields(info.config_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        lines.append(f"  {f.name} ({_type_name(hints.get(f.name, f.type))}, default {default!r}): "
                     f"{docs.get(f.name, '')}".rstrip())
    lines += ["", "presets (--preset NAME; <dataset>_ipc<k> files are the published settings, used by default):"]
    for folder, stems in method_presets(name).items():
        lines.append(f"  {folder}: {', '.join(stems)}")
    return "\n".join(lines) + "\n"


def describe_resolved(name: str, dataset: str, ipc: int, preset: str | None = None,
                      overrides: list[str] | None = None) -> str:
    """The config ``distill`` would use for (method, dataset, ipc, preset, overrides), one ``key: value`` a line."""
    config = resolve_config(name, dataset, ipc, preset=preset, overrides=overrides)
    source = preset_file(name, dataset, ipc, preset)
    lines = [f"# {name} on {dataset}, ipc {ipc}, preset {preset or 'paper'} "
             f"({source if source else 'dataclass defaults'})"]
    lines += [f"{k}: {v}" for k, v in config_to_dict(config).items()]
    return "\n".join(lines) + "\n"
