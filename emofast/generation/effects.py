"""Statistics of a steering check, all with bootstrap intervals that resample prompts (every condition of a prompt
together): a mean per condition, Spearman's rho between alpha and a measure, and the effect of steering as a
fraction of the effect of prompting.

Shapes: ``Y [n_prompts, n_conditions]``; NaN entries (an empty text has no score) are left out.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> A = np.tile([-1.0, 0.0, 1.0], (20, 1))
    >>> rho, lo, hi = boot_spearman(A, -A + rng.normal(0, 0.5, A.shape), rng, 200)
    >>> rho < -0.5 and hi < 0
    True
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

__all__ = ["boot_mean", "boot_spearman", "boot_fraction"]


def boot_mean(x, rng, n_boot: int) -> tuple[float, float, float]:
    """Mean of ``x [n]`` and its 95% percentile bootstrap interval (NaNs dropped; all NaN: NaN)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return (float("nan"),) * 3
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    return float(x.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _rho(a, b) -> float:
    keep = np.isfinite(b)
    if keep.sum() < 3 or np.ptp(b[keep]) == 0 or np.ptp(a[keep]) == 0:
        return float("nan")
    return float(spearmanr(a[keep], b[keep]).statistic)


def boot_spearman(alpha, y, rng, n_boot: int) -> tuple[float, float, float]:
    """rho(alpha, y) over ``[n_prompts, n_alphas]`` arrays; the interval resamples prompts (rows). NaN where the
    measure does not vary (rho is undefined)."""
    alpha, y = np.asarray(alpha, dtype=float), np.asarray(y, dtype=float)
    est = _rho(alpha.ravel(), y.ravel())
    if not np.isfinite(est):
        return (float("nan"),) * 3
    idx = rng.integers(0, y.shape[0], size=(n_boot, y.shape[0]))
    boots = [_rho(alpha[r].ravel(), y[r].ravel()) for r in idx]
    boots = [b for b in boots if np.isfinite(b)]
    lo, hi = np.quantile(boots, [0.025, 0.975]) if boots else (np.nan, np.nan)
    return est, float(lo), float(hi)


def _diff(hi_col, lo_col, rows) -> float:
    a, b = hi_col[rows], lo_col[rows]
    keep = np.isfinite(a) & np.isfinite(b)
    return float((a[keep] - b[keep]).mean()) if keep.any() else float("nan")


def boot_fraction(steer_hi, steer_lo, prompt_hi, prompt_lo, rng, n_boot: int) -> dict:
    """Steering's effect as a fraction of prompting's, per prompt paired.

    Args:
        steer_hi, steer_lo: ``[n_prompts]`` a judge's score at the two ends of the steered range (toward the left
            side and toward the right side).
        prompt_hi, prompt_lo: ``[n_prompts]`` the same judge on the same prompts instructed toward the left side and
            toward the right side.

    Returns:
        ``{"steering", "prompting", "fraction", "fraction_lo", "fraction_hi"}`` (effects: mean paired differences;
        interval: 95% percentile bootstrap over prompts; NaN when prompting's effect is 0 in the data).
    """
    cols = [np.asarray(c, dtype=float) for c in (steer_hi, steer_lo, prompt_hi, prompt_lo)]
    n = len(cols[0])
    every = np.arange(n)
    s, p = _diff(cols[0], cols[1], every), _diff(cols[2], cols[3], every)
    frac = s / p if p else float("nan")
    boots = []
    for r in rng.integers(0, n, size=(n_boot, n)):
        bp = _diff(cols[2], cols[3], r)
        if bp:
            boots.append(_diff(cols[0], cols[1], r) / bp)
    boots = [b for b in boots if np.isfinite(b)]
    lo, hi = np.quantile(boots, [0.025, 0.975]) if boots else (np.nan, np.nan)
    return {"steering": s, "prompting": p, "fraction": frac, "fraction_lo": float(lo), "fraction_hi": float(hi)}
