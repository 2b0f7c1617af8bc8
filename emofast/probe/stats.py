"""Metrics for a binary left/right reading: balanced accuracy, AUROC, separation, and the intervals and tests
of every number the reports state.

Convention: ``y = 1`` for the left side, ``0`` for the right; a positive score reads as the left side.

* Balanced accuracy gets a closed-form MOVER interval (:func:`balanced_accuracy_ci`) built from Wilson lower and
  Clopper-Pearson upper limits of the two hit rates: the percentile bootstrap under-covers at 32 texts per side
  and collapses to ``[1, 1]`` at perfect separation; Wilson limits alone miss on the upper side above BA 0.95
  (exact coverage 0.887 at 32 per side, 0.886 at 64: :func:`balanced_accuracy_coverage`).
* Every other statistic gets a BCa bootstrap interval (:func:`bootstrap_ci`).
* Matched data (line ``k`` of the left and right files is one scene, ids ``{side}-{split}-{nnn}`` with the same
  numbers on both sides, :func:`scene_keys`) is resampled by scene, both sides together
  (:func:`resample_indices`); unmatched data keeps the stratified resample.
* Differences between two classifiers on the same texts get a paired bootstrap (:func:`paired_difference`); a
  reading against chance gets a permutation test of the labels (:func:`permutation_p`), Holm-corrected across
  pairs (:func:`holm`).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from scipy.stats import beta, norm, rankdata

from ..data.pairs import UNMATCHED_SPLITS

__all__ = [
    "balanced_accuracy",
    "auroc",
    "separation",
    "require_finite",
    "scene_keys",
    "stratified_indices",
    "resample_indices",
    "bootstrap_ci",
    "wilson_interval",
    "clopper_pearson_interval",
    "balanced_accuracy_ci",
    "balanced_accuracy_interval",
    "balanced_accuracy_coverage",
    "balanced_accuracy_rows",
    "paired_difference",
    "mover_difference",
    "permutation_p",
    "holm",
]


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
    require_finite(s, "AUROC")
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


_ID = re.compile(r"^(?P<side>.+)-(?P<split>[^-]+)-(?P<num>\d+)$")


def require_finite(values, what: str, ids=None) -> None:
    """Refuse non-finite scores: ``ValueError`` naming ``what`` (pair and split) and the first offending ids.

    >>> require_finite([0.1, float("nan")], "pair a_vs_b, split test", ["a-test-1", "b-test-1"])
    Traceback (most recent call last):
    ...
    ValueError: pair a_vs_b, split test: 1 non-finite score(s) (NaN or inf), texts b-test-1
    """
    v = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(v.reshape(len(v), -1)).all(axis=1)) if v.size else np.array([], int)
    if len(bad):
        names = [str(ids[i]) for i in bad[:5]] if ids is not None else [f"#{i}" for i in bad[:5]]
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{what}: {len(bad)} non-finite score(s) (NaN or inf), texts {', '.join(names)}{more}")


def scene_keys(ids, y) -> np.ndarray | None:
    """``[N]`` scene key of each text when the data is matched, else None.

    Matched: every id reads ``{side}-{split}-{nnn}``, one side name per label, and the left and right texts carry
    the same set of ``{split}-{nnn}`` (each once): line ``k`` of the left file and line ``k`` of the right file
    describe one scene. Texts of a split whose sides are written apart (``contrast``, ``contrast_train``:
    :data:`emofast.data.UNMATCHED_SPLITS`) are never matched, even where their ids line up; a set that holds any
    of them (a train split augmented with ``contrast_train``) is resampled by side.

    >>> scene_keys(["sad-test-1", "sad-test-2", "happy-test-2", "happy-test-1"], [1, 1, 0, 0]).tolist()
    ['test-1', 'test-2', 'test-2', 'test-1']
    >>> scene_keys(["sad-test-1", "happy-test-7"], [1, 0]) is None
    True
    >>> scene_keys(["sad-contrast-1", "sad-contrast-2", "happy-contrast-1", "happy-contrast-2"], [1, 1, 0, 0]) is None
    True
    """
    y = np.asarray(y)
    keys, sides = [], {0: set(), 1: set()}
    for i, label in zip(ids, y):
        m = _ID.match(str(i))
        if m is None or int(label) not in sides or m["split"] in UNMATCHED_SPLITS:
            return None
        sides[int(label)].add(m["side"])
        keys.append(f"{m['split']}-{int(m['num'])}")
    keys = np.array(keys)
    left, right = keys[y == 1], keys[y == 0]
    if len(sides[1]) != 1 or len(sides[0]) != 1 or sides[0] == sides[1]:
        return None
    if len(set(left)) != len(left) or set(left) != set(right) or len(left) < 2:
        return None
    return keys


def resample_indices(y, n_boot: int, seed: int, keys=None, scenes=None) -> np.ndarray:
    """``[n_boot, N]`` resample indices: by scene (both sides of a drawn scene together) when ``scenes`` is given
    (:func:`scene_keys`), else stratified by side (:func:`stratified_indices`).

    Scene draws come from a stream seeded by ``seed`` and the set of scene keys, in their sorted order: the same
    draws whatever the text order and whichever side is called left (a polarity swap mirrors exactly).

    >>> idx = resample_indices([1, 1, 0, 0], 3, 0, scenes=["s1", "s2", "s2", "s1"])
    >>> bool(((idx[:, 0] == 0) == (idx[:, 3] == 3)).all())   # text 0 and text 3 are one scene
    True
    """
    if scenes is None:
        return stratified_indices(y, n_boot, seed, keys)
    y = np.asarray(y)
    scenes = np.asarray(scenes).astype(str)
    order = np.unique(scenes)
    pos = {}
    for side in (1, 0):
        at = {k: i for i, k in zip(np.flatnonzero(y == side), scenes[y == side])}
        pos[side] = np.array([at[k] for k in order])
    draws = _stream(seed, order).integers(0, len(order), size=(n_boot, len(order)))
    out = np.empty((n_boot, len(y)), dtype=np.int64)
    for side in (1, 0):
        out[:, pos[side]] = pos[side][draws]
    return out


def _jackknife(stat, y, arrays, scenes) -> np.ndarray:
    """Leave-one-out values of the statistic: one scene (both its texts) or one text at a time."""
    y = np.asarray(y)
    units = np.asarray(scenes).astype(str) if scenes is not None else np.arange(len(y)).astype(str)
    out = []
    for u in np.unique(units):
        keep = units != u
        if len(np.unique(y[keep])) < len(np.unique(y)):
            continue  # a side would vanish: skip that unit
        out.append(stat(y[keep], *(a[keep] for a in arrays)))
    return np.asarray(out, dtype=np.float64)


def _bca(vals: np.ndarray, est: float, jack: np.ndarray, level: float) -> tuple[float, float]:
    """Bias-corrected and accelerated percentile interval (Efron 1987) from bootstrap and jackknife values.

    Ties with the estimate count half (so the interval of ``1 - stat`` is the mirror of that of ``stat``).
    """
    vals = vals[np.isfinite(vals)]
    b = len(vals)
    if b == 0 or np.ptp(vals) == 0:
        return float(est), float(est)
    tol = 1e-12 * max(1.0, abs(est))
    below = np.sum(vals < est - tol) + 0.5 * np.sum(np.abs(vals - est) <= tol)
    z0 = norm.ppf(np.clip(below / b, 0.5 / b, 1 - 0.5 / b))
    d = jack.mean() - jack if len(jack) > 2 else np.zeros(1)
    den = 6 * np.sum(d**2) ** 1.5
    a = float(np.sum(d**3) / den) if den > 0 else 0.0
    z = norm.ppf([(1 - level) / 2, (1 + level) / 2])
    alphas = norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    lo, hi = np.quantile(vals, np.clip(alphas, 0, 1))
    return float(lo), float(hi)


def bootstrap_ci(
    stat,
    y,
    *arrays,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    keys=None,
    scenes=None,
    method: str = "bca",
):
    """Point estimate and bootstrap interval of ``stat(y, *arrays)``.

    Resamples scenes (both sides together) when ``scenes`` is given, else texts within each side (stratified), so
    every resample has both sides; ``keys`` (text ids) make the draws independent of the texts' order and of
    which side is left (:func:`resample_indices`). ``method``: ``"bca"`` (bias-corrected and accelerated, the
    acceleration from the leave-one-scene/text-out jackknife) or ``"percentile"``.

    Returns:
        ``(estimate, low, high)``.

    >>> est, lo, hi = bootstrap_ci(lambda y, s: float(np.mean(s[y == 1])), [1, 1, 0], [1.0, 1.0, 0.0])
    >>> est, lo, hi
    (1.0, 1.0, 1.0)
    """
    if method not in ("bca", "percentile"):
        raise ValueError(f"bootstrap method {method!r}: expected 'bca' or 'percentile'")
    y = np.asarray(y)
    arrays = [np.asarray(a) for a in arrays]
    est = stat(y, *arrays)
    idx = resample_indices(y, n_boot, seed, keys, scenes)
    vals = np.array([stat(y[i], *(a[i] for a in arrays)) for i in idx], dtype=np.float64)
    if method == "bca":
        lo, hi = _bca(vals, est, _jackknife(stat, y, arrays, scenes), level)
    else:
        alpha = (1 - level) / 2
        lo, hi = np.quantile(vals, [alpha, 1 - alpha])
    return float(est), float(lo), float(hi)


def wilson_interval(k, n, level: float = 0.95):
    """Wilson score interval of a binomial proportion ``k / n`` (vectorised over arrays).

    >>> [round(float(v), 4) for v in wilson_interval(32, 32)]
    [0.8928, 1.0]
    """
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    z = norm.ppf((1 + level) / 2)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def clopper_pearson_interval(k, n, level: float = 0.95):
    """Clopper-Pearson (exact) interval of a binomial proportion ``k / n`` (vectorised over arrays).

    >>> [round(float(v), 4) for v in clopper_pearson_interval(31, 32)]
    [0.8378, 0.9992]
    """
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    a = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k <= 0, 0.0, beta.ppf(a, np.maximum(k, 1e-300), n - k + 1))
        hi = np.where(k >= n, 1.0, beta.ppf(1 - a, k + 1, np.maximum(n - k, 1e-300)))
    return np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)


def _hit_correlation(y, hit, scenes) -> float:
    """Correlation (phi) of the left and right hits of the same scene, clipped below at 0; 0 when undefined."""
    scenes = np.asarray(scenes).astype(str)
    order = np.unique(scenes)
    h = {}
    for side in (1, 0):
        at = dict(zip(scenes[y == side], hit[y == side]))
        h[side] = np.array([at[k] for k in order], dtype=np.float64)
    if h[1].std() == 0 or h[0].std() == 0:
        return 0.0
    return max(0.0, float(np.corrcoef(h[1], h[0])[0, 1]))


def balanced_accuracy_ci(y, pred_left, *, scenes=None, level: float = 0.95) -> tuple[float, float, float]:
    """Balanced accuracy with a MOVER interval: ``(estimate, low, high)``.

    Each side's hit rate gets an interval ``[l_i, u_i]`` (Wilson below, Clopper-Pearson above, see
    :func:`balanced_accuracy_interval`); the interval of their mean recovers the variance from those limits
    (MOVER, Zou & Donner 2008; Newcombe 1998):
    ``low = BA - sqrt((p1-l1)^2 + (p0-l0)^2 + 2 r (p1-l1)(p0-l0)) / 2`` and likewise above. ``r`` is 0 for
    independent sides; for matched data (``scenes``) it is the correlation of the two hits of a scene (clipped
    at 0, so it can only widen the interval). It does not collapse at perfect separation. Exact coverage over
    every pair of true hit rates in [0.5, 1] (step 0.01) at 32, 48 and 64 texts per side: at least 0.94,
    on average 0.96 (tests/test_stats.py computes it with :func:`balanced_accuracy_coverage`).

    >>> [round(v, 3) for v in balanced_accuracy_ci([1] * 32 + [0] * 32, [True] * 32 + [False] * 32)]
    [1.0, 0.924, 1.0]
    """
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(pred_left, dtype=bool)
    est = balanced_accuracy(y, pred)
    hit = pred == y
    r = _hit_correlation(y, hit, scenes) if scenes is not None else 0.0
    lo, hi = balanced_accuracy_interval(hit[y].sum(), y.sum(), hit[~y].sum(), (~y).sum(), r=r, level=level)
    return float(est), float(lo), float(hi)


def balanced_accuracy_interval(k1, n1, k0, n0, *, r=0.0, level: float = 0.95, upper: str = "clopper-pearson"):
    """The MOVER interval of :func:`balanced_accuracy_ci` from hit counts (vectorised over arrays): ``k1`` of
    ``n1`` left texts and ``k0`` of ``n0`` right texts read right; ``r`` the hits' scene correlation.

    Lower limits come from Wilson intervals, upper limits from Clopper-Pearson (``upper="wilson"``: Wilson on both
    sides, the earlier method). Chosen by exact coverage (:func:`balanced_accuracy_coverage`): with Wilson alone
    the interval misses on the upper side near BA 1 (minimum 0.887 at 32 per side); Clopper-Pearson on both sides
    covers at least 0.946 but widens the lower limit for nothing; this mix keeps every grid point >= 0.94.

    >>> [round(float(v), 3) for v in balanced_accuracy_interval(32, 32, 32, 32)]
    [0.924, 1.0]
    """
    k1, n1, k0, n0 = (np.asarray(v, dtype=np.float64) for v in (k1, n1, k0, n0))
    p1, p0 = k1 / n1, k0 / n0
    est = (p1 + p0) / 2
    l1, u1 = wilson_interval(k1, n1, level)
    l0, u0 = wilson_interval(k0, n0, level)
    if upper == "clopper-pearson":
        u1 = clopper_pearson_interval(k1, n1, level)[1]
        u0 = clopper_pearson_interval(k0, n0, level)[1]
    elif upper != "wilson":
        raise ValueError(f"upper must be 'clopper-pearson' or 'wilson', not {upper!r}")
    dl1, dl0, du1, du0 = p1 - l1, p0 - l0, u1 - p1, u0 - p0
    lo = est - np.sqrt(dl1**2 + dl0**2 + 2 * r * dl1 * dl0) / 2
    hi = est + np.sqrt(du1**2 + du0**2 + 2 * r * du1 * du0) / 2
    return np.maximum(lo, 0.0), np.minimum(hi, 1.0)


def balanced_accuracy_coverage(n1: int, n0: int | None = None, grid=None, *, level: float = 0.95, **kwargs):
    """Exact coverage of :func:`balanced_accuracy_interval` at ``n1`` left and ``n0`` right texts (independent
    sides): for every pair of true hit rates ``(t1, t0)`` of ``grid`` (default 0.5 to 1 in steps of 0.01) the
    probability, over all ``(n1 + 1)(n0 + 1)`` outcomes, that the interval holds ``(t1 + t0) / 2``.

    Returns ``{"t1", "t0", "ba", "coverage", "miss_high"}``, arrays ``[G * G]``; ``miss_high`` is the probability
    that the interval lies wholly below the truth. ``kwargs`` go to :func:`balanced_accuracy_interval`.

    >>> c = balanced_accuracy_coverage(32)
    >>> bool(c["coverage"].min() >= 0.94)
    True
    """
    from scipy.stats import binom

    n0 = n1 if n0 is None else n0
    grid = np.round(np.arange(0.5, 1.0 + 1e-9, 0.01), 4) if grid is None else np.asarray(grid, dtype=np.float64)
    k1, k0 = np.arange(n1 + 1), np.arange(n0 + 1)
    K1, K0 = np.meshgrid(k1, k0, indexing="ij")
    lo, hi = balanced_accuracy_interval(K1, n1, K0, n0, level=level, **kwargs)
    T1, T0 = (v.ravel() for v in np.meshgrid(grid, grid, indexing="ij"))
    w1, w0 = binom.pmf(k1[None, :], n1, T1[:, None]), binom.pmf(k0[None, :], n0, T0[:, None])  # [G2, n+1]
    ba = (T1 + T0) / 2
    inside = (lo[None] <= ba[:, None, None] + 1e-12) & (ba[:, None, None] <= hi[None] + 1e-12)
    below = hi[None] < ba[:, None, None] - 1e-12
    cov = np.einsum("gi,gj,gij->g", w1, w0, inside.astype(np.float64))
    miss = np.einsum("gi,gj,gij->g", w1, w0, below.astype(np.float64))
    return {"t1": T1, "t0": T0, "ba": ba, "coverage": cov, "miss_high": miss}


def _as_decision(s) -> np.ndarray:
    s = np.asarray(s)
    return s if s.dtype == bool else s > 0


def balanced_accuracy_rows(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Balanced accuracy of every row of label and decision matrices ``[B, N]`` (vectorised)."""
    hit = y == pred
    n1 = y.sum(axis=1)
    n0 = y.shape[1] - n1
    return ((hit & y).sum(axis=1) / n1 + (hit & ~y).sum(axis=1) / n0) / 2


