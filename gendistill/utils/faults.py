"""Deterministic fault injection for the reliability suite (``tests/faults``): never active unless asked for.

``GENDISTILL_FAULTS`` holds comma-separated ``<action>@<point>#<n>`` entries, e.g. ``kill@step#7`` (SIGKILL this
process at the 7th ``step`` it reaches) or ``enospc@write#3`` (the 3rd atomic write fails with ENOSPC, as on a
full disk). The code calls :func:`fault_point` at its natural seams (an iteration, a training step, a checkpoint,
an atomic write, a sampled batch, a bench cell), so a test can stop a run at any chosen point - reproducibly, with
no timing involved. Without the variable every call is one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["fault_point"]

_PLAN: dict[str, list[tuple[str, int]]] | None = None
_SEEN: dict[str, int] = {}


def _plan() -> dict[str, list[tuple[str, int]]]:
    global _PLAN
    if _PLAN is None:
        _PLAN = {}
        for item in filter(None, os.environ.get("GENDISTILL_FAULTS", "").split(",")):
            action, _, rest = item.strip().partition("@")
            point, _, count = rest.partition("#")
            _PLAN.setdefault(point, []).append((action, int(count or 1)))
    return _PLAN


def fault_point(point: str) -> None:
    """Mark one occurrence of ``point``; injects the planned fault when its count comes up."""
    plan = _plan()
    if point not in plan:
        return
    _SEEN[point] = _SEEN.get(point, 0) + 1
    for action, count in plan[point]:
        if _SEEN[point] != count:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
