"""The ``gendistill buffers`` subcommand: expert trajectories for trajectory matching (mtt, datm)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from gendistill.utils.options import add_data_args, dataset_options

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Register ``buffers``; returns its handler."""
    p = sub.add_parser("buffers", help="train expert trajectories for trajectory matching (mtt, datm); resumable")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True, help="buffer folder (an existing one with the same settings is resumed "
                   "or extended)")
    p.add_argument("--experts", type=int, default=100, help="experts the folder should hold (default 100)")
    p.add_argument("--epochs", type=int, default=50, help="epochs per expert (MTT 50, DATM 100)")
    p.add_argument("--zca", choices=["kornia", "kip"], default=None, help="whiten the dataset with ZCA")
    p.add_argument("--model", default="convnet", help="expert network (the distillation's student)")
    p.add_argument("--lr", type=float, default=0.01, help="expert SGD learning rate (lr_teacher)")
    p.add_argument("--batch", type=int, default=256, help="real images per step")
    p.add_argument("--optimizer", choices=["sgd", "gsam"], default="sgd", help="gsam: DATM/FTD flat trajectories")
    p.add_argument("--rho", type=float, default=0.01, help="GSAM radius (constant)")
    p.add_argument("--alpha", type=float, default=0.3, help="GSAM surrogate-gap coefficient")
    p.add_argument("--images-per-class", type=int, default=0, help="train on a seeded subset (0 = all)")
    p.add_argument("--no-dsa", action="store_true", help="train without DSA augmentation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    add_data_args(p)
    return {"buffers": _cmd_buffers}


def _cmd_buffers(args) -> int:
    from gendistill.baselines.trajectory.buffers import train_buffers
    from gendistill.data.datasets import load_dataset

    splits = load_dataset(args.dataset, args.data_root, download=args.download, zca=args.zca,
                          **dataset_options(args))
    print(splits.describe())
    buffer = train_buffers(splits, args.out, args.experts, args.epochs, args.zca, seed=args.seed,
                           device=args.device, progress=not args.quiet, model=args.model, lr=args.lr,
                           batch_size=args.batch, optimizer=args.optimizer, rho=args.rho, alpha=args.alpha,
                           images_per_class=args.images_per_class, dsa=not args.no_dsa)
    accs = [e["test_accuracy"] for e in buffer.experts if "test_accuracy" in e]
    acc = f"; final test accuracy {sum(accs) / len(accs):.2f} % (mean of {len(accs)})" if accs else ""
    print(f"wrote {args.out}: {buffer.num_experts} experts x {buffer.epochs} epochs ({buffer.num_params} "
          f"parameters per snapshot){acc}")
    return 0
