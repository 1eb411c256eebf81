"""CPU thread count: ``--threads N`` > ``$GENDISTILL_THREADS`` > the default.

torch's default (one intra-op thread per core, OpenMP threads that spin while waiting) collapses when another
process shares the cores. ``scripts/bench_threads.py`` measured on the 2-core development machine, next to another
torch job: default 3.8-3.9x slower, passive OpenMP wait policy 1.6x, one thread 1.3-1.4x (but 1.4-1.7x slower
alone). The default is therefore one thread per core with ``OMP_WAIT_POLICY=PASSIVE``, which
:func:`set_thread_policy` sets: the ``gendistill`` command calls it before torch loads OpenMP, and library users
may call it before they import torch (``import gendistill`` itself changes nothing); docs/performance.md has the
table.
"""

from __future__ import annotations

import os

from gendistill.utils.errors import ConfigError

__all__ = ["apply_threads", "default_threads", "resolve_threads", "set_thread_policy"]


def set_thread_policy() -> None:
    """Passive OpenMP waiting (``OMP_WAIT_POLICY=PASSIVE``) unless the environment says otherwise.

    Measured on 2 cores next to another torch job: a DM step went from 3.9x to 1.6x slower and a DiT step from 3.8x
    to 1.6x, for 4-21 % when the machine is idle. OpenMP reads the variable when torch loads it, so call this before
    the first ``import torch``; ``OMP_WAIT_POLICY=ACTIVE`` in the environment keeps the spinning default.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_threads() -> int:
    """The CPU cores this process may use (``os.sched_getaffinity``), as torch's default."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(requested: int | None = None) -> int:
    """The thread count to use: ``requested`` (``--threads``), else ``$GENDISTILL_THREADS``, else the default."""
    if requested is None and os.environ.get("GENDISTILL_THREADS"):
        raw = os.environ["GENDISTILL_THREADS"]
        try:
            requested = int(raw)
        except ValueError:
            raise ConfigError(f"GENDISTILL_THREADS must be a positive integer, got {raw!r}") from None
    if requested is None:
        return default_threads()
    if requested < 1:
        raise ConfigError(f"--threads must be a positive integer, got {requested}")
    return requested


def apply_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads (see :func:`resolve_threads`); returns the count now in effect."""
    import torch  # here, so that importing this module leaves OpenMP's settings to set_thread_policy

    n = resolve_threads(requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
