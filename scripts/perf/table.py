"""The side-by-side table of ``results/perf/``: one row per ``compare.py --json`` record, with both numbers, the
ratio, whether the losses agree, the machine and the command that measured it.

    python scripts/perf/table.py results/perf/*.json results/perf/avx512_bf16/*.json --out results/perf/README.md

Records of different machines sit in different folders (``results/perf/`` holds the first development machine's,
``results/perf/avx512_bf16/`` a later one's with a bfloat16 unit); each row names its machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGET = 2.0


def _machine_key(rec: dict) -> str:
    return json.dumps(rec["machine"], sort_keys=True)


def _row(rec: dict, machine: str) -> str:
    ref, ours = rec["reference"], rec["ours"]
    evaluation = rec["comparison"] == "evaluate"
    unit = "s/run" if evaluation else "s/iteration"
    key = "s_per_run" if evaluation else "s_per_iteration_median"
    ratio = rec["ratio"]
    changed = "; ".join(f"{k} {v['used']} (published {v['published']}: {v.get('why', 'lowered with --set')})"
                        if isinstance(v, dict)
                        else f"{k}={v}" for k, v in (rec.get("shared_changed") or {}).items()) or "published"
    if "random" in str((rec.get("data") or {}).get("dataset", "")):
        changed += f"; random CIFAR-10-shaped data, {rec['data']['train_per_class']} per class"
    agree = {True: "yes", False: "**no**", None: "n/a"}[rec.get("losses_agree")]
    if not evaluation and min(ref.get("n_loss", 0), ours.get("n_loss", 0)) < 2:
        agree = f"n/a, one iteration: loss {ref['loss_mean']:.4g} vs {ours['loss_mean']:.4g}"
    elif not evaluation and rec.get("rounds") and ref.get("iterations_timed") == len(rec["rounds"]):
        # each round re-runs the same first iteration: our seeded side repeats one loss, so no spread to test against
        agree = f"n/a, one iteration per round: loss {ref['loss_mean']:.4g} vs {ours['loss_mean']:.4g} (mean)"
    if evaluation:
        runs = rec.get("runs", 1)  # compare.py evaluate --model M --runs N (older records: ConvNet-3, one run)
        agree = f"accuracy {ref['accuracy']:.2f} vs {ours['accuracy']:.2f} " + \
            ("(one run each)" if runs == 1 else f"(mean of {runs} runs each)")
        if rec.get("model", "convnet") != "convnet":
            changed += f"; network {rec['model']}, {rec['epochs']} epochs"
        if rec.get("ours_compiled"):
            changed += f"; ours compiled (`--compile`), mean of {runs} runs including the first run's compilation"
        if rec.get("ours_autocast"):
            changed += f"; ours under {rec['ours_autocast']} autocast (`--bf16`)"
    elif rec.get("ours_compiled"):
        changed += (f"; ours compiled (`--compile`): its first iteration, untimed, ended after "
                    f"{ours.get('first_iteration_elapsed_s', float('nan')):.1f} s")
    if rec.get("rounds"):
        changed += (f"; {len(rec['rounds'])} rounds, alternating which side goes first, timed iterations pooled "
                    "(per-round ratios " + ", ".join(f"{r['ratio']:.2f}" for r in rec["rounds"]) + ")")
    if rec.get("ours_set"):
        changed += "; ours only: " + ", ".join(f"`{item}`" for item in rec["ours_set"])
    if rec.get("ours_inductor_cache"):
        changed += f"; inductor cache {rec['ours_inductor_cache']}"
    if rec.get("probe_before"):  # compare.py's machine probe, before and after the comparison
        b, a = rec["probe_before"], rec["probe_after"]
        changed += (f"; machine probe before / after: conv {b['conv_gflops']:.0f} / {a['conv_gflops']:.0f} GFLOP/s, "
                    f"copy {b['copy_gbs']:.1f} / {a['copy_gbs']:.1f} GB/s")
    if rec.get("conditions"):  # what the machine was doing, written into a record by hand after the run
        changed += f"; {rec['conditions']}"
    return (f"| `{rec['comparison']}` | {rec['reference_repo']}@{rec['reference_commit'][:7]} | "
            f"{ref[key]:.2f} | {ours[key]:.2f} | {unit} | "
            f"**{ratio:.2f}×**{'' if ratio >= TARGET else ' (below 2×)'} | {ref.get('iterations_timed', 1)} | "
            f"{agree} | {machine} | {changed} |")


def render(records: list[dict], missing: list[str] = ()) -> str:
    # machines in order of first appearance in the sorted rows, named A, B, ...
    ordered = sorted(records, key=lambda r: (r["comparison"], _machine_key(r)))
    labels: dict[str, str] = {}
    for rec in ordered:
        labels.setdefault(_machine_key(rec), chr(ord("A") + len(labels)))
    lines = ["# Side-by-side speed: gendistill against the reference implementations", "",
             "Written by `python scripts/perf/table.py results/perf/*.json results/perf/avx512_bf16/*.json --out",
             "results/perf/README.md` from the `compare.py --json` records beside it. Each ratio is reference /",
             "ours of the median seconds per outer iteration (for `evaluate`: per evaluation run), both sides run",
             "one after the other on the same idle",
             "machine with the same threads, data and settings. \"losses agree\": the two mean losses over the timed",
             "iterations differ by less than 3 standard errors.", "",
             "| comparison | reference repository | reference | ours | unit | ratio | timed | losses agree "
             "| machine | settings |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(r, labels[_machine_key(r)]) for r in ordered]
    if missing:
        lines += ["", "Not in the table:", ""] + [f"- {m}" for m in missing]
    lines += ["", "Machines (each ratio compares two timings on one machine: compare ratios, not seconds, across "
              "machines):",
              ""]
    lines += [f"- {label}: {key}" for key, label in labels.items()]
    lines += ["", "Commands:", "", "```"] + [r["command"] for r in ordered]
    lines += ["```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--missing", action="append", default=[], metavar="TEXT",
                    help="a comparison not in the table and why (one line each)")
    args = ap.parse_args(argv)
    records = [json.loads(p.read_text()) for p in args.records if p.suffix == ".json"]
    records = [r for r in records if "ratio" in r]
    text = render(records, args.missing)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
