"""The core subcommands: methods, config, datasets, networks, distill, eval, metrics, export, import, table."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from gendistill.evaluation.protocols import protocol_names
from gendistill.utils.errors import GendistillError
from gendistill.utils.options import add_data_args, add_eval_args, dataset_options

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """The core subcommands and their handlers."""
    protocols = protocol_names()

    p = sub.add_parser("methods", help="list registered methods, or show one method's settings")
    p.add_argument("name", nargs="?", default=None, help="a method: print its settings, defaults and presets")
    p.add_argument("--markdown", action="store_true", help="print the methods as the README's markdown table")
    p = sub.add_parser("config", help="a method's settings resolved for a dataset, IPC and preset")
    p.add_argument("name", help="method name")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--preset", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sub.add_parser("datasets", help="list registered datasets")
    sub.add_parser("networks", help="list registered networks")

    p = sub.add_parser("distill", help="distill a dataset into a synthetic set")
    p.add_argument("--method", default=None, help="method name (see `gendistill methods`)")
    p.add_argument("--dataset", default=None)
    p.add_argument("--ipc", type=int, default=None, help="images per class")
    p.add_argument("--out", required=True, help="run folder (must be new or empty; see --resume, --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder (stale results too)")
    p.add_argument("--preset", default=None, help="preset name, e.g. cpu (default: the published setting)")
    p.add_argument("--config", default=None, help="YAML file of method settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="continue the run folder's recorded run from its last checkpoint (--out alone suffices)")
    p.add_argument("--zca", choices=["kornia", "kip"], default=None, help="whiten the dataset with ZCA")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--grid-every", type=int, default=0)
    p.add_argument("--best-of-run", type=int, default=0, metavar="EVERY",
                   help="evaluate the set every EVERY iterations on the test split and keep the best in "
                        "OUT/best_synset/ (MTT/DATM's published statistic; optimistic, never the headline)")
    p.add_argument("--best-of-run-runs", type=int, default=5, metavar="R", help="networks per such evaluation")
    p.add_argument("--best-of-run-protocol", default=None, metavar="P",
                   help="protocol of those evaluations (default: the method's)")
    p.add_argument("--best-of-run-epochs", type=int, default=None, metavar="E",
                   help="epochs per network of those evaluations (default: the protocol's; fewer is labelled reduced)")
    p.add_argument("--eval", dest="eval_protocol", nargs="?", const="default", default=None,
                   help="evaluate afterwards; without a value the method's own protocol (e.g. dsa for dm)")
    p.add_argument("--distill-seeds", type=int, default=1, metavar="N",
                   help="N seeded distillations (seeds seed..seed+N-1, folders seed_<k>/), each evaluated; the "
                        "result reports mean and std over all (distillation, network) pairs and the std across "
                        "distillations")
    p.add_argument("--metrics", action="store_true",
                   help="also write the set-quality report (gendistill metrics) to OUT/quality.json")
    p.add_argument("--eval-runs", type=int, default=None)
    p.add_argument("--eval-epochs", type=int, default=None)
    add_data_args(p)

    p = sub.add_parser("eval", help="evaluate a synthetic set under one protocol")
    p.add_argument("--synset", required=True, help="synthetic-set folder, or the run folder distill wrote")
    p.add_argument("--dataset", default=None, help="default: the dataset recorded in the set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--test-subset", type=int, default=None, metavar="N",
                   help="test on a class-balanced subset of N images (quick checks; the result is marked reduced)")
    p.add_argument("--teacher-epochs", type=int, default=None, metavar="N",
                   help="protocols with a teacher: train it N epochs instead of the preset's (fewer: marked reduced)")
    p.add_argument("--eval-count", type=int, default=None, metavar="N",
                   help="protocols with a best-of figure: test N times during training (fewer: marked reduced)")
    p.add_argument("--hard-labels", action="store_true",
                   help="replace soft labels by their argmax first (e.g. DATM under --protocol dsa: the label effect)")
    add_eval_args(p, protocols)
    add_data_args(p)

    p = sub.add_parser("metrics", help="set-quality report: precision/recall/density/coverage, diversity, "
                       "representativeness, classifier agreement, Frechet distance")
    p.add_argument("--synset", required=True, help="synthetic-set folder, or the run folder distill wrote")
    p.add_argument("--dataset", default=None, help="default: the dataset recorded in the set")
    p.add_argument("--json", default=None, help="write the full report (per class too) here")
    p.add_argument("--real-per-class", type=int, default=1000, help="real images per class compared with")
    p.add_argument("--seed", type=int, default=0)
    add_data_args(p)

    p = sub.add_parser("export", help="export a synthetic set")
    p.add_argument("--synset", required=True, help="synthetic-set folder, or the run folder distill wrote")
    p.add_argument("--format", choices=["imagefolder", "grid"], default="imagefolder")
    p.add_argument("--out", required=True)
    p.add_argument("--raw", action="store_true",
                   help="imagefolder: write the stored images of a set with a decoder (IDC's mosaics) instead of "
                        "the decoded images a network trains on")

    p = sub.add_parser("import", help="import a reference repository's output (.pt) or an exported image folder")
    p.add_argument("--format", choices=["dc", "mtt", "imagefolder", "kip_npz"], required=True,
                   help="dc: res_*.pt; mtt: folder of *_best.pt; imagefolder: a folder written by export; "
                        "kip_npz: a released KIP .npz (images NHWC, labels)")
    p.add_argument("--path", required=True)
    p.add_argument("--dataset", required=True, help="the dataset it was distilled from")
    p.add_argument("--method", default=None, help="method name to record")
    p.add_argument("--out", required=True, help="synthetic-set folder to write")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickled objects (runs code from the file)")
    p.add_argument("--zca", choices=["kornia", "kip"], default=None,
                   help="the ZCA space of the file (default: none; kip_npz '*_zca_*' files: kip)")
    add_data_args(p)

    p = sub.add_parser("table", help="markdown (and CSV) table of every result JSON below the given paths")
    p.add_argument("paths", nargs="+")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")
    return {"methods": _cmd_methods, "config": _cmd_config, "datasets": _cmd_datasets, "networks": _cmd_networks,
            "distill": _cmd_distill, "eval": _cmd_eval, "metrics": _cmd_metrics, "export": _cmd_export,
            "import": _cmd_import, "table": _cmd_table}


# Keys of the run record (config.yaml) that ``distill --resume --out DIR`` restores when they are not given.
_RESUMABLE = {"method": "method", "dataset": "dataset", "ipc": "ipc", "seed": "seed", "preset": "preset",
              "zca": "zca", "config_file": "config", "overrides": "set", "resolution": "resolution",
              "data_root": "data_root"}


def _fill_from_record(args) -> None:
    """``distill --resume --out DIR`` alone: take method, dataset, IPC, seed, preset and overrides from the run
    record; what is given on the command line still has to match it (checked when the config is written)."""
    import yaml

    record_path = Path(args.out) / "config.yaml"
    missing = [k for k in ("method", "dataset", "ipc") if getattr(args, k) is None]
    if not missing:
        return
    if args.resume and not record_path.is_file():
        raise GendistillError(f"{args.out} has no run record (config.yaml; the run stopped before writing it): repeat "
                              f"the full distill command (--{' --'.join(missing)} ...) with --resume")
    if not args.resume:
        raise GendistillError(f"distill needs --{' --'.join(missing)} (or --resume with the --out of an existing "
                              "run to continue it)")
    record = yaml.safe_load(record_path.read_text()) or {}
    for key, attr in _RESUMABLE.items():
        value = (record.get("data") or {}).get(key) if key in ("resolution", "data_root") else record.get(key)
        if key == "zca" and value == "none":
            value = None
        default = {"seed": 0, "set": []}.get(attr)
        if value is not None and getattr(args, attr, None) in (None, default):
            setattr(args, attr, value)
    selection = record.get("best_of_run") or {}
    if selection and not args.best_of_run:
        args.best_of_run, args.best_of_run_runs = selection["every"], selection["runs"]
        args.best_of_run_protocol = args.best_of_run_protocol or selection["protocol"]
        args.best_of_run_epochs = args.best_of_run_epochs or selection.get("epochs")


def _cmd_distill(args) -> int:
    from gendistill.data.datasets import load_dataset
    from gendistill.pipeline import distill, distill_seeds, evaluate_run

    _fill_from_record(args)
    if args.resolution is None:
        from gendistill.presets import preferred_resolution

        args.resolution = preferred_resolution(args.method, args.dataset, args.ipc, preset=args.preset,
                                               config_file=args.config, overrides=args.set)
    splits = load_dataset(args.dataset, args.data_root, download=args.download, zca=args.zca,
                          **dataset_options(args))
    print(splits.describe())
    protocol = None if args.eval_protocol in (None, "default") else args.eval_protocol
    distill_kwargs = dict(preset=args.preset, config_file=args.config, overrides=args.set, resume=args.resume,
                          progress=not args.quiet, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                          grid_every=args.grid_every, overwrite=args.overwrite,
                          best_of_run={"every": args.best_of_run, "runs": args.best_of_run_runs,
                                       "protocol": args.best_of_run_protocol, "epochs": args.best_of_run_epochs})
    eval_kwargs = dict(protocol=protocol, runs=args.eval_runs, epochs=args.eval_epochs, progress=not args.quiet)
    if args.distill_seeds > 1:
        summary = distill_seeds(args.method, splits, args.ipc, args.out,
                                seeds=list(range(args.seed, args.seed + args.distill_seeds)),
                                evaluate=args.eval_protocol is not None, eval_kwargs=eval_kwargs, **distill_kwargs)
        if summary is not None:
            print(f"{args.distill_seeds} distillations: {summary['mean']:.2f} ± {summary['std']:.2f} % over "
                  f"{len(summary['accs'])} (distillation, network) pairs; std across distillations "
                  f"{summary['std_across_distillations']:.2f} ({summary['protocol']['name']}, "
                  f"{summary['protocol_source']}); {Path(args.out) / 'result.json'}")
        return 0
    if args.distill_seeds < 1:
        raise GendistillError("--distill-seeds must be at least 1")
    synset = distill(args.method, splits, args.ipc, args.out, seed=args.seed, **distill_kwargs)
    print(f"wrote {Path(args.out) / 'synset'} ({len(synset)} images, ipc {synset.ipc}, "
          f"{synset.meta.get('distill_time_s', 0):.1f} s)")
    if args.metrics:
        from gendistill.evaluation.metrics import set_quality
        from gendistill.utils.atomic import atomic_json

        report = set_quality(synset, splits.train, progress=not args.quiet)
        atomic_json(Path(args.out) / "quality.json", report)
        s = report["summary"]
        print(f"set quality: coverage {s['coverage']:.3f}, recall {s['recall']:.3f}, precision {s['precision']:.3f}, "
              f"agreement {s['agreement']:.3f} ({Path(args.out) / 'quality.json'})")
    if args.eval_protocol:
        result = evaluate_run(synset, splits, args.out, seed=args.seed, **eval_kwargs)
        _print_result(result)
    return 0


def _print_result(result) -> None:
    print(f"protocol: {result.protocol['name']} ({result.protocol_source})")
    print(result.summary())


def _cmd_eval(args) -> int:
    from gendistill.evaluation.evaluate import evaluate
    from gendistill.pipeline import load_for_synset
    from gendistill.synset.format import SyntheticSet

    synset = SyntheticSet.load(args.synset)
    if args.hard_labels:
        synset = synset.with_hard_labels()
    splits = load_for_synset(synset, args.data_root, args.download, args.dataset)
    result = evaluate(synset, splits.test, args.protocol, model=args.model, runs=args.runs, epochs=args.epochs,
                      train=splits.train,
                      seed=args.seed, device=args.device, progress=not args.quiet, test_subset=args.test_subset,
                      teacher_epochs=args.teacher_epochs, eval_count=args.eval_count)
    _print_result(result)
    if args.json:
        from gendistill.utils.atomic import atomic_json

        atomic_json(args.json, result.to_dict())
    return 0


def _cmd_metrics(args) -> int:
    from gendistill.evaluation.metrics import set_quality
    from gendistill.pipeline import load_for_synset
    from gendistill.synset.format import SyntheticSet

    synset = SyntheticSet.load(args.synset)
    splits = load_for_synset(synset, args.data_root, args.download, args.dataset)
    report = set_quality(synset, splits.train, real_per_class=args.real_per_class, seed=args.seed,
                         progress=not args.quiet)
    s = report["summary"]
    print(f"{synset.meta.get('method', '?')} on {splits.train.name}, {len(synset)} images "
          f"(feature network: {report['record']['feature_network']['cache']})")
    print(f"precision {s['precision']:.3f}  recall {s['recall']:.3f}  density {s['density']:.3f}  "
          f"coverage {s['coverage']:.3f}  agreement {s['agreement']:.3f}  FD {s['fd']:.2f}")
    print(f"diversity {s['diversity']:.3f} (random real {s['diversity_random_real']:.3f})  "
          f"representativeness min/max cos {s['feature_repr_min']:.3f}/{s['feature_repr_max']:.3f}  "
          f"max cos to own class {s['feature_div_max']:.3f}  (pixels: {s['pixel_repr_min']:.3f}/"
          f"{s['pixel_repr_max']:.3f}/{s['pixel_div_max']:.3f})")
    if args.json:
        from gendistill.utils.atomic import atomic_json

        atomic_json(args.json, report)
        print(f"report: {args.json}")
    return 0


def _cmd_export(args) -> int:
    from gendistill.synset.format import SyntheticSet, save_grid

    synset = SyntheticSet.load(args.synset)
    if args.format == "imagefolder":
        path = synset.to_imagefolder(args.out, decoded=not args.raw)
    else:
        path = save_grid(synset.to_pixels(), synset.hard_labels(), synset.num_classes, args.out)
    print(f"wrote {path}")
    return 0


#: the method a file of each import format records unless --method says otherwise
DEFAULT_METHOD = {"dc": "dc", "mtt": "mtt", "kip_npz": "kip"}


def _cmd_import(args) -> int:
    from gendistill.data.datasets import load_dataset
    from gendistill.synset.format import SyntheticSet
    from gendistill.synset.interop import IMPORTERS

    zca = args.zca or ("kip" if args.format == "kip_npz" and "_zca" in Path(args.path).name else None)
    splits = load_dataset(args.dataset, args.data_root, download=args.download, zca=zca)
    spec = (splits.train.class_names, splits.train.preprocessing)
    if args.format == "imagefolder":
        synset = SyntheticSet.from_imagefolder(args.path, spec, method=args.method)
    else:
        options = {"train_pixels": splits.train.pixels} if args.format == "kip_npz" else \
            {"trust_pickle": args.trust_pickle}
        synset = IMPORTERS[args.format](args.path, spec, method=args.method or DEFAULT_METHOD[args.format], **options)
    synset.meta["dataset"] = splits.name
    synset.save(args.out)
    print(f"wrote {args.out} ({len(synset)} images, ipc {synset.ipc})")
    return 0


def _cmd_methods(args) -> int:
    from gendistill.registry import get_method, list_methods

    if args.markdown:
        from gendistill.registry import methods_markdown

        print(methods_markdown(), end="")
        return 0
    if args.name:
        from gendistill.presets import describe_method

        print(describe_method(args.name), end="")
        return 0
    for name in list_methods():
        info = get_method(name)
        print(f"{name:12s} {info.kind:10s} {info.label_kind:6s} eval={info.default_eval:5s} {info.paper}")
    print("details of one method: gendistill methods NAME")
    return 0


def _cmd_config(args) -> int:
    from gendistill.presets import describe_resolved

    print(describe_resolved(args.name, args.dataset, args.ipc, args.preset, args.set), end="")
    return 0


def _cmd_datasets(args) -> int:
    from gendistill.data.datasets import get_dataset_spec, list_datasets

    for name in list_datasets():
        print(f"{name:14s} {get_dataset_spec(name).description}")
    return 0


def _cmd_networks(args) -> int:
    from gendistill.nn.nets import list_networks

    print("\n".join(["convnet (variants: convnet_d4, convnet_bn, convnet_w64_nn, ...)", *list_networks(),
                     "timm:<model>"]))
    return 0


def _cmd_table(args) -> int:
    from gendistill.evaluation.results import format_csv, format_table, load_results, result_row
    from gendistill.utils.atomic import atomic_text

    results = load_results(args.paths)
    if not results:
        raise GendistillError("no result JSON (a record with mean, accs and protocol) found under the given paths")
    rows = [result_row(r) for r in results]
    print(format_table(rows), end="")
    if args.csv:
        atomic_text(args.csv, format_csv(rows))
        print(f"wrote {args.csv}")
    return 0
