"""Reports of one or more run folders: a self-contained ``report.html``, ``report.md`` with its figures, and CSVs.

The original study reported a heatmap of emotion percentages per model, bars, profile curves and a top-3 table,
and found every model "polarised" toward the first-named (left) side of each of its pairs. Such a pattern can
come from the instrument (uncentred cosines, scoring the texts the directions were fitted on) rather than from
the models. These reports therefore show the same views, computed on held-out texts, next to the controls that
tell the two apart: the neutral set, the polarity swap, centred against cosine scoring, the train/test gap and
the shuffled-label baseline.

Every number is read from the runs' ``metrics.json`` (the combined ``profile.csv`` and ``pairs.csv`` are the runs'
own files, concatenated); nothing is recomputed from a model, and neither torch nor a model is loaded. The same
runs give byte-identical reports. matplotlib (a core dependency) is imported only when a report is written, and
draws with the Agg canvas on standalone figures: no pyplot, no display, and no change to the caller's matplotlib
backend or settings.

Example:
    >>> from pathlib import Path
    >>> from emofast.report import compare
    >>> compare([Path("runs/smollm2"), Path("runs/qwen")], Path("reports/all"))    # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import load_runs
from .doc import write_doc
from .sections import build_doc
from .space import is_space_run, space_doc
from .steering import section_steering, steer_checks
from .tables import write_csvs

__all__ = ["compare", "write_run_report"]


def compare(runs: list[Path], out: Path) -> Path:
    """Write the cross-model report of the given run folders into ``out``.

    Args:
        runs: run folders written by ``emofast run`` (1..N; pairs may differ between runs, and a run may lack
            the neutral set or the shuffled-label baselines).
        out: the report folder (created).

    Returns:
        ``out``, holding ``report.html`` (self-contained: figures embedded as PNG data URIs, inline CSS, no
        external resource), ``report.md`` with ``figures/*.png``, and ``profile.csv``, ``pairs.csv``,
        ``controls.csv``, ``cross_reading.csv``, ``direction_cosines.csv`` (a ``run`` column names the model).

    Raises:
        FileNotFoundError: a folder is not a run folder (names the folder).
        ValueError: a run's metrics are unreadable or incomplete, or ``out`` is a run folder.
        ModuleNotFoundError: matplotlib is not installed.
    """
    out = Path(out)
    spaces = [Path(r) for r in runs if is_space_run(r)]
    if spaces:
        if len(spaces) != len(runs):
            raise ValueError("compare either pair runs or emotion-space runs, not both in one report")
        labels = [(Path(r).name, json.loads((Path(r) / "metrics.json").read_text())) for r in spaces]
        out.mkdir(parents=True, exist_ok=True)
        write_doc(space_doc(labels, f"emofast report: {len(labels)} emotion space(s)"), out)
        return out
    loaded = load_runs([Path(r) for r in runs])
    if (out / "metrics.json").exists():
        raise ValueError(f"{out}: is a run folder (its CSVs would be overwritten); pick another --out")
    title = "emofast report: " + (loaded[0].label if len(loaded) == 1 else f"{len(loaded)} models compared")
    doc = build_doc(loaded, title)
    write_doc(doc, out)
    write_csvs(loaded, out)
    return out


def write_run_report(run_dir: Path) -> Path:
    """Write the single-model report into a run folder: ``report.html``, ``report.md`` and ``figures/``.

    The run's own CSVs are left as they are (the cross-model CSVs of :func:`compare` are not written).

    Returns:
        The path of ``report.html``.
    """
    run_dir = Path(run_dir)
    if is_space_run(run_dir):
        m = json.loads((run_dir / "metrics.json").read_text())
        doc = space_doc([(m["model"], m)], f"emofast emotion-space report: {m['model']}")
        section_steering(doc, steer_checks(run_dir))
        return write_doc(doc, run_dir)
    (run,) = load_runs([run_dir])
    doc = build_doc([run], f"emofast run report: {run.label}")
    section_steering(doc, steer_checks(run_dir))
    return write_doc(doc, run_dir)
