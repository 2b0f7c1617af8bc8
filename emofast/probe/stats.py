"""Metrics for a binary left/right reading: balanced accuracy, AUROC, separation, bootstrap intervals.

Convention: ``y = 1`` for the left side, ``0`` for the right; a positive score reads as the left side.
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy.stats import rankdata

__all__ = ["balanced_accuracy", "auroc", "separation", "bootstrap_ci", "stratified_indices"]


def balanced_accuracy(y, pred_left) -> float:
    """Mean of the hit rates on each side: ``(TPR_left + TNR_right) / 2``.

    >>> balanced_accuracy([1, 1, 1, 0], [True, True, False, False])
    0.8333333333333333
    """
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(pred_left, dtype=bool)
    if y.all() or not y.any():
        raise ValueError("balanced accuracy needs texts of both sides")
    return float((pred[y].mean() + (~pred[~y]).mean()) / 2)


def auroc(y, score) -> float:
    """Probability that a random left text scores above a random right text (ties count half).

    >>> auroc([1, 1, 0, 0], [0.9, 0.4, 0.4, 0.1])
    0.875
    """
    y = np.asarray(y, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("AUROC needs texts of both sides")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def separation(y, score) -> float:
    """Standardised mean difference ``(mean_left - mean_right) / pooled_std`` (0 when both are constant).

    >>> round(separation([1, 1, 0, 0], [3.0, 1.0, -1.0, -3.0]), 4)
    2.8284
    """
    y = np.asarray(y, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    a, b = s[y], s[~y]
    var = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / max(len(a) + len(b) - 2, 1)
    diff = a.mean() - b.mean()
    if var <= 0:
        return 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
    return float(diff / np.sqrt(var))


def _stream(seed: int, keys) -> np.random.Generator:
    """A random stream that depends only on ``seed`` and the *set* of ``keys`` (not their order)."""
    digest = hashlib.sha256("\x1f".join(sorted(map(str, keys))).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def stratified_indices(y, n_boot: int, seed: int, keys=None) -> np.ndarray:
    """``[n_boot, N]`` resample indices that keep the number of texts of each side.

    Each side is resampled from its own random stream, seeded by ``seed`` and the set of that side's ``keys``
    (text ids; default: positions), in the keys' sorted order. The draws therefore depend neither on which side
    is called left nor on the order of the texts: a polarity swap, even one re-run from swapped files, draws the
    same resamples, and every number mirrors exactly.
    """
    y = np.asarray(y)
    keys = np.arange(len(y)) if keys is None else np.asarray(keys)
    out = np.empty((n_boot, len(y)), dtype=np.int64)
    for side in np.unique(y):
        pos = np.flatnonzero(y == side)
        canon = pos[np.argsort(keys[pos].astype(str), kind="stable")]
        draws = _stream(seed, keys[pos]).integers(0, len(pos), size=(n_boot, len(pos)))
        out[:, canon] = canon[draws]
    return out


def bootstrap_ci(stat, y, *arrays, n_boot: int = 1000, seed: int = 0, level: float = 0.95, keys=None):
    """Point estimate and percentile bootstrap interval of ``stat(y, *arrays)``.

    Resamples texts with replacement within each side (stratified), so every resample has both sides; ``keys``
    (text ids) make the draws independent of the texts' order and of which side is left
    (:func:`stratified_indices`).

    Returns:
        ``(estimate, low, high)``.

    >>> est, lo, hi = bootstrap_ci(lambda y, s: float(np.mean(s[y == 1])), [1, 1, 0], [1.0, 1.0, 0.0])
    >>> est, lo, hi
    (1.0, 1.0, 1.0)
    """
    y = np.asarray(y)
    arrays = [np.asarray(a) for a in arrays]
    est = stat(y, *arrays)
    idx = stratified_indices(y, n_boot, seed, keys)
    vals = np.array([stat(y[i], *(a[i] for a in arrays)) for i in idx], dtype=np.float64)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(vals, [alpha, 1 - alpha])
    return float(est), float(lo), float(hi)
