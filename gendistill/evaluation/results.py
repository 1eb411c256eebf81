"""Result records and tables: ``result.json`` files -> markdown rows (protocol always shown)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

__all__ = ["format_csv", "format_table", "is_result", "load_results", "result_row"]

COLUMNS = ["method", "dataset", "ipc", "accuracy (%)", "runs", "eval net", "protocol", "epochs", "aug", "labels",
           "lr", "zca", "reduced", "coverage", "recall", "agreement"]
# Set-quality columns, filled from a ``quality.json`` (``gendistill metrics``) next to the result file.
QUALITY_COLUMNS = ("coverage", "recall", "agreement")


def result_row(result: dict[str, Any], method: str | None = None) -> dict[str, str]:
    """One table row from an :class:`~gendistill.evaluation.EvalResult` dict."""
    p = result["protocol"]
    s = result.get("synset", {})
    parts = ("dsa" if p.get("dsa_strategy") else "", "dc-aug" if p.get("dc_aug") else "",
             "cutmix" if p.get("cutmix_prob") else "")
    aug = "+".join(x for x in parts if x) or "none"
    return {
        "method": method or str(s.get("method")),
        "dataset": str(s.get("dataset")),
        "ipc": str(s.get("ipc")),
        "accuracy (%)": _accuracy(result),
        "runs": _runs(result),
        "eval net": p["model"],
        "protocol": p["name"],
        "epochs": str(p["epochs"]),
        "aug": aug,
        "labels": f"{s.get('label_kind', 'hard')}/{p['label_loss']}",
        "lr": "learned" if p.get("lr_from_synset") else f"{p.get('lr', 0):g} ({p.get('schedule', '?')})",
        "zca": p.get("zca", "none"),
        "reduced": _reduced(result),
        **{k: f"{q[k]:.3f}" for q in [result.get("quality") or {}] for k in QUALITY_COLUMNS if q.get(k) is not None},
    }


def _accuracy(result: dict[str, Any]) -> str:
    text = f"{result['mean']:.2f} ± {result['std']:.2f}"
    if "std_across_distillations" in result:
        text += f" (± {result['std_across_distillations']:.2f} across distillations)"
    return text


def _runs(result: dict[str, Any]) -> str:
    if "per_distillation" in result:
        per = result["per_distillation"]
        return f"{len(per)} distillations × {len(per[0]['accs'])}"
    return str(len(result["accs"]))


def _reduced(result: dict[str, Any]) -> str:
    notes = []
    s = result.get("synset", {})
    if s.get("reduced_budget"):
        notes.append(f"distill: {s.get('preset')} preset")
    if result.get("reduced_note"):
        notes.append(f"eval: {result['reduced_note']}")
    return "; ".join(notes) or "no"


def format_table(rows: list[dict[str, str]]) -> str:
    """A markdown table of rows (columns in :data:`COLUMNS` order)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r.get(c, "") for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def format_csv(rows: list[dict[str, str]]) -> str:
    """The same rows as CSV (columns in :data:`COLUMNS` order)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def is_result(record: Any) -> bool:
    """Whether a JSON document is an evaluation result (an EvalResult dict or a multi-distillation summary)."""
    return isinstance(record, dict) and {"mean", "accs", "protocol"} <= set(record) and \
        isinstance(record["protocol"], dict)


def load_results(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Every result JSON below ``paths`` (any ``*.json`` holding an evaluation result; folders are searched
    recursively, other JSON files are skipped). A named file that is not a result is an error."""
    from gendistill.utils.errors import GendistillError

    found: list[dict[str, Any]] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*.json")):
                try:
                    record = json.loads(f.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                    continue
                if is_result(record):
                    found.append(_with_quality(record, f))
        else:
            if not p.is_file():
                raise GendistillError(f"{p} does not exist; pass result JSON files or folders holding them")
            record = json.loads(p.read_text())
            if not is_result(record):
                raise GendistillError(f"{p} is not an evaluation result (no mean/accs/protocol)")
            found.append(_with_quality(record, p))
    return found


def _with_quality(record: dict[str, Any], path: Path) -> dict[str, Any]:
    """Attach the summary of a ``quality.json`` lying next to the result file (as ``record["quality"]``)."""
    quality = path.parent / "quality.json"
    if "quality" not in record and quality.is_file() and quality != path:
        with contextlib.suppress(json.JSONDecodeError, OSError):
            record = {**record, "quality": json.loads(quality.read_text()).get("summary")}
    return record
