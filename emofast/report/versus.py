"""The report section "Model against model": per pair that two runs share on the same test texts, the difference
of their balanced accuracies with its paired bootstrap interval (the same resamples of the same test ids for both
runs), read from the per-text outputs each run keeps in ``metrics.json["outputs_test"]``."""

from __future__ import annotations

import numpy as np

from ..probe.stats import paired_difference
from .common import Run

__all__ = ["model_differences", "section_model_differences"]


def model_differences(runs: list[Run], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """``[{"model_a", "model_b", "pair", "value", "ci95", "a", "b", ...}]`` (``a``, ``b``: the two accuracies)
    for every two runs and every pair both hold on the same test ids (runs without per-text outputs, or on
    other texts, are left out).

    Example:
        >>> model_differences(load_runs([Path("runs/a"), Path("runs/b")]))[0]["ci95"]   # doctest: +SKIP
        [-0.031, 0.094]
    """
    out = []
    for i, ra in enumerate(runs):
        for rb in runs[i + 1 :]:
            oa, ob = ra.metrics.get("outputs_test", {}), rb.metrics.get("outputs_test", {})
            for pair in ra.names:
                if pair not in oa or pair not in ob:
                    continue
                a, b = oa[pair], ob[pair]
                if sorted(a["ids"]) != sorted(b["ids"]):
                    continue
                where = {k: j for j, k in enumerate(b["ids"])}
                order = [where[k] for k in a["ids"]]
                pb = np.asarray(b["p_left"])[order]
                d = paired_difference(
                    np.asarray(a["y"]), np.asarray(a["p_left"]) - 0.5, pb - 0.5, ids=a["ids"], n_boot=n_boot, seed=seed
                )
                out.append({**d, "model_a": ra.label, "model_b": rb.label, "pair": pair})
    return out


def section_model_differences(doc, runs: list[Run]) -> None:
    """Add the section (skipped with fewer than two runs, or when no two runs share a pair's test texts)."""
    if len(runs) < 2:
        return
    rows = model_differences(runs)
    if not rows:
        return
    doc.h2("Model against model", "versus")
    doc.p(
        "Balanced accuracy of model A minus model B on the same held-out test texts, with the paired 95% "
        "interval (BCa bootstrap; the same resamples of the same text ids for both models, by scene for matched "
        "data). An interval that spans 0 means the two models cannot be told apart on this pair."
    )
    table = []
    for r in rows:
        lo, hi = r["ci95"]
        verdict = "A higher" if lo > 0 else "B higher" if hi < 0 else "cannot be told apart"
        table.append([r["pair"], r["model_a"], r["model_b"], f"{r['value']:+.3f} [{lo:+.3f}, {hi:+.3f}]", verdict])
    doc.table(["pair", "model A", "model B", "A - B [95% CI]", "reading"], table)
