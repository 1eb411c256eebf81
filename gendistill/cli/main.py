"""The ``gendistill`` command line, assembled from the subcommands each package contributes.

Every user error exits with status 2 and one line on stderr (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable

from gendistill.baselines.trajectory import commands as trajectory_commands
from gendistill.bench import commands as bench_commands
from gendistill.cli import core
from gendistill.generative import commands as generative_commands
from gendistill.utils.errors import GendistillError
from gendistill.utils.options import add_global_flags

__all__ = ["build_parser", "main"]

#: Packages that contribute subcommands: each has ``add_parsers(sub) -> {command: handler}``.
CONTRIBUTORS = (core, trajectory_commands, generative_commands, bench_commands)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    """The parser and the handler of every subcommand."""
    from gendistill._version import __version__

    parser = argparse.ArgumentParser(prog="gendistill", description="Dataset distillation toolkit")
    add_global_flags(parser, top=True)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {}
    for contributor in CONTRIBUTORS:
        handlers.update(contributor.add_parsers(sub))
    for subparser in sub.choices.values():
        add_global_flags(subparser, top=False)
    return parser, handlers


def _one_line(exc: BaseException) -> str:
    """The error as the promised single line (a message that quotes user input could hold a newline)."""
    return " ".join(str(exc).split("\n"))


def _sigterm_as_interrupt(signum, frame) -> None:
    from gendistill.runs import Interrupted

    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gendistill`` console script."""
    import signal

    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        parser, handlers = build_parser()
    except GendistillError as exc:  # e.g. a declared method module that fails to import
        if debug:
            raise
        print(f"gendistill: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    previous = None
    try:
        from gendistill.utils.threads import apply_threads

        apply_threads(args.threads)
        if getattr(args, "compile", False):
            os.environ["GENDISTILL_COMPILE"] = "1"
        if getattr(args, "bf16", False) and getattr(args, "fp32", False):
            raise GendistillError("--bf16 and --fp32 contradict each other; give one (default: auto)")
        if getattr(args, "bf16", False):
            os.environ["GENDISTILL_AUTOCAST"] = "bf16"
        if getattr(args, "fp32", False):
            os.environ["GENDISTILL_AUTOCAST"] = "0"
        from gendistill.nn.compiling import compile_backend
        from gendistill.nn.precision import autocast_name

        compile_backend()  # a bad $GENDISTILL_COMPILE or $GENDISTILL_AUTOCAST is a one-line error before any work
        autocast_name()
        with contextlib.suppress(ValueError):  # only the main thread may install handlers
            previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        return handlers[args.command](args)
    except GendistillError as exc:
        if args.debug:
            raise
        print(f"gendistill: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        where = getattr(exc, "where", "")
        print(f"gendistill: interrupted by {signal.Signals(signum).name}{where} (a run with checkpoints can "
              "continue with --resume)", file=sys.stderr)
        return 128 + int(signum)
    except (OSError, json.JSONDecodeError) as exc:
        if args.debug:
            raise
        print(f"gendistill: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
