"""Published accuracies of the registered methods: a versioned table shipped as ``published.yaml``.

Each entry is one figure from a paper (top-1 test accuracy in **percent**) with the network and evaluation
protocol it was published under, and a source string ending in a confidence tag ([V] verified, [R] recalled,
[S] secondary; see the YAML header). ``full_dataset`` holds the whole-training-set accuracies (percent).

```python
table = load_published()
entry = table.lookup("dm", "cifar10", 10)          # -> PublishedEntry(value=48.9, protocol="dsa", ...)
entry.citation()                                   # 'Zhao & Bilen, WACV 2023 (DM), Table 1 [V]; dsa protocol, convnet'
table.full("cifar10")                              # 84.8
```
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from pathlib import Path
from typing import Any

from gendistill.utils.config import from_dict, read_yaml
from gendistill.utils.errors import ConfigError

__all__ = ["FullDatasetEntry", "PublishedEntry", "PublishedTable", "load_published"]

_TOP_KEYS = {"version", "updated", "entries", "full_dataset"}
_TAG_RE = re.compile(r"\[([VRS])\]\s*$")


@dataclasses.dataclass(frozen=True)
class PublishedEntry:
    """One published figure.

    Attributes:
        method: registered method name (``dm``, ``minimax``...).
        dataset: registered dataset name.
        ipc: images per class.
        network: evaluation network, named as in our registry (``convnet``, ``resnet_ap10``, ``convnet_d6``...).
        protocol: evaluation protocol it was published under (our preset names, ``dd`` or ``idc_imagenet``).
        value: top-1 test accuracy in percent.
        std: its standard deviation in percent, or None when not published.
        source: paper, table and confidence tag, e.g. ``"Zhao & Bilen, WACV 2023 (DM), Table 1 [V]"``.
        note: how the paper's protocol differs from ours (e.g. best-of-run), or None.
        statistic: ``final`` (final-epoch accuracy) or ``best`` (the best test accuracy seen during training or
            across the distillation's evaluations, as MTT, DATM, IDC and Minimax report).
        verified: whether a reachable source confirms the figure (default: True for ``[V]`` sources, False for
            ``[R]``/``[S]``; ``true`` for a secondary copy that was checked). Unverified figures are shown as such
            and never give a headline gap.
    """

    method: str
    dataset: str
    ipc: int
    network: str
    protocol: str
    value: float
    source: str
    std: float | None = None
    note: str | None = None
    statistic: str = "final"
    verified: bool | None = None

    def __post_init__(self) -> None:
        if self.ipc < 1:
            raise ValueError(f"ipc must be a positive integer, not {self.ipc!r}")
        if self.statistic not in ("final", "best"):
            raise ValueError(f"statistic must be final or best, not {self.statistic!r}")
        _check_figure(self)

    @property
    def is_verified(self) -> bool:
        """Confirmed by a reachable source (see ``verified``)."""
        return self.verified if self.verified is not None else self.tag == "V"

    @property
    def tag(self) -> str | None:
        """The confidence tag of the source (``"V"``, ``"R"`` or ``"S"``), or None."""
        m = _TAG_RE.search(self.source)
        return m.group(1) if m else None

    def citation(self) -> str:
        """A short one-line citation: the source with the protocol and network it was published under."""
        return f"{self.source}; {self.protocol} protocol, {self.network}"

    def summary(self) -> str:
        """Value and citation on one line, e.g. ``48.9 ± 0.6 % (Zhao & Bilen, ... [V]; dsa protocol, convnet)``."""
        value = f"{self.value:.1f}" + (f" ± {self.std:.1f}" if self.std is not None else "")
        return f"{value} % ({self.citation()})"


@dataclasses.dataclass(frozen=True)
class FullDatasetEntry:
    """Accuracy (percent) of a network trained on the whole training set."""

    dataset: str
    network: str
    value: float
    source: str
    std: float | None = None
    note: str | None = None
    verified: bool | None = None

    def __post_init__(self) -> None:
        _check_figure(self)

    @property
    def is_verified(self) -> bool:
        """Confirmed by a reachable source (default: a ``[V]`` source)."""
        return self.verified if self.verified is not None else bool(_TAG_RE.search(self.source)) and \
            self.source.rstrip().endswith("[V]")


def _check_figure(entry: Any) -> None:
    """Shared checks of a published row: names non-empty and lower-case, value and std in percent."""
    for f in dataclasses.fields(entry):
        value = getattr(entry, f.name)
        if f.type == "str" and not value.strip():
            raise ValueError(f"{f.name} must be a non-empty string")
        if f.name in ("method", "dataset", "network", "protocol"):
            object.__setattr__(entry, f.name, value.strip().lower())
    if not math.isfinite(entry.value) or not 0 < entry.value <= 100:
        raise ValueError(f"value {entry.value} must be a percent in (0, 100]")
    if entry.std is not None and not 0 <= entry.std <= 100:
        raise ValueError(f"std {entry.std} must be a percent in [0, 100]")


@dataclasses.dataclass
class PublishedTable:
    """The published-figures table (see the module docstring).

    Attributes:
        version: table format version.
        entries: published figures, in file order.
        full_dataset: whole-training-set accuracies.
        updated: date of the last edit (ISO string), or None.
    """

    version: int
    entries: list[PublishedEntry]
    full_dataset: list[FullDatasetEntry]
    updated: str | None = None

    def lookup(self, method: str, dataset: str, ipc: int, network: str | None = "convnet",
               protocol: str | None = None) -> PublishedEntry | None:
        """The published figure for (method, dataset, ipc, network), or None.

        With ``protocol`` given, an entry published under that protocol is preferred; otherwise (or when none
        matches) the first entry with any protocol is returned, so callers should show ``entry.protocol``.
        ``network=None`` means ``convnet``.
        """
        if not method or not dataset or ipc is None:
            return None
        method, dataset, network = method.lower(), dataset.lower(), (network or "convnet").lower()
        found = [e for e in self.entries
                 if e.method == method and e.dataset == dataset and e.ipc == ipc and e.network == network]
        if protocol is not None:
            for e in found:
                if e.protocol == protocol.lower():
                    return e
        return found[0] if found else None

    def full(self, dataset: str, network: str = "convnet") -> float | None:
        """Whole-training-set accuracy in percent for (dataset, network), or None."""
        for e in self.full_dataset:
            if e.dataset == dataset.lower() and e.network == network.lower():
                return e.value
        return None


def _fail(path: Path, where: str, msg: str) -> ConfigError:
    return ConfigError(f"published table {path}: {where} {msg}; fix the file")


def _row(cls: type, path: Path, where: str, row: Any) -> Any:
    """One table row through the shared typed-config loader (:func:`gendistill.config.from_dict`)."""
    if not isinstance(row, dict):
        raise _fail(path, where, f"must be a mapping, not {type(row).__name__}")
    fields = dataclasses.fields(cls)
    unknown = sorted(set(row) - {f.name for f in fields})
    if unknown:
        raise _fail(path, where, f"has unknown key(s) {', '.join(map(str, unknown))} "
                                 f"(allowed: {', '.join(f.name for f in fields)})")
    missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in row]
    if missing:
        raise _fail(path, where, f"is missing required key(s) {', '.join(missing)}")
    try:
        return from_dict(cls, row, where)
    except ConfigError as exc:
        raise _fail(path, where, str(exc)) from exc


def load_published(path: str | Path | None = None) -> PublishedTable:
    """Read and validate a published-figures table (default: the packaged ``published.yaml``).

    Unknown keys, missing required fields, wrong types, values outside (0, 100] percent and duplicate
    (method, dataset, ipc, network, protocol) entries raise :class:`~gendistill.errors.ConfigError`.
    """
    path = Path(path) if path is not None else Path(__file__).with_name("published.yaml")
    data = read_yaml(path)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise _fail(path, "top level", f"has unknown key(s) {', '.join(map(str, unknown))} "
                                       f"(allowed: {', '.join(sorted(_TOP_KEYS))})")
    for key in ("version", "entries"):
        if key not in data:
            raise _fail(path, "top level", f"is missing required key {key}")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(path, "version", f"must be a positive integer, not {version!r}")
    rows, full_rows = data["entries"], data.get("full_dataset") or []
    if not isinstance(rows, list) or not isinstance(full_rows, list):
        raise _fail(path, "entries/full_dataset", "must be lists of mappings")
    entries = [_row(PublishedEntry, path, f"entries[{i}]", row) for i, row in enumerate(rows)]
    seen: set[tuple] = set()
    for i, e in enumerate(entries):
        key = (e.method, e.dataset, e.ipc, e.network, e.protocol)
        if key in seen:
            raise _fail(path, f"entries[{i}]", f"duplicates {'/'.join(map(str, key))}")
        seen.add(key)
    updated = data.get("updated")
    if isinstance(updated, datetime.date):
        updated = updated.isoformat()
    elif updated is not None and not isinstance(updated, str):
        raise _fail(path, "updated", f"must be a date (YYYY-MM-DD), not {updated!r}")
    return PublishedTable(version=version, entries=entries,
                          full_dataset=[_row(FullDatasetEntry, path, f"full_dataset[{i}]", row)
                                        for i, row in enumerate(full_rows)], updated=updated)
