"""The ``gendistill pretrain`` / ``finetune`` / ``sample`` commands (also usable under ``accelerate launch``)::

    gendistill pretrain --dataset mnist --out runs/dit-mnist --preset cpu
    accelerate launch --multi_gpu --num_processes 4 -m gendistill.cli finetune --dataset imagewoof \\
        --model facebook/DiT-XL-2-256 --out runs/mm-woof --resume latest
    gendistill sample --model runs/mm-woof/model --dataset imagewoof --ipc 1,10,50 --out runs/mm-woof/samples
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from gendistill.presets import budget_reductions, resolve_config, stamp_budget
from gendistill.utils.options import add_data_args, dataset_options

COMMANDS = ("pretrain", "finetune", "sample")


def add_parsers(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Register the three generative subcommands; returns their handlers."""
    helps = {"pretrain": "train a class-conditional DiT from scratch on a dataset (diffusers layout)",
             "finetune": "Minimax fine-tuning of a DiT pipeline (local folder or hub id)",
             "sample": "generate IPC images per class from a DiT pipeline into synthetic sets"}
    for name in COMMANDS:
        p = sub.add_parser(name, help=helps[name])
        p.add_argument("--dataset", required=name != "sample",
                       help="dataset (sample: default the one recorded in the model's gendistill.json)")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--preset", default=None,
                       help="minimax preset name, e.g. cpu (sample: default the model's recorded preset)")
        p.add_argument("--config", default=None, help="YAML file of settings (MinimaxConfig fields)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
        p.add_argument("--seed", type=int, default=0)
        add_data_args(p)
        if name != "pretrain":
            p.add_argument("--model", default=None, help="DiT pipeline folder or hub id (default: the config's)")
        if name == "sample":
            p.add_argument("--ipc", default="10", help="comma-separated IPCs; generated once for the largest")
        else:
            p.add_argument("--resume", nargs="?", const="latest", default=None,
                           help="continue from the newest checkpoint (--resume or --resume latest)")
    models = sub.add_parser("models", help="the shipped pretrained generators (gendistill/<name>) with their cards' "
                                           "figures; `models ship` makes one")
    actions = models.add_subparsers(dest="models_command")
    ship = actions.add_parser("ship", help="store a trained model (fp16) with its quality report, card and checksums "
                                           "among the shipped models")
    ship.add_argument("source", help="the model/ folder of a finished `gendistill pretrain` run")
    ship.add_argument("--name", required=True, help="folder name; the model becomes gendistill/NAME")
    ship.add_argument("--dataset", default=None, help="its dataset (default: the one the model records)")
    ship.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help="storage precision")
    ship.add_argument("--quality-ipc", type=int, default=50, help="IPC of the quality report's set (0: none)")
    ship.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="dit setting of the quality report's set (default: the cpu preset's)")
    ship.add_argument("--root", default=None, help="where to write (default: the package's shipped models)")
    ship.add_argument("--seed", type=int, default=0)
    ship.add_argument("--data-root", help="dataset folder (default: $GENDISTILL_DATA, else ~/.cache/gendistill/data)")
    return {**dict.fromkeys(COMMANDS, run), "models": list_models}


def list_models(args: argparse.Namespace) -> int:
    """``gendistill models``: one line per shipped model with the key figures of its card."""
    from gendistill.generative.hub import card_metadata, shipped_models

    if getattr(args, "models_command", None) == "ship":
        from gendistill.generative.ship import ship_model

        folder = ship_model(args.source, args.name, dataset=args.dataset, dtype=args.dtype,
                            quality_ipc=args.quality_ipc, overrides=list(args.set), root=args.root,
                            data_root=args.data_root, seed=args.seed, progress=not args.quiet)
        print(f"wrote {folder} ({sum(f.stat().st_size for f in folder.rglob('*.safetensors')) / 2**20:.2f} MB)")
        return 0
    models = shipped_models()
    if not models:
        print("no shipped models in this installation")
        return 0
    for name, folder in models.items():
        meta = card_metadata(folder)
        info = meta.get("gendistill", {})
        metrics = {m["type"]: m["value"] for r in meta.get("model-index", [{}])[0].get("results", [])
                   for m in r.get("metrics", [])} if meta.get("model-index") else {}
        size = sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 2**20
        quality = "  ".join(f"{k} {metrics[k]:.3g}" for k in ("precision", "recall", "fd") if k in metrics)
        print(f"{name:28s} {','.join(meta.get('datasets', [])):14s} {info.get('arch', '?'):24s} "
              f"{info.get('steps', '?')} steps, {info.get('train_time_s', 0) / 60:.0f} min, {size:.1f} MB  {quality}")
    print("use one with --set pretrained=NAME (e.g. gendistill distill --method minimax --preset cpu ...)")
    return 0


