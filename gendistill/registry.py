"""The method registry: names to :class:`MethodInfo` records, filled by the method modules themselves.

Methods are declared as entry points (``[project.entry-points."gendistill.methods"]`` in ``pyproject.toml``, so a
third-party package adds methods the same way) and register on import with :func:`register_method`. The
registry imports no method code: :func:`list_methods` and :func:`get_method` load the declared modules through
:func:`gendistill.utils.plugins.load_plugins`, and a module that fails to import - or that does not register the
method it declares - is an error that names it, never an omission.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from pathlib import Path

from gendistill.distiller import Distiller
from gendistill.evaluation.protocols import note_method_protocol
from gendistill.utils.errors import GendistillError, PluginError
from gendistill.utils.plugins import load_plugins

__all__ = ["MethodInfo", "get_method", "list_methods", "methods_markdown", "register_method"]


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """Registry record of a method.

    Attributes:
        presets: the method's own preset roots, laid out like the repository's ``configs/``
            (``<root>/<method>/<preset>.yaml``; a third-party package's own folder), searched after
            ``$GENDISTILL_CONFIGS`` and before the packaged presets.
    """

    name: str
    cls: type[Distiller]
    config_cls: type
    paper: str
    year: int
    kind: str  # "coreset", "pixel", "generative"
    label_kind: str  # "hard", "soft", "learned-lr"
    default_eval: str
    description: str
    module: str = ""
    presets: tuple[Path, ...] = ()


_METHODS: dict[str, MethodInfo] = {}


def register_method(name: str, *, config: type, paper: str, year: int, kind: str, label_kind: str = "hard",
                    default_eval: str = "dsa", description: str = "", presets: str | Path | None = None
                    ) -> Callable[[type], type]:
    """Class decorator adding a :class:`Distiller` to the registry under ``name``."""

    def wrap(cls: type) -> type:
        if name in _METHODS and _METHODS[name].cls is not cls:
            raise PluginError(f"method {name!r} is registered twice ({_METHODS[name].module} and {cls.__module__})")
        cls.name = name
        cls.config_cls = config
        cls.default_protocol = default_eval
        doc = description or (cls.__doc__ or "").strip().splitlines()[0]
        folders = (Path(presets),) if presets else ()
        _METHODS[name] = MethodInfo(name, cls, config, paper, year, kind, label_kind, default_eval, doc,
                                    cls.__module__, folders)
        note_method_protocol(name, default_eval)
        return cls

    return wrap


def _populate() -> None:
    """Import every declared method module; each declared name must then be registered."""
    declared = load_plugins()
    missing = sorted(n for n in declared if n not in _METHODS)
    if missing:
        raise PluginError(f"{declared[missing[0]]} is declared for method {missing[0]!r} but registers no such "
                          "method; fix the entry point name or the register_method call")


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching a glob ``pattern``."""
    _populate()
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def get_method(name: str) -> MethodInfo:
    """The :class:`MethodInfo` of ``name``; an unknown name lists the available ones."""
    _populate()
    if name not in _METHODS:
        raise GendistillError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def methods_markdown() -> str:
    """The registered methods as a markdown table (the README's table is this text; a test keeps them equal)."""
    rows = ["| method | kind | labels | own protocol | paper |", "|---|---|---|---|---|"]
    for name in list_methods():
        info = get_method(name)
        rows.append(f"| `{name}` | {info.kind} | {info.label_kind} | `{info.default_eval}` | {info.paper} |")
    return "\n".join(rows) + "\n"
