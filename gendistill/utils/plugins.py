"""Method modules declared as entry points, imported on first use - loudly.

Every method (built-in or third-party) is declared in its distribution's metadata::

    [project.entry-points."gendistill.methods"]
    dm = "gendistill.baselines.dm"

:func:`load_plugins` imports each declared module once. A module that fails to import is a
:class:`~gendistill.utils.errors.PluginError` naming the module and the cause, never a silent omission. The
method registry and the evaluation protocols both discover through here, so neither imports method code.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading

from gendistill.utils.errors import PluginError

__all__ = ["GROUP", "declared_methods", "load_plugins"]

GROUP = "gendistill.methods"

_loaded: dict[str, str] = {}  # module -> "ok"
_lock = threading.RLock()


def declared_methods() -> dict[str, str]:
    """``{method name: module}`` of every installed ``gendistill.methods`` entry point.

    Raises:
        PluginError: no entry point at all (gendistill was not installed, so its metadata is missing), or two
            distributions declare the same method name for different modules.
    """
    found: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        if ep.name in found and found[ep.name] != ep.value:
            raise PluginError(f"method {ep.name!r} is declared twice ({found[ep.name]} and {ep.value}); "
                              "uninstall one of the two packages")
        found[ep.name] = ep.value
    if not found:
        raise PluginError("no gendistill methods are declared: the package metadata is missing; install it "
                          "(pip install -e . in the repository) instead of running it from a bare source tree")
    return found


def load_plugins() -> dict[str, str]:
    """Import every declared method module (once); returns :func:`declared_methods`.

    Raises:
        PluginError: a module failed to import (the message names it and the error).
    """
    declared = declared_methods()
    with _lock:
        for module in dict.fromkeys(declared.values()):
            if module in _loaded:
                continue
            try:
                importlib.import_module(module)
            except Exception as exc:  # any failure of a method module must surface, with its name
                names = ", ".join(sorted(n for n, m in declared.items() if m == module))
                cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
                raise PluginError(f"method module {module} (methods: {names}) failed to import ({cause}); fix or "
                                  "uninstall it - gendistill refuses to run with a method silently missing") from exc
            _loaded[module] = "ok"
    return declared