def _config(args: argparse.Namespace, ipc: int):
    overrides = list(args.set)
    if getattr(args, "model", None):
        overrides.append(f"pretrained={args.model}")
    return resolve_config("minimax", args.dataset, ipc, preset=args.preset, config_file=args.config,
                          overrides=overrides)


def _provenance(args: argparse.Namespace) -> dict:
    """What ``sample`` reads back from the model: the preset, overrides and image resolution of its training."""
    return {"preset": args.preset, "overrides": list(args.set), "resolution": args.resolution}


def _record(out: Path, args: argparse.Namespace, config, resume: bool) -> None:
    from gendistill.runs import RunDir
    from gendistill.utils.config import config_to_dict

    RunDir(out, resume=resume).write_config({"command": args.command, "dataset": args.dataset, "seed": args.seed,
                                             "preset": args.preset, "config": config_to_dict(config)})


def model_record(model: str | None) -> dict:
    """The ``gendistill.json`` of a local model folder (empty for hub ids and folders without one)."""
    import json

    path = Path(model) / "gendistill.json" if model else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def _fill_sample_args(args: argparse.Namespace) -> dict:
    """``sample`` without --dataset/--preset/--set takes the ones recorded with the model."""
    from gendistill.utils.errors import ConfigError

    record = model_record(args.model)
    if args.dataset is None:
        if not record.get("dataset"):
            raise ConfigError("sample needs --dataset (the model records none)")
        args.dataset = record["dataset"]
    if args.preset is None and record.get("preset"):
        args.preset = record["preset"]
    if not args.set and record.get("overrides"):
        args.set = list(record["overrides"])
    if args.resolution is None and record.get("resolution"):
        args.resolution = record["resolution"]
    return record


def run(args: argparse.Namespace) -> int:
    """Dispatch one of :data:`COMMANDS`."""
    from gendistill.data.datasets import load_dataset
    from gendistill.generative.method import finetune, generate, load_model, pretrain, pretrained_source
    from gendistill.utils.errors import ConfigError

    progress = not args.quiet
    if args.command == "sample":
        _fill_sample_args(args)
    if args.resolution is None and args.dataset:
        from gendistill.presets import preferred_resolution

        args.resolution = preferred_resolution("minimax", args.dataset, 0, preset=args.preset,
                                               config_file=args.config, overrides=list(args.set))
    splits = load_dataset(args.dataset, args.data_root, download=args.download, **dataset_options(args))
    out = Path(args.out)
    if args.command == "pretrain":
        config = _config(args, 0)
        _record(out, args, config, bool(args.resume))
        path = pretrain(splits.train, config, out, seed=args.seed, resume=bool(args.resume), progress=progress,
                        record=_provenance(args))
        print(f"wrote {path}")
        return 0
    if args.command == "finetune":
        config = _config(args, 0)
        source = pretrained_source(config, splits.name)
        if not source:
            raise ConfigError("finetune needs a model: --model DIR_OR_HUB_ID (or run `gendistill pretrain` first)")
        _record(out, args, config, bool(args.resume))
        path = finetune(load_model(source, config), splits.train, config, out, seed=args.seed,
                        resume=bool(args.resume), progress=progress, record=_provenance(args))
        print(f"wrote {path}")
        return 0
    ipcs = sorted({int(v) for v in str(args.ipc).split(",") if v.strip()})
    if not ipcs or ipcs[0] < 1:
        raise ConfigError(f"--ipc must list positive integers, got {args.ipc!r}")
    config = _config(args, ipcs[-1])
    source = pretrained_source(config, splits.name)
    if not source:
        raise ConfigError("sample needs a model: --model DIR_OR_HUB_ID")
    from gendistill.generative.method import DiTDistiller, MinimaxDistiller, to_synset

    backbone = load_model(source, config)
    pixels, labels, seeds = generate(backbone, splits.train, ipcs[-1], config, seed=args.seed, progress=progress)
    distiller = (MinimaxDistiller if backbone.info.get("stage") == "finetune" else DiTDistiller)(config)
    full = to_synset(distiller, splits.train, pixels, labels, seeds, ipcs[-1], args.seed, out)
    full.meta["model"] = source
    reductions = budget_reductions(config, resolve_config("minimax", args.dataset, ipcs[-1]))
    stamp_budget(full, args.preset, reductions, list(args.set), args.config, splits)
    for ipc in ipcs:
        part = full if ipc == ipcs[-1] else full.subset(ipc)
        part.meta["ipc"] = ipc
        part.save(out / f"ipc{ipc}" / "synset")
        print(f"wrote {out / f'ipc{ipc}' / 'synset'} ({len(part)} images)")
    print(f"full-resolution images in {out / 'images'}")
    return 0
