"""Typed dataclass configs loaded from YAML, with ``key=value`` overrides and unknown keys rejected.

``load_config(cls, *sources, overrides=[...])`` merges plain dicts / YAML files in order, applies dotted
overrides (``--set lr_img=0.1 --set eval.epochs=50``), and builds ``cls`` strictly: an unknown key, a value of
the wrong type or a missing YAML file is a one-line :class:`~gendistill.errors.ConfigError`. A config file may
start from another one with ``extends: OTHER.yaml`` (a path relative to the file; its own keys win), so a
per-dataset preset states only what it changes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gendistill.utils.errors import ConfigError

__all__ = ["config_to_dict", "from_dict", "load_config", "parse_overrides", "read_config_yaml", "read_yaml"]

T = TypeVar("T")



def _shown(key: str) -> str:
    """A config key as an error shows it: plain when it is a dotted name, quoted otherwise (so it stays one line)."""
    return key if key.replace(".", "_").isidentifier() else repr(key)

def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping document is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the path given to --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise ConfigError(f"config file {path} is not valid YAML ({first}); fix the file") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value, not {type(data).__name__}")
    return data


def read_config_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file, first merging the file its ``extends:`` key names (relative to it; chains allowed)."""
    path = Path(path)
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"config file {path}: extends must name another YAML file, got {parent!r}")
    base = path.parent / parent
    if base.resolve() in _seen or base.resolve() == path.resolve():
        raise ConfigError(f"config file {path}: extends {parent!r} forms a cycle; make one file the root")
    if not base.is_file():
        raise ConfigError(f"config file {path}: extends {parent!r}, but {base} does not exist; fix the name")
    return _merge(read_config_yaml(base, (*_seen, path.resolve())), data)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["a=1", "b.c=[1, 2]"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    result: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. --set lr_img=0.1)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a field inside {part!r}, which is not a section")
        node[parts[-1]] = value
    return result


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} does not fit {annotation}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (list, tuple):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and badly typed values raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {_shown(prefix + str(unknown[0]))} for {cls.__name__}; valid keys: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc
    return obj


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain data (tuples become lists so it round-trips through YAML)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def load_config(
    cls: type[T], *sources: dict[str, Any] | str | Path | None, overrides: list[str] | None = None
) -> T:
    """Merge ``sources`` (dicts or YAML paths, later wins), apply ``overrides``, build ``cls`` strictly."""
    merged: dict[str, Any] = {}
    for source in sources:
        if source is None:
            continue
        data = source if isinstance(source, dict) else read_config_yaml(source)
        merged = _merge(merged, data)
    merged = _merge(merged, parse_overrides(overrides))
    return from_dict(cls, merged)
