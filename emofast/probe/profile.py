"""The emotion profile of a run, computed from its ``metrics.json`` alone (no torch, no model).

Per side label: ``pct_test``, its mean percentage over the pair's balanced held-out test texts (both sides: an
unbiased instrument gives 50); ``pct_own_side``, over the texts of that label; ``pct_neutral``, over the neutral
control texts; each with its 95% bootstrap interval as ``_lo``/``_hi``.
"""

from __future__ import annotations

__all__ = ["profile_rows"]


def _pcts(key: str, m: dict, pct) -> dict:
    """``{key, key_lo, key_hi}`` of a probability ``{"value", "ci95"}`` mapped to a percentage by ``pct``."""
    lo, hi = sorted(pct(v) for v in m["ci95"])
    return {key: pct(m["value"]), f"{key}_lo": lo, f"{key}_hi": hi}


def profile_rows(metrics: dict) -> list[dict]:
    """Profile rows (one per side label, in pair order) from a run's metrics.

    Example:
        >>> rows = profile_rows(json.load(open("runs/smollm2/metrics.json")))   # doctest: +SKIP
        >>> rows[0]["label"], round(rows[0]["pct_test"], 1)                      # doctest: +SKIP
        ('sad', 57.7)
    """
    rows = []
    neutral = metrics.get("neutral")
    for left, right in metrics["probe"]["pairs"]:
        name = f"{left}_vs_{right}"
        t = metrics["pairs_test"][name]
        for side, label, own in (
            ("left", left, t["mean_p_left_on_left"]),
            ("right", right, t["mean_p_right_on_right"]),
        ):
            pct = (lambda v: 100 * v) if side == "left" else (lambda v: 100 * (1 - v))
            row = {"model": metrics["model"], "pair": name, "label": label, "side": side}
            row.update(_pcts("pct_test", t["mean_p_left"], pct))
            row.update(_pcts("pct_own_side", own, lambda v: 100 * v))
            if neutral is not None:
                row.update(_pcts("pct_neutral", neutral[name]["mean_p_left"], pct))
            rows.append(row)
    return rows
