"""Where one of our methods spends an outer iteration: ``torch.profiler`` over a few iterations at the published
setting (after one warm-up iteration), top operators by self CPU time.

    python scripts/perf/op_profile.py dm --iterations 3 --out results/perf/profile_dm.txt
    python scripts/perf/op_profile.py evaluate --epochs 20 --out results/perf/profile_evaluate.txt

``evaluate`` profiles the ``dsa`` recipe on random real MNIST IPC 10 (one network, ``--epochs`` epochs). A method
that ``compare.py`` times on random CIFAR-10-shaped data (cafe, mtt, datm) is profiled on the data and settings our
side gets there: the same random data (``--random-per-class``), the comparison's shared settings (``--set`` changes
one, as in ``compare.py``), its overrides, and for mtt/datm our expert buffers (``--experts`` x ``--expert-epochs``,
trained first, untimed):

    python scripts/perf/op_profile.py mtt --random-per-class 500 --out results/perf/profile_mtt.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path


def _profile(fn, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def _as_compared(name: str, work: Path, args: argparse.Namespace) -> tuple[str, str | None, list[str], str] | None:
    """Our side of ``compare.py NAME`` where it runs on random CIFAR-10-shaped data: (data root, ZCA, ``--set``
    values, a description), or None for a method compared on the real dataset (or not compared)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import compare

    comp = compare.SETTINGS.get(name)
    if comp is None or comp.data != "random_cifar10":
        return None
    data_dir = compare.make_random_cifar(work / "data", args.random_per_class)
    values, changed = compare.shared_settings(comp, args.sets, args.expert_epochs if comp.buffers else None)
    sets = [*(f"{k}={v}" for k, v in values.items()), *comp.overrides]
    what = f"as compare.py {name}: random CIFAR-10-shaped data, {args.random_per_class} per class"
    if comp.buffers:
        compare.train_our_buffers(comp, work / "buffers", data_dir, args.threads, args.experts, args.expert_epochs)
        sets.append(f"buffer={work / 'buffers'}")
        what += f"; our {comp.buffers} experts, {args.experts} x {args.expert_epochs} epochs"
    if changed:
        what += "; " + compare.describe_changed(changed)
    return str(data_dir), "kornia" if comp.zca else None, sets, what


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", help="a registered iterative method (e.g. dm, dc, dsa) or 'evaluate'")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    ap.add_argument("--epochs", type=int, default=20, help="evaluate: epochs of the profiled run")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--data-root", default=os.environ.get("GENDISTILL_DATA", ""))
    ap.add_argument("--random-per-class", type=int, default=5000,
                    help="cafe/mtt/datm: random training images per class, as compare.py's")
    ap.add_argument("--experts", type=int, default=2, help="mtt/datm: experts, as compare.py's")
    ap.add_argument("--expert-epochs", type=int, default=3, help="mtt/datm: epochs per expert, as compare.py's")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from gendistill.data.datasets import load_dataset
    from gendistill.utils.seeding import make_generator

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="gendistill-profile-") as tmp:
        compared = None if args.method == "evaluate" else _as_compared(args.method, Path(tmp), args)
        data_root, zca, sets = (compared[0], compared[1], compared[2]) if compared else (args.data_root or None, None,
                                                                                      args.sets)
        dataset = "cifar10" if compared else args.dataset
        splits = load_dataset(dataset, data_root, zca=zca)
        if args.method == "evaluate":
            from gendistill.evaluation.evaluate import evaluate
            from gendistill.registry import get_method

            synset = get_method("random").cls(get_method("random").config_cls()).distill(
                splits.train, args.ipc, seed=0, progress=False)
            table = _profile(lambda: evaluate(synset, splits.test, "dsa", runs=1, epochs=args.epochs,
                                              progress=False), args.rows)
            what = f"evaluate: dsa recipe, 1 run x {args.epochs} epochs, random real {args.dataset} IPC {args.ipc}"
        else:
            from gendistill.presets import resolve_config
            from gendistill.registry import get_method

            info = get_method(args.method)
            distiller = info.cls(resolve_config(args.method, dataset, args.ipc, overrides=sets))
            gen = make_generator(0)
            state = distiller.init_state(splits.train, args.ipc, gen, 0)
            for it in range(args.warmup):
                distiller.step(it, state, splits.train, gen, 0)

            def steps() -> None:
                for it in range(args.warmup, args.warmup + args.iterations):
                    distiller.step(it, state, splits.train, gen, 0)

            table = _profile(steps, args.rows)
            setting = compared[3] if compared else \
                f"published setting{' + ' + ' '.join(args.sets) if args.sets else ''}"
            what = (f"{args.method}: {args.iterations} outer iterations after {args.warmup} warm-up, {dataset} IPC "
                    f"{args.ipc}, {setting}")
    text = (f"{what}\nthreads {args.threads}; {platform.processor() or platform.machine()}; torch {torch.__version__}"
            f"\ncommand: python {' '.join(sys.argv)}\n\n{table}\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
