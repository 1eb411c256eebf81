"""The fault suite's tally: each scenario adds what it injected and what came out of it; with
``$GENDISTILL_FAULT_REPORT`` set, the session writes the tally there as JSON (``scripts/reliability.py`` turns it
into ``results/reliability/``). A scenario records only after its assertions pass: a failed test adds nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

TALLY: dict[tuple[str, str], dict[str, int]] = {}


def tally(category: str, scenario: str, *, injected: int = 0, survived: int = 0, identical: int = 0,
          inputs: int = 0, clean_errors: int = 0) -> None:
    """Add counts to ``(category, scenario)``: faults injected, runs that survived them (resumed or refused
    cleanly), resumed results identical to the uninterrupted run, bad inputs tried, and one-line errors given."""
    row = TALLY.setdefault((category, scenario), {"injected": 0, "survived": 0, "identical": 0, "inputs": 0,
                                                  "clean_errors": 0})
    for key, value in (("injected", injected), ("survived", survived), ("identical", identical), ("inputs", inputs),
                       ("clean_errors", clean_errors)):
        row[key] += value


def write(path: str | None = None) -> None:
    path = path or os.environ.get("GENDISTILL_FAULT_REPORT")
    if not path or not TALLY:
        return
    rows = [{"category": c, "scenario": s, **counts} for (c, s), counts in TALLY.items()]
    Path(path).write_text(json.dumps(rows, indent=2))
