"""argparse options shared by the subcommands every package contributes (data, evaluation, global flags)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_data_args", "add_eval_args", "add_global_flags", "dataset_options"]


def add_data_args(p: argparse.ArgumentParser) -> None:
    """``--data-root``, ``--download`` and ``--resolution``."""
    p.add_argument("--data-root", help="dataset folder (default: $GENDISTILL_DATA, else ~/.cache/gendistill/data)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--resolution", type=int, default=None,
                   help="image size every folder dataset is resized to (imagefolder: 32 by default; ImageNet subsets: "
                        "128; 256 for DiT-XL/2); folder datasets are normalised with ImageNet mean/std")


def dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    """Dataset-specific loader options given on the command line."""
    return {"resolution": args.resolution} if getattr(args, "resolution", None) else {}


def add_eval_args(p: argparse.ArgumentParser, protocols: list[str], prefix: str = "") -> None:
    """``--protocol`` (its help lists ``protocols``), ``--model``, ``--runs`` and ``--epochs``."""
    p.add_argument(f"--{prefix}protocol", default=None,
                   help=f"{', '.join(protocols)}, or a YAML file (default: the set's method's own)")
    p.add_argument(f"--{prefix}model", default=None, help="evaluation network (default: the protocol's)")
    p.add_argument(f"--{prefix}runs", type=int, default=None, help="networks to train (default: 5)")
    p.add_argument(f"--{prefix}epochs", type=int, default=None, help="override epochs (marks a reduced run)")


def add_global_flags(p: argparse.ArgumentParser, top: bool) -> None:
    """``--debug``, ``--quiet`` and ``--threads``: accepted before and after the subcommand (on a subcommand they
    default to SUPPRESS, so a flag given before it is kept)."""
    kw: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("--debug", action="store_true", help="show tracebacks", **kw)
    p.add_argument("--quiet", action="store_true", help="no progress bars", **kw)
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: $GENDISTILL_THREADS, "
                   "else one per core)", **({"default": None} if top else kw))
    p.add_argument("--compile", action="store_true", help="torch.compile the networks of the shared training loop, "
                   "test passes and DM (sets GENDISTILL_COMPILE=1; the first call compiles for ~20 s)", **kw)
    p.add_argument("--bf16", action="store_true", help="train and test every evaluation network under bfloat16 "
                   "autocast (sets GENDISTILL_AUTOCAST=bf16; CPUs with avx512_bf16/AMX, or a GPU; recorded). Default "
                   "(auto): bfloat16 for the ConvNet family on such a CPU, float32 elsewhere", **kw)
    p.add_argument("--fp32", action="store_true", help="train and test every evaluation network in float32 (sets "
                   "GENDISTILL_AUTOCAST=0)", **kw)