def paired_difference(
    y,
    a,
    b,
    *,
    metric="balanced_accuracy",
    ids=None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    matched=None,
) -> dict:
    """``metric(a) - metric(b)`` of two classifiers on the same texts, with its paired bootstrap interval.

    Both are resampled with the *same* draws of the shared ids (by scene for matched data), so what the two have
    in common cancels; the interval is BCa.

    Args:
        y: ``[N]`` 1 for left texts, 0 for right.
        a, b: ``[N]`` signed scores (positive reads left) or boolean decisions (True = left) on the same texts,
            in the same order.
        metric: ``"balanced_accuracy"`` (of the decision ``score > 0``), ``"auroc"`` (of the score), or a
            callable ``(y, s) -> float``.
        ids: ``[N]`` text ids (resamples independent of order and side; scenes detected from them).
        matched: True/False to force or refuse scene resampling; None detects it from ``ids`` (:func:`scene_keys`).

    Returns:
        ``{"value", "ci95": [lo, hi], "a", "b", "n_boot", "resample": "scene" | "stratified"}``.

    Example:
        >>> y = np.array([1] * 20 + [0] * 20)
        >>> d = paired_difference(y, np.where(y == 1, 1.0, -1.0), -np.ones(40), ids=[f"t{i}" for i in range(40)])
        >>> d["value"], d["ci95"][0] > 0
        (0.5, True)
    """
    y = np.asarray(y)
    a, b = np.asarray(a), np.asarray(b)
    if not (len(y) == len(a) == len(b)):
        raise ValueError(f"paired_difference: y, a and b must hold the same texts ({len(y)}, {len(a)}, {len(b)})")
    for arr, name in ((a, "a"), (b, "b")):
        if arr.dtype != bool:
            require_finite(arr, f"paired_difference: scores {name}", ids)
    if metric == "balanced_accuracy":
        fn = lambda y, s: balanced_accuracy(y, _as_decision(s))  # noqa: E731
    elif metric == "auroc":
        fn = auroc
    elif callable(metric):
        fn = metric
    else:
        raise ValueError(f"metric {metric!r}: expected 'balanced_accuracy', 'auroc' or a callable")
    ids = np.arange(len(y)).astype(str) if ids is None else np.asarray(ids).astype(str)
    scenes = scene_keys(ids, y) if matched in (None, True) else None
    if matched is True and scenes is None:
        raise ValueError("paired_difference: matched=True but the ids do not pair up as {side}-{split}-{nnn}")
    idx = resample_indices(y, n_boot, seed, ids, scenes)
    if metric == "balanced_accuracy":
        yb = y[idx].astype(bool)
        vals = balanced_accuracy_rows(yb, _as_decision(a)[idx]) - balanced_accuracy_rows(yb, _as_decision(b)[idx])
    else:
        vals = np.array([fn(y[i], a[i]) - fn(y[i], b[i]) for i in idx])
    va, vb = fn(y, a), fn(y, b)
    diff = lambda y, a, b: fn(y, a) - fn(y, b)  # noqa: E731
    lo, hi = _bca(vals, va - vb, _jackknife(diff, y, [a, b], scenes), level)
    return {
        "value": float(va - vb),
        "ci95": [lo, hi],
        "a": float(va),
        "b": float(vb),
        "n_boot": int(n_boot),
        "resample": "scene" if scenes is not None else "stratified",
    }


