"""The ``gendistill`` command (``python -m gendistill.cli`` too).

The thread policy is set here, before any module of the command loads torch (``import gendistill`` alone sets
nothing): see :func:`gendistill.utils.threads.set_thread_policy`.
"""

from gendistill.utils.threads import set_thread_policy

set_thread_policy()

from gendistill.cli.main import main  # noqa: E402  (after the thread policy, before torch loads OpenMP)

__all__ = ["main"]
