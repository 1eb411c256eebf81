"""Discoverable settings: a method's config fields with types, defaults and meanings, and its presets.

The meanings come from the ``Attributes:`` section of the config dataclass docstrings (inherited fields
included), so the text shown is the one maintained next to the code.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

from .config import config_to_dict
from .methods import get_method

__all__ = ["describe_method", "describe_resolved", "field_docs", "method_presets"]


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
    from .pipeline import config_roots

    found: dict[str, list[str]] = {}
    for root in config_roots():
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
    from .pipeline import preset_file, resolve_config

    config = resolve_config(name, dataset, ipc, preset=preset, overrides=overrides)
    source = preset_file(name, dataset, ipc, preset)
    lines = [f"# {name} on {dataset}, ipc {ipc}, preset {preset or 'paper'} "
             f"({source if source else 'dataclass defaults'})"]
    lines += [f"{k}: {v}" for k, v in config_to_dict(config).items()]
    return "\n".join(lines) + "\n"
