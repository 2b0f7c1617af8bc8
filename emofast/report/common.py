"""Loading run folders for the reports, and the number formats every report uses."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..probe.profile import profile_rows

__all__ = [
    "RELATED_PAIRS",
    "NA",
    "FIG_DIR",
    "Run",
    "read_csv_rows",
    "load_run",
    "load_runs",
    "pair_order",
    "pair_sides",
    "num",
    "f3",
    "ci3",
    "pct",
    "pct_ci",
    "layer_span",
]


#: Pairs whose concepts are close enough that one direction may read the other's texts; the report states their
#: cross-reading explicitly when a run has both.
RELATED_PAIRS = (("fear_vs_confidence", "anxious_vs_relaxed"),)

_REQUIRED = (
    "probe",
    "pairs_test",
    "pairs_train",
    "calibration",
    "curves",
    "reliability_test",
    "cross_reading_test",
    "direction_cosines",
    "summary",
    "controls",
)
NA = "n/a"
FIG_DIR = "figures"


@dataclass
class Run:
    """One run folder, as read from disk."""

    path: Path
    label: str
    metrics: dict
    profile_csv: list[dict]
    pairs_csv: list[dict]
    profile: list[dict] = field(init=False)

    def __post_init__(self):
        self.profile = profile_rows(self.metrics)

    @property
    def names(self) -> list[str]:
        return [f"{a}_vs_{b}" for a, b in self.metrics["probe"]["pairs"]]

    @property
    def sides(self) -> dict[str, tuple[str, str]]:
        return {f"{a}_vs_{b}": (a, b) for a, b in self.metrics["probe"]["pairs"]}

    @property
    def chosen(self) -> dict[str, list[int]]:
        return self.metrics["summary"]["chosen_layers"]

    @property
    def neutral(self) -> dict | None:
        return self.metrics.get("neutral")

    @property
    def shuffled(self) -> dict | None:
        return self.metrics["controls"].get("shuffled_labels")

    def profile_row(self, pair: str, side: str) -> dict | None:
        """The profile row of one side of a pair (None when the run lacks the pair)."""
        for row in self.profile:
            if row["pair"] == pair and row["side"] == side:
                return row
        return None


def read_csv_rows(path: Path) -> list[dict]:
    """The rows of one of a run's CSVs (an error naming the folder when it is missing or empty)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: incomplete run folder (no {path.name})")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def load_run(path: Path) -> Run:
    """Read a run folder; a folder that is not one gives an error naming it."""
    path = Path(path)
    mfile = path / "metrics.json"
    if not mfile.is_file():
        raise FileNotFoundError(
            f"{path}: not an emofast run folder (no metrics.json); pass folders written by 'emofast run'"
        )
    try:
        metrics = json.loads(mfile.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{mfile}: not valid JSON ({exc})") from None
    missing = [k for k in _REQUIRED if k not in metrics]
    if missing:
        raise ValueError(f"{mfile}: lacks {', '.join(missing)} (not written by this version of emofast run?)")
    return Run(
        path,
        str(metrics.get("model", path.name)),
        metrics,
        read_csv_rows(path / "profile.csv"),
        read_csv_rows(path / "pairs.csv"),
    )


def load_runs(paths) -> list[Run]:
    """Load the runs and give each a unique display label: the model, then the run folder where models repeat."""
    if not paths:
        raise ValueError("no run folders given")
    runs = [load_run(p) for p in paths]
    for attempt in (lambda r, i: f"{r.label} [{r.path.name}]", lambda r, i: f"{r.label} #{i + 1}"):
        labels = [r.label for r in runs]
        if len(set(labels)) == len(labels):
            break
        for i, r in enumerate(runs):
            if labels.count(r.label) > 1:
                r.label = attempt(r, i)
    return runs


def pair_order(runs: list[Run]) -> list[str]:
    """Every pair of any run, in order of first appearance."""
    out = []
    for r in runs:
        out += [n for n in r.names if n not in out]
    return out


def pair_sides(runs: list[Run]) -> dict[str, tuple[str, str]]:
    """``{pair: (left, right)}`` over all runs."""
    out = {}
    for r in runs:
        out.update(r.sides)
    return out


def num(x) -> float:
    """A metric as a float, NaN for missing (None) values."""
    return math.nan if x is None else float(x)


def f3(x) -> str:
    """A number with 3 decimals (n/a for a missing or non-finite one)."""
    return NA if x is None or not math.isfinite(x) else f"{x:.3f}"


def ci3(m: dict) -> str:
    """``{"value", "ci95"}`` as ``0.875 [0.688, 1.000]``."""
    return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


def pct(v, lo, hi) -> str:
    """A percentage with its interval, ``46.6 [41.7, 50.3]`` (n/a for a missing value)."""
    if v is None:
        return NA
    return f"{v:.1f} [{lo:.1f}, {hi:.1f}]"


def pct_ci(m: dict) -> str:
    """A probability ``{"value", "ci95"}`` as a percentage with its interval."""
    return pct(100 * m["value"], 100 * m["ci95"][0], 100 * m["ci95"][1])


def layer_span(layers: list[int]) -> str:
    """Chosen layers as ``10-13`` (or ``10``)."""
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
