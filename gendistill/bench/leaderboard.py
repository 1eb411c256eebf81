"""The leaderboard: one markdown file, one CSV and one self-contained HTML page (plots and image grids embedded
as base64, sortable tables, no external URLs) from the benchmark cells, with published figures and robust scores.

:func:`write_leaderboard` is the entry point. The published-figures lookup and the robust scores are passed in
as plain arguments, so this module depends on neither ``published`` nor ``robust``.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CSV_COLUMNS", "write_leaderboard"]

CSV_COLUMNS = [
    "cell", "method", "preset", "overrides", "dataset", "ipc", "distill_seed", "protocol", "eval_model", "status",
    "error", "mean", "std", "n_runs", "reduced", "reduced_note", "published", "published_std", "published_protocol",
    "gap", "distill_time_s", "eval_time_s", "peak_memory_mb", "device", "flops",
    # extra columns so the CSV carries what the tables show
    "protocol_epochs", "augmentation", "lr", "published_network", "published_citation", "published_like_for_like",
    "precision", "recall", "density", "coverage", "diversity", "agreement", "grid", "run_dir", "teacher_accuracy",
    "autocast",
]
MAIN_HEADERS = ["cell", "method", "dataset", "IPC", "seed", "eval net", "protocol (recipe)", "status",
                "accuracy (%)", "reduced", "published (%)", "gap (pts)", "distill time (s)", "eval time (s)",
                "peak mem (MB)", "device", "FLOPs"]
QUALITY_KEYS = ["precision", "recall", "density", "coverage", "diversity", "agreement", "fd"]
#: a cell whose runs spread by more than this many points measures the network's luck, not the set
UNSTABLE_RANGE = 10.0
ROBUST_KEYS = ["hlr", "ior", "lrs", "ars"]
HEADER_NOTE = (
    "Accuracies are FINAL-EPOCH test accuracies in percent: mean ± population std over the evaluation runs "
    "(n runs per cell), each run a freshly initialised network trained on the synthetic set. DD-Ranking and the "
    "MTT-family papers report best-of-run accuracy (the best test accuracy seen during training), which sits above "
    "a final-epoch figure, so the published column is not always like-for-like. Rows with a reduced distillation "
    "budget or a reduced evaluation (fewer epochs/runs, a test subset) are labelled in the 'reduced' column: they "
    "are smoke results, not comparable figures. Gap = ours − published, in accuracy points; * marks a figure "
    "published under another protocol or network. Times are in seconds, peak memory in MB (the process peak "
    "when the cell finished: cells share one process unless run as Ray tasks)."
)
ROBUST_NOTE = ("Robust scores use the DD-Ranking definitions, computed from final-epoch accuracies; all four are "
               "fractions, not percent (0.050 = 5 accuracy points), shown with 3 decimals. HLR: hard-label "
               "recovery (lower is better); IOR: improvement over random (higher is better); LRS: label-robust "
               "score; ARS: augmentation-robust score (— when not computed).")
REGIME_NOTE = ("Each set under every label regime it was evaluated in - hard (the set's labels, cross-entropy), soft "
               "(its own soft labels) and teacher (a network trained on the real data relabels every augmented view, "
               "as RDED and DD-Ranking evaluate) - next to random real under the identical protocol. IOR: accuracy "
               "minus random real's, in points; LRS: DD-Ranking's label-robust score (fraction) of a soft/teacher "
               "row, with HLR from the same set's hard-label accuracy.")
REGIME_HEAD = ["method", "dataset", "IPC", "eval net", "regime", "protocol", "accuracy (%)", "random real (%)",
               "IOR (points)", "LRS"]
_CSS = """.scroll{overflow-x:auto}
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.8em 0;
font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#eef;cursor:pointer;
user-select:none}th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}tr.failed{background:#fdd}
tr.pending{background:#ffd}.note{max-width:70em;color:#444}img{max-width:100%;border:1px solid #ddd}
figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:12px}"""
_JS = """function cellKey(t){var m=t.trim().match(/^[+-]?(\\d+\\.?\\d*|\\.\\d+)(e[+-]?\\d+)?/i);
return m?parseFloat(m[0]):null}
document.querySelectorAll('table.sortable').forEach(function(tb){tb.querySelectorAll('th').forEach(function(th,i){
th.addEventListener('click',function(){var asc=!th.classList.contains('asc');
tb.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc')});th.classList.add(asc?'asc':'desc');
var body=tb.tBodies[0],rows=Array.from(body.rows);rows.sort(function(a,b){var x=a.cells[i].textContent,
y=b.cells[i].textContent,p=cellKey(x),q=cellKey(y);if(p===null&&q===null)return asc?x.localeCompare(y):
y.localeCompare(x);if(p===null)return 1;if(q===null)return -1;return asc?p-q:q-p});
rows.forEach(function(r){body.appendChild(r)})})})});"""


# ------------------------------------------------------------------------------------------- cell facts
def _num(x: Any, fmt: str = ".1f") -> str:
    """Format a number, or an empty string for None/NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return format(x, fmt)


def _short(override: str) -> str:
    """An override for display: a file path becomes ``<local ...>`` with a short hash (labels never show paths)."""
    import hashlib

    key, sep, value = str(override).partition("=")
    if sep and ("/" in value or "\\" in value) and not value.startswith("gendistill/"):
        return f"{key}=<local {Path(value).name or 'path'} #{hashlib.sha1(value.encode()).hexdigest()[:6]}>"
    return str(override)


def _method_label(cell: dict) -> str:
    """The entry's own label (an experiment's arm name), else ``method`` plus its preset and overrides, e.g.
    ``dm [cpu] iterations=100``; file paths in overrides are shortened (never shown)."""
    if cell.get("entry_label"):
        return str(cell["entry_label"])
    label = str(cell.get("method"))
    if cell.get("preset"):
        label += f" [{cell['preset']}]"
    if cell.get("overrides"):
        label += " " + " ".join(_short(o) for o in cell["overrides"])
    return label


def _augmentation(proto: dict) -> str:
    """The training augmentation of an evaluation protocol, in words."""
    parts = [f"dsa {proto['dsa_strategy']}" if proto.get("dsa_strategy") else "",
             f"dc-aug {proto['dc_aug']}" if proto.get("dc_aug") else "",
             f"cutmix p={proto['cutmix_prob']}" if proto.get("cutmix_prob") else ""]
    return " + ".join(p for p in parts if p) or "no augmentation"


def _facts(cell: dict, published: Callable | None) -> dict[str, Any]:
    """Everything the outputs show about one cell, as machine-readable values."""
    res = cell.get("result") or None
    proto = (res or {}).get("protocol") or {}
    syn = (res or {}).get("synset") or {}
    done = cell.get("status") == "done" and res is not None
    f: dict[str, Any] = {k: cell.get(k) for k in ("cell", "method", "preset", "dataset", "ipc", "distill_seed",
                                                  "protocol", "eval_model", "status", "error", "device", "flops",
                                                  "grid", "run_dir")}
    f["overrides"] = ";".join(map(str, cell.get("overrides") or []))
    f["label"] = _method_label(cell)
    f["mean"] = res.get("mean") if done else None
    f["std"] = res.get("std") if done else None
    f["best_mean"] = res.get("best_mean") if done else None
    f["n_runs"] = len(res.get("accs") or []) if done else None
    accs = (res.get("accs") or []) if done else []
    f["unstable"] = bool(accs) and max(accs) - min(accs) > UNSTABLE_RANGE
    f["run_range"] = (min(accs), max(accs)) if accs else None
    f["sample_seed"] = cell.get("sample_seed")
    f["protocol_epochs"] = proto.get("epochs")
    f["augmentation"] = _augmentation(proto) if proto else ""
    f["lr"] = "from synset" if proto.get("lr_from_synset") else proto.get("lr")
    # the teacher's own test accuracy (teacher regimes; results since the field existed): the labels' ceiling
    f["teacher_accuracy"] = ((res or {}).get("teacher") or {}).get("test_accuracy")
    f["autocast"] = (res or {}).get("autocast")  # the evaluation's precision where not float32 (e.g. bf16)
    notes = []
    if syn.get("reduced_budget"):
        notes.append("distillation: reduced budget" + (f" ({syn['preset']} preset)" if syn.get("preset") else ""))
    if res and res.get("reduced"):
        notes.append("evaluation: " + (res.get("reduced_note") or "reduced"))
    f["reduced"] = bool(notes) if res else None
    f["reduced_note"] = "; ".join(notes)
    f["distill_time_s"] = cell.get("distill_time_s")
    f["eval_time_s"] = cell.get("eval_time_s") if cell.get("eval_time_s") is not None else (res or {}).get(
        "wall_time_s")
    f["peak_memory_mb"] = cell.get("peak_memory_mb") if cell.get("peak_memory_mb") is not None else (res or {}).get(
        "peak_memory_mb")
    for k in QUALITY_KEYS:
        f[k] = (cell.get("quality") or {}).get(k)
    pub = published(cell.get("method"), cell.get("dataset"), cell.get("ipc"), cell.get("eval_model"),
                    cell.get("protocol")) if published is not None else None
    f["published"] = getattr(pub, "value", None) if pub is not None else None
    f["published_std"] = getattr(pub, "std", None) if pub is not None else None
    f["published_protocol"] = getattr(pub, "protocol", None) if pub is not None else None
    f["published_network"] = getattr(pub, "network", None) if pub is not None else None
    f["published_citation"] = pub.citation() if pub is not None else None
    f["published_verified"] = bool(getattr(pub, "is_verified", True)) if pub is not None else None
    f["published_statistic"] = getattr(pub, "statistic", "final") if pub is not None else None
    like = pub is None or (f["published_protocol"] in (None, cell.get("protocol"))
                           and f["published_network"] in (None, cell.get("eval_model")))
    # like for like: a best-of-run figure against our best-of-run number when the protocol measured one
    ours, against = f["mean"], "final"
    if f["published_statistic"] == "best":
        if f["best_mean"] is not None:
            ours, against = f["best_mean"], "best"
        else:
            like = False  # ours is final-epoch, theirs best-of-run
    f["published_like_for_like"] = like if pub is not None else None
    f["gap_against"] = against if pub is not None else None
    has_gap = ours is not None and f["published"] is not None and f["published_verified"] and not f["unstable"]
    f["gap"] = round(ours - f["published"], 4) if has_gap else None
    return f


def _recipe(f: dict) -> str:
    if f["protocol_epochs"] is None:
        return str(f["protocol"])
    teacher = f", teacher {f['teacher_accuracy']:.2f} %" if f.get("teacher_accuracy") is not None else ""
    precision = f", {f['autocast']} autocast" if f.get("autocast") else ""
    return f"{f['protocol']}: {f['protocol_epochs']} ep, {f['augmentation']}, lr {f['lr']}{teacher}{precision}"


def _main_row(f: dict) -> list[str]:
    """The displayed main-table row of one cell (same order as :data:`MAIN_HEADERS`)."""
    status = f["status"] if f["status"] != "failed" else f"failed: {f['error'] or 'no error recorded'}"
    spread = "" if f["std"] is None else f" ± {f['std']:.2f}"
    acc = f"{f['mean']:.2f}{spread} (n={f['n_runs']})" if f["mean"] is not None else "—"
    if f["unstable"]:
        lo, hi = f["run_range"]
        acc = f"unstable: runs {lo:.1f}–{hi:.1f} (n={f['n_runs']})"
    elif f["best_mean"] is not None:
        acc += f"; best-of-run {f['best_mean']:.2f}"
    reduced = "" if f["reduced"] is None else (f"yes: {f['reduced_note']}" if f["reduced"] else "no")
    pub = gap = ""
    if f["published"] is not None:
        pub = f"{f['published']:.2f}" + (f" ± {f['published_std']:.2f}" if f["published_std"] is not None else "")
        pub += f" {f['published_statistic']}-epoch" if f["published_statistic"] == "final" else " best-of-run"
        pub += f" ({f['published_citation']})"
        if not f["published_verified"]:
            pub += " (unverified: no gap computed)"
        if not f["published_like_for_like"]:
            pub += f" *under {f['published_protocol']}/{f['published_network']}"
        gap = (f"{f['gap']:+.2f} vs our {f['gap_against']}" + ("" if f["published_like_for_like"] else "*")
               if f["gap"] is not None else "")
    return [f["cell"], f["label"], f["dataset"], str(f["ipc"]), str(f["distill_seed"]), f["eval_model"],
            _recipe(f), status, acc, reduced, pub, gap, _num(f["distill_time_s"]), _num(f["eval_time_s"]),
            _num(f["peak_memory_mb"]), f["device"] or "", _num(f["flops"], ".3g")]


PIVOT_NOTE = ("Per dataset: one row per method (or experiment arm), one column per IPC and protocol, on the "
              "main evaluation network. Each value is the mean ± std over the sets of that row (distillation and "
              "sampling seeds; n sets) or, for a single set, over its evaluation runs (n runs). ★ marks the best "
              "value of a column; † a reduced distillation budget or evaluation (details in 'All cells'); "
              "'unstable' a cell whose runs spread by more than 10 points (it measures the network's luck, not the "
              "set).")


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def _pivots(facts: list[dict]) -> list[tuple[str, list[str], list[list[str]], list[list[str]]]]:
    """``[(dataset, headers, markdown rows, html rows)]``: methods x (IPC, protocol) accuracy pivots."""
    out = []
    primary = _primary(facts)
    for dataset in sorted({str(f["dataset"]) for f in facts}):
        rows_f = [f for f in facts if str(f["dataset"]) == dataset and f["mean"] is not None
                  and (primary is None or f["eval_model"] == primary[1])]
        if not rows_f:
            continue
        columns = sorted({(f["ipc"], f["protocol"]) for f in rows_f})
        labels = sorted({f["label"] for f in rows_f})
        cells: dict[tuple, tuple[float, str, bool]] = {}
        for label in labels:
            for col in columns:
                group = [f for f in rows_f if f["label"] == label and (f["ipc"], f["protocol"]) == col]
                if not group:
                    continue
                mark = "†" if any(f["reduced"] for f in group) else ""
                if any(f["unstable"] for f in group):
                    cells[(label, col)] = (math.nan, "unstable" + mark, False)
                    continue
                if len(group) > 1:
                    m, sd = _mean_std([f["mean"] for f in group])
                    text = f"{m:.2f} ± {sd:.2f} ({len(group)} sets)"
                else:
                    m, text = group[0]["mean"], f"{group[0]['mean']:.2f} ± {group[0]['std']:.2f} " \
                                                f"({group[0]['n_runs']} runs)"
                cells[(label, col)] = (m, text + mark, True)
        best = {col: max((v[0] for (lab, c), v in cells.items() if c == col and v[2]), default=None)
                for col in columns}
        headers = ["method"] + [f"IPC {ipc} · {proto}" for ipc, proto in columns]
        md_rows, html_rows = [], []
        for label in labels:
            md, ht = [label], [html.escape(label)]
            for col in columns:
                value = cells.get((label, col))
                if value is None:
                    md.append("")
                    ht.append("")
                    continue
                top = value[2] and best[col] is not None and value[0] == best[col]
                md.append(f"**{value[1]}** ★" if top else value[1])
                ht.append(f"<b>{html.escape(value[1])} ★</b>" if top else html.escape(value[1]))
            md_rows.append(md)
            html_rows.append(ht)
        out.append((dataset, headers, md_rows, html_rows))
    return out


def _quality_summary(facts: list[dict]) -> list[list[str]]:
    """Set-quality columns per (method, dataset, IPC): mean ± std over that row's sets."""
    sets = _sets([f for f in facts if any(f[k] is not None for k in QUALITY_KEYS)]).values()
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for f in sets:
        groups[(f["label"], str(f["dataset"]), f["ipc"])].append(f)
    rows = []
    for (label, dataset, ipc), group in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        row = [label, dataset, str(ipc), str(len(group))]
        for k in QUALITY_KEYS:
            values = [f[k] for f in group if f[k] is not None]
            if not values:
                row.append("")
                continue
            m, sd = _mean_std(values)
            fmt = ".1f" if k == "fd" else ".3f"
            row.append(format(m, fmt) + (f" ± {format(sd, fmt)}" if len(values) > 1 else ""))
        rows.append(row)
    return rows


def _sets(facts: list[dict]) -> dict[tuple, dict]:
    """One entry per distilled set (method label, dataset, IPC, seed, sampling seed): the first cell that has it."""
    out: dict[tuple, dict] = {}
    for f in facts:
        out.setdefault((f["label"], f["dataset"], f["ipc"], f["distill_seed"], f.get("sample_seed")), f)
    return out


def _quality_rows(facts: list[dict]) -> list[list[str]]:
    sets = _sets([f for f in facts if any(f[k] is not None for k in QUALITY_KEYS)]).values()
    return [[f["label"], f["dataset"], str(f["ipc"]), str(f["distill_seed"])]
            + [_num(f[k], ".3f") for k in QUALITY_KEYS] for f in sets]


def _robust_rows(robust: list[dict]) -> list[list[str]]:
    return [[str(r.get(k)) for k in ("method", "dataset", "ipc", "protocol", "eval_model")]
            + [_num(r.get(k), ".3f") or "—" for k in ROBUST_KEYS] for r in robust]


def _regime_rows(regimes: list[dict]) -> list[list[str]]:
    return [[r["method"], r["dataset"], str(r["ipc"]), r["eval_model"], r["regime"], r["protocol"],
             _num(r["accuracy"], ".2f"), _num(r["random"], ".2f"),
             "—" if r["ior"] is None else f"{r['ior']:+.2f}", _num(r["lrs"], ".3f")] for r in regimes]


def _xarch_value(value: float | None) -> str:
    if value is not None and math.isnan(value):
        return "unstable"
    return _num(value, ".2f")


def _xarch(facts: list[dict]) -> tuple[list[str], dict[tuple, dict[str, float]]]:
    """Eval networks and {(label, dataset, ipc, protocol): {net: mean accuracy over distill seeds}}; a network
    whose runs were unstable in any of those cells gets NaN (shown as 'unstable', never as a number)."""
    acc: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for f in facts:
        if f["mean"] is not None:
            acc[(f["label"], f["dataset"], f["ipc"], f["protocol"])][f["eval_model"]].append(
                math.nan if f["unstable"] else f["mean"])
    nets = sorted({n for v in acc.values() for n in v})
    return nets, {k: {n: sum(a) / len(a) for n, a in v.items()} for k, v in acc.items()}


def _xarch_headers(facts: list[dict], nets: list[str]) -> list[str]:
    """``net (%)`` per network; where the networks trained for different epochs (a per-network recipe such as the
    bench's ``network_epochs``), each header names its epochs so the columns are not read as one budget."""
    epochs = {n: sorted({f["protocol_epochs"] for f in facts if f["eval_model"] == n and f["mean"] is not None
                         and f["protocol_epochs"] is not None}) for n in nets}
    if len({tuple(e) for e in epochs.values()}) <= 1:
        return [f"{n} (%)" for n in nets]
    return [f"{n} (%, {'/'.join(map(str, epochs[n]))} ep)" for n in nets]


# ------------------------------------------------------------------------------------------- plots
def _primary(facts: list[dict]) -> tuple[str, str] | None:
    """The most common (protocol, eval net) among done cells, preferring convnet: the pair a plot compares on."""
    count: dict[tuple, int] = defaultdict(int)
    for f in facts:
        if f["mean"] is not None:
            count[(f["protocol"], f["eval_model"])] += 1
    return max(sorted(count), key=lambda k: (count[k], k[1] == "convnet")) if count else None


def _slug(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(map(str, parts)))


def _make_plots(facts: list[dict], plots_dir: Path) -> tuple[list[tuple[str, Path, str]], list[str]]:
    """Write the PNG plots; return (name, path, alt) per plot and the notes on plots that were skipped."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written: list[tuple[str, Path, str]] = []
    notes: list[str] = []

    def save(fig: Figure, name: str, alt: str) -> None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        path = plots_dir / f"{name}.png"
        FigureCanvasAgg(fig)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        written.append((name, path, alt))

    done = [f for f in facts if f["mean"] is not None]
    if not done:
        notes.append("No finished cells: no plots.")
    for ds in sorted({f["dataset"] for f in done}):
        sub = [f for f in done if f["dataset"] == ds]
        proto, net = _primary(sub)  # type: ignore[misc]
        ref = [f for f in sub if (f["protocol"], f["eval_model"]) == (proto, net)]
        runs: dict[str, dict[int, list[tuple]]] = defaultdict(lambda: defaultdict(list))
        for f in ref:
            runs[f["label"]][f["ipc"]].append((f["mean"], f["std"], f["n_runs"] or 1))
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        for label in sorted(runs):
            ipcs = sorted(runs[label])
            means, stds = [], []
            for i in ipcs:  # pool the runs of all distillation seeds: mean and population std of every run
                n = sum(r[2] for r in runs[label][i])
                m = sum(r[0] * r[2] for r in runs[label][i]) / n
                stds.append(math.sqrt(sum(r[2] * ((r[1] or 0.0) ** 2 + (r[0] - m) ** 2) for r in runs[label][i]) / n))
                means.append(m)
            ax.errorbar(ipcs, means, yerr=stds, marker="o", capsize=3, label=label)
        all_ipc = [f["ipc"] for f in ref]
        if min(all_ipc) > 0 and max(all_ipc) / min(all_ipc) >= 10:
            ax.set_xscale("log")
        ax.set_xticks(sorted(set(all_ipc)), [str(i) for i in sorted(set(all_ipc))])
        ax.minorticks_off()
        ax.set(xlabel="images per class (IPC)", ylabel="final-epoch test accuracy (%)",
               title=f"{ds}: accuracy vs IPC ({proto}, {net})")
        ax.legend(fontsize=7)
        save(fig, _slug("acc_vs_ipc", ds), f"Accuracy vs IPC plot: {ds} ({proto}, {net})")
        for ipc in sorted({f["ipc"] for f in ref}):
            pts = sorted((f["distill_time_s"], f["mean"], f["label"]) for f in ref
                         if f["ipc"] == ipc and f["distill_time_s"] and f["distill_time_s"] > 0)
            if not pts:
                notes.append(f"{ds} IPC {ipc}: no distillation times, no accuracy-vs-time plot.")
                continue
            front, best = [], -math.inf
            for t, a, _ in pts:
                if a > best:
                    front.append((t, a))
                    best = a
            fig = Figure(figsize=(6, 4))
            ax = fig.add_subplot()
            ax.scatter([p[0] for p in pts], [p[1] for p in pts])
            for t, a, label in pts:
                ax.annotate(label, (t, a), fontsize=7, xytext=(3, 3), textcoords="offset points")
            fx, fy = [p[0] for p in front] + [pts[-1][0]], [p[1] for p in front] + [front[-1][1]]
            ax.step(fx, fy, where="post", color="tab:red", label="Pareto front")
            ax.set_xscale("log")
            ax.set(xlabel="distillation time (s, log)", ylabel="final-epoch test accuracy (%)",
                   title=f"{ds} IPC {ipc}: accuracy vs distillation time ({proto}, {net})")
            ax.legend(fontsize=7)
            save(fig, _slug("acc_vs_time", ds, f"ipc{ipc}"),
                 f"Accuracy vs distillation time plot: {ds} IPC {ipc} ({proto}, {net})")
        for ipc in sorted({f["ipc"] for f in sub}):
            cells = [f for f in sub if f["ipc"] == ipc]
            hproto = _primary(cells)[0]  # type: ignore[index]
            nets, table = _xarch([f for f in cells if f["protocol"] == hproto])
            if len(nets) < 2:
                notes.append(f"{ds} IPC {ipc}: a single evaluation network ({', '.join(nets)}), no "
                             "cross-architecture heat map.")
                continue
            rows = sorted(table)
            grid = [[table[r].get(n, math.nan) for n in nets] for r in rows]
            fig = Figure(figsize=(3.2 + 1.1 * len(nets), 1.6 + 0.5 * len(rows)))
            ax = fig.add_subplot()
            im = ax.imshow(grid, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(nets)), nets, rotation=30, fontsize=8)
            ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
            lo, hi = im.get_clim()
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    if math.isnan(v):
                        if nets[j] in table[rows[i]]:  # measured, but the runs were unstable
                            ax.text(j, i, "unstable", ha="center", va="center", fontsize=7, color="k")
                        continue
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8,  # dark text on bright cells
                            color="k" if hi > lo and (v - lo) / (hi - lo) > 0.6 else "w")
            fig.colorbar(im, ax=ax, label="accuracy (%)")
            ax.set_title(f"{ds} IPC {ipc}: cross-architecture ({hproto})", fontsize=9)
            save(fig, _slug("xarch", ds, f"ipc{ipc}"), f"Cross-architecture heat map: {ds} IPC {ipc} ({hproto})")
    return written, notes


# ------------------------------------------------------------------------------------------- writers
def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def esc(s: Any) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(esc, headers)) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


def _html_table(tid: str, headers: list[str], rows: list[list[str]], attrs: list[str] | None = None,
                escape: bool = True) -> str:
    """A sortable table; ``escape=False`` takes cells that are already HTML."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    cell = (lambda c: html.escape(str(c))) if escape else str
    body = "".join(f"<tr{attrs[i] if attrs else ''}>" + "".join(f"<td>{cell(c)}</td>" for c in r)
                   + "</tr>\n" for i, r in enumerate(rows))
    return (f'<div class="scroll"><table id="{tid}" class="sortable"><thead><tr>{head}</tr></thead><tbody>\n{body}'
            '</tbody></table></div>')


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    return str(v).lower() if isinstance(v, bool) else v


def write_leaderboard(cells: list[dict], out_dir: Path, *, published: Callable | None = None,
                      robust: list[dict] | None = None, regimes: list[dict] | None = None,
                      title: str = "gendistill leaderboard") -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.csv``, ``index.html`` and ``plots/*.png`` into ``out_dir``.

    Args:
        cells: benchmark cells (method preset × dataset × IPC × seed × protocol × eval net), as the runner records.
        out_dir: output folder; a cell's ``grid`` path is relative to it.
        published: ``(method, dataset, ipc, network, protocol) -> None | figure`` with ``value``, ``std``,
            ``protocol``, ``network`` and ``citation()``.
        robust: DD-Ranking scores, dicts with method, dataset, ipc, protocol, eval_model, hlr, ior, lrs, ars.
        regimes: accuracy per label regime with random real under the same protocol
            (:func:`gendistill.bench.runner.label_regime_rows`).
        title: page title.

    Returns:
        ``{"markdown", "csv", "html"}`` plus one entry per plot (its file stem) mapped to the written paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = sorted((_facts(c, published) for c in cells),
                   key=lambda f: (str(f["dataset"]), f["ipc"] or 0, -(f["mean"] if f["mean"] is not None else -1e9),
                                  str(f["cell"])))
    robust = robust or []
    plots, plot_notes = _make_plots(facts, out_dir / "plots")
    main = [_main_row(f) for f in facts]
    quality = _quality_rows(facts)
    q_head = ["method", "dataset", "IPC", "seed"] + QUALITY_KEYS
    r_head = ["method", "dataset", "IPC", "protocol", "eval net", "HLR", "IOR", "LRS", "ARS"]
    nets, xarch = _xarch(facts)
    x_head = ["method", "dataset", "IPC", "protocol"] + _xarch_headers(facts, nets)
    x_rows = [[k[0], k[1], str(k[2]), k[3]] + [_xarch_value(v.get(n)) for n in nets] for k, v in sorted(
        xarch.items(), key=lambda kv: (str(kv[0][1]), kv[0][2], kv[0][0], str(kv[0][3])))]
    grids = [(f, f"Image grid: {f['label']} {f['dataset']} IPC {f['ipc']} seed {f['distill_seed']}")
             for f in _sets([f for f in facts if f["grid"]]).values()]
    sections = [
        ("Set quality", "`gendistill metrics` in the feature space of a ConvNet trained on the real training split: "
         "precision/recall/density/coverage (k = 5) against real features; diversity = mean within-class feature "
         "distance relative to a random real subset of the same size (1 = as diverse as real); agreement = share "
         "of images that network assigns to their label.", q_head, quality, "quality", "No set-quality scores."),
        ("Robust scores", ROBUST_NOTE, r_head, _robust_rows(robust), "robust", "No robust scores."),
        ("Label regimes", REGIME_NOTE, REGIME_HEAD, _regime_rows(regimes or []), "regimes",
         "No finished cells."),
        ("Cross-architecture", "Mean final-epoch accuracy (%) per evaluation network, averaged over distillation "
         "seeds; 'unstable' where a network's runs spread by more than 10 points (its recipe fails some runs, so "
         "the number would measure luck, not the set).", x_head, x_rows, "xarch", "No finished cells."),
    ]
    pivots = _pivots(facts)
    q_summary = _quality_summary(facts)
    qs_head = ["method", "dataset", "IPC", "sets"] + QUALITY_KEYS
    n_done = sum(f["mean"] is not None for f in facts)
    counts = f"{len(facts)} cells: {n_done} done, {sum(f['status'] == 'failed' for f in facts)} failed, " \
             f"{sum(f['status'] == 'pending' for f in facts)} pending" + \
             (f", {n_sets} sets made without an evaluation (eval_ipc)." if (n_sets := sum(
                 f['status'] == 'set only' for f in facts)) else ".")

    md = [f"# {title}", "", counts, "", "## Summary", "", PIVOT_NOTE, ""]
    for dataset, head, rows, _ in pivots:
        md += [f"### {dataset}", "", _md_table(head, rows), ""]
    if q_summary:
        md += ["### Set quality (mean ± std over sets)", "", _md_table(qs_head, q_summary), ""]
    md += ["## All cells", "", HEADER_NOTE, "", _md_table(MAIN_HEADERS, main), ""]
    for name, note, head, rows, _, empty in sections:
        md += [f"## {name}", "", note, "", _md_table(head, rows) if rows else f"_{empty}_", ""]
    md += ["## Plots", ""] + [f"![{alt}](plots/{p.name})" for _, p, alt in plots] + [""]
    md += [f"- {n}" for n in plot_notes]
    md += ["", "## Image grids", ""] + [f"![{alt}]({f['grid']})" for f, alt in grids] + [""]
    paths = {"markdown": out_dir / "leaderboard.md", "csv": out_dir / "leaderboard.csv",
             "html": out_dir / "index.html"}
    paths["markdown"].write_text("\n".join(md), encoding="utf-8")

    with paths["csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for f in facts:
            writer.writerow({k: _csv_value(f.get(k)) for k in CSV_COLUMNS})

    e = html.escape
    attrs = [f' data-cell="{e(str(f["cell"]))}" class="{e(str(f["status"]))}"' for f in facts]
    page = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style>"
            f"</head><body><h1>{e(title)}</h1><p>{e(counts)}</p>",
            f"<h2>Summary</h2><p class='note'>{e(PIVOT_NOTE)}</p>"]
    for dataset, head, _, rows in pivots:
        page += [f"<h3>{e(dataset)}</h3>", _html_table(f"pivot-{_slug(dataset)}", head, rows, escape=False)]
    if q_summary:
        page += ["<h3>Set quality (mean ± std over sets)</h3>", _html_table("quality-summary", qs_head, q_summary)]
    page += [f"<details><summary><b>All cells ({len(facts)})</b>: every evaluation with its recipe, published "
             "figure, gap and cost</summary>", f"<p class='note'>{e(HEADER_NOTE)} Click a column header to sort.</p>",
             _html_table("results", MAIN_HEADERS, main, attrs), "</details>"]
    for name, note, head, rows, tid, empty in sections:
        page += [f"<h2>{e(name)}</h2><p class='note'>{e(note)}</p>",
                 _html_table(tid, head, rows) if rows else f"<p><em>{e(empty)}</em></p>"]
    page += ["<h2>Plots</h2>"] + [_img(p, alt) for _, p, alt in plots] + [f"<p>{e(n)}</p>" for n in plot_notes]
    page.append("<h2>Image grids</h2>")
    for f, alt in grids:
        gpath = out_dir / f["grid"]
        page.append(_img(gpath, alt) if gpath.is_file() else f"<p>{e(alt)}: grid file missing ({e(f['grid'])})</p>")
    if not grids:
        page.append("<p><em>No image grids.</em></p>")
    page.append(f"<script>{_JS}</script></body></html>")
    paths["html"].write_text("\n".join(page), encoding="utf-8")
    paths.update({name: path for name, path, _ in plots})
    return paths