def mover_difference(a: dict, b: dict) -> dict:
    """``a - b`` of two estimates from *independent* samples (e.g. train and test texts), each given as
    ``{"value", "ci95": [lo, hi]}``, with the MOVER interval (Newcombe 1998 method 10, Zou & Donner 2008):
    ``low = d - sqrt((a - a_lo)^2 + (b_hi - b)^2)``, ``high = d + sqrt((a_hi - a)^2 + (b - b_lo)^2)``.

    >>> d = mover_difference({"value": 0.9, "ci95": [0.8, 0.95]}, {"value": 0.7, "ci95": [0.6, 0.8]})
    >>> [round(v, 4) for v in d["ci95"]]
    [0.0586, 0.3118]
    """
    va, (la, ua), vb, (lb, ub) = a["value"], a["ci95"], b["value"], b["ci95"]
    d = va - vb
    lo = d - np.sqrt((va - la) ** 2 + (ub - vb) ** 2)
    hi = d + np.sqrt((ua - va) ** 2 + (vb - lb) ** 2)
    return {"value": float(d), "ci95": [float(lo), float(hi)]}


def permutation_p(y, pred_left, *, n_perm: int = 10_000, seed: int = 0, ids=None, scenes=None) -> float:
    """One-sided permutation p-value of the balanced accuracy of fixed decisions against chance.

    The labels are permuted on the fixed decisions ``n_perm`` times (within each scene, i.e. the two texts of a
    scene swap sides or not, when ``scenes`` is given; over all texts otherwise):
    ``p = (1 + #{BA_perm >= BA}) / (1 + n_perm)``. Vectorised: ``n_perm x N`` booleans.

    >>> y = np.array([1] * 16 + [0] * 16)
    >>> permutation_p(y, y == 1) < 1e-3, permutation_p(y, np.arange(32) % 2 == 0) > 0.2
    (True, True)
    """
    y = np.asarray(y).astype(bool)
    pred = _as_decision(pred_left)
    if np.asarray(pred_left).dtype != bool:
        require_finite(pred_left, "permutation_p: scores", ids)
    keys = np.arange(len(y)).astype(str) if ids is None else np.asarray(ids).astype(str)
    obs = balanced_accuracy(y, pred)
    if scenes is not None:
        scenes = np.asarray(scenes).astype(str)
        order = np.unique(scenes)
        rng = _stream(seed, order)
        flip = rng.random((n_perm, len(order))) < 0.5
        pos = {s: {k: i for i, k in zip(np.flatnonzero(y == s), scenes[y == s])} for s in (True, False)}
        yp = np.empty((n_perm, len(y)), dtype=bool)
        yp[:, [pos[True][k] for k in order]] = ~flip
        yp[:, [pos[False][k] for k in order]] = flip
    else:
        canon = np.argsort(keys, kind="stable")
        rng = _stream(seed, keys)
        perm = np.argsort(rng.random((n_perm, len(y))), axis=1)
        yp = np.empty((n_perm, len(y)), dtype=bool)
        yp[:, canon] = y[canon][perm]
    null = balanced_accuracy_rows(yp, np.broadcast_to(pred, yp.shape))
    return float((1 + np.sum(null >= obs - 1e-12)) / (1 + n_perm))


def holm(pvals) -> list[float]:
    """Holm's step-down adjustment of ``pvals`` (family-wise error), in the input order.

    (scipy has only the Benjamini-Hochberg adjustment, and statsmodels is a heavy dependency for these lines.)

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvals, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return [round(float(v), 12) for v in out]
