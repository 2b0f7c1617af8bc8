"""Turning signed scores into probabilities: Platt scaling and temperature, fitted by NLL.

``p_left = sigmoid(a * score + b)`` (Platt) or ``sigmoid(k * score)`` (temperature only). Both are fitted by
minimising the negative log-likelihood with L-BFGS (analytic gradients; both problems are convex).

As in Platt (1999), the 0/1 labels are replaced by the targets ``(N_left + 1) / (N_left + 2)`` and
``1 / (N_right + 2)``: on separable validation scores the plain NLL has no minimum (``a`` grows without bound and
every probability becomes 0 or 1), while the smoothed targets keep the fit finite and the percentages honest.
``smooth=False`` fits the plain labels. The slope is kept non-negative: a direction that reads the val split
backwards must show as a poor fit, not be turned around silently by the calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

__all__ = [
    "Calibrator",
    "fit_platt",
    "fit_temperature",
    "platt_targets",
    "nll",
    "brier",
    "ece",
    "equal_mass_bins",
    "calibration_report",
    "ece_noise_floor",
]


@dataclass(frozen=True)
class Calibrator:
    """``p_left = sigmoid(a * score + b)``; temperature scaling is ``b = 0``."""

    method: str
    a: float
    b: float = 0.0

    def logit(self, score):
        return self.a * np.asarray(score, dtype=np.float64) + self.b

    def __call__(self, score) -> np.ndarray:
        """Calibrated ``p_left`` for each score."""
        return expit(self.logit(score))

    def swapped(self) -> Calibrator:
        """The calibrator of the mirrored pair (scores negated, sides exchanged): ``p' = 1 - p``."""
        return Calibrator(self.method, self.a, -self.b)

    def to_dict(self) -> dict:
        return {"method": self.method, "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, d: dict) -> Calibrator:
        return cls(d["method"], float(d["a"]), float(d.get("b", 0.0)))


def nll(y, p, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of labels ``y`` (1 = left) under ``p_left``."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def brier(y, p) -> float:
    """Mean squared error of ``p_left`` against ``y``."""
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def ece(y, p, bins: int = 5, strategy: str = "mass") -> float:
    """Expected calibration error of ``p_left``: ``sum_b (n_b/N) |mean y - mean p|`` over ``bins`` bins.

    ``strategy="mass"`` (default): equal-mass bins (the texts sorted by ``p``, split into ``bins`` groups of
    near-equal size); ``"width"``: equal-width bins on [0, 1]. ECE is biased upward on few texts (a perfectly
    calibrated predictor scores about 0.12 with 10 equal-width bins and 64 texts), so the reports lead with NLL
    and Brier and use at most 5 equal-mass bins.

    >>> ece([1, 0, 1, 1], [0.9, 0.1, 0.6, 0.8], bins=2)
    0.15
    >>> ece([1, 0, 1, 1], [0.9, 0.1, 0.6, 0.8], bins=2, strategy="width")
    0.2
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if strategy == "mass":
        which = equal_mass_bins(p, bins)
        groups = [np.flatnonzero(which == b) for b in range(bins)]
    elif strategy == "width":
        which = np.minimum((p * bins).astype(int), bins - 1)
        groups = [np.flatnonzero(which == b) for b in range(bins)]
    else:
        raise ValueError(f"ECE strategy {strategy!r}: expected 'mass' or 'width'")
    total = sum(len(g) / len(p) * abs(y[g].mean() - p[g].mean()) for g in groups if len(g))
    return float(round(total, 12))


def equal_mass_bins(p, bins: int = 5) -> np.ndarray:
    """``[N]`` bin of each ``p``: cut at the ``bins``-quantiles of ``p``, so the bins hold about equally many texts;
    equal values always share a bin (a constant predictor is one bin).

    >>> equal_mass_bins([0.9, 0.1, 0.6, 0.8], 2).tolist(), equal_mass_bins([0.5] * 4, 2).tolist()
    ([1, 0, 0, 1], [0, 0, 0, 0])
    """
    p = np.asarray(p, dtype=np.float64)
    edges = np.quantile(p, np.linspace(0, 1, bins + 1)[1:-1]) if len(p) else np.array([])
    return np.searchsorted(edges, p, side="left")


def _nll_and_grad(params, s, y, with_bias):
    a = params[0]
    b = params[1] if with_bias else 0.0
    z = a * s + b
    # -[y log sigmoid(z) + (1-y) log sigmoid(-z)], stable
    loss = -np.mean(y * log_expit(z) + (1 - y) * log_expit(-z))
    r = expit(z) - y  # d loss / d z, per text
    grad = [np.mean(r * s)]
    if with_bias:
        grad.append(np.mean(r))
    return loss, np.array(grad)


def platt_targets(y) -> np.ndarray:
    """Platt's smoothed targets for 0/1 labels ``y``."""
    y = np.asarray(y, dtype=np.float64)
    n1, n0 = y.sum(), (1 - y).sum()
    return np.where(y > 0.5, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))


def _fit(score, y, with_bias: bool, smooth: bool) -> tuple[float, float]:
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(s) == 0 or y.min() == y.max():
        raise ValueError("calibration needs texts of both sides")
    if not np.isfinite(s).all():
        bad = np.flatnonzero(~np.isfinite(s))[:5].tolist()
        raise ValueError(f"calibration: non-finite scores (NaN or inf) at positions {bad}")
    if smooth:
        y = platt_targets(y)
    scale = s.std() or 1.0
    x0 = np.array([1.0 / scale, 0.0] if with_bias else [1.0 / scale])
    res = minimize(
        _nll_and_grad,
        x0,
        args=(s, y, with_bias),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None), (None, None)] if with_bias else [(0.0, None)],
        options={"maxiter": 1000, "gtol": 1e-10, "ftol": 1e-15},
    )
    a = float(res.x[0])
    b = float(res.x[1]) if with_bias else 0.0
    return a, b


def fit_platt(score, y, smooth: bool = True) -> Calibrator:
    """Fit ``p_left = sigmoid(a * score + b)`` by NLL (on Platt's smoothed targets unless ``smooth=False``).

    >>> cal = fit_platt([-2.0, -1.0, 1.0, 2.0, 0.5, -0.5], [0, 0, 1, 1, 0, 1])
    >>> round(cal.a, 3) > 0
    True
    """
    return Calibrator("platt", *_fit(score, y, True, smooth))


def fit_temperature(score, y, smooth: bool = True) -> Calibrator:
    """Fit ``p_left = sigmoid(k * score)`` by NLL (``a = k``, ``b = 0``)."""
    return Calibrator("temperature", *_fit(score, y, False, smooth))


def calibration_report(y, score, calibrators: dict, *, n_sim: int = 200, seed: int = 0) -> dict:
    """How good the probabilities are on the given texts: NLL, Brier and ECE (5 equal-mass bins) of

    * ``raw``: ``sigmoid(score)`` with no fit (the band score is in units of the train within-side spread, so
      this is what an uncalibrated probe would say: the reference a calibration must beat);
    * each calibrator (``calibrated``, and ``temperature`` where given: the temperature-only fit);
    * ``constant``: ``p_left = 0.5``, NLL and Brier only. Its ECE is uninformative (on balanced texts it is 0 for
      any data) and is reported as None.

    ``ece_noise_floor``: the ECE that a perfectly calibrated predictor gets at this number of texts, simulated by
    drawing the labels from the calibrated probabilities themselves (``n_sim`` draws; 0 skips it): mean and 95th
    percentile. An ECE below the 95th percentile cannot be told from perfect calibration.

    Example:
        >>> rep = calibration_report([1, 0, 1, 0], [2.0, -2.0, 0.5, -0.5], {}, n_sim=20)
        >>> sorted(rep), rep["constant"]["ece"] is None
        (['constant', 'ece_noise_floor', 'raw'], True)
    """
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    out = {"constant": {**_quality(y, np.full(len(y), 0.5)), "ece": None}, "raw": _quality(y, expit(score))}
    for name, cal in calibrators.items():
        out[name] = _quality(y, cal(score))
    if n_sim:
        p_ref = calibrators["calibrated"](score) if "calibrated" in calibrators else expit(score)
        out["ece_noise_floor"] = ece_noise_floor(p_ref, n_sim=n_sim, seed=seed)
    return out


def ece_noise_floor(p, *, n_sim: int = 200, seed: int = 0, bins: int = 5) -> dict:
    """ECE of a perfectly calibrated predictor with probabilities ``p`` ``[N]``: labels drawn as
    ``Bernoulli(p)`` ``n_sim`` times. Returns ``{"mean", "q95", "n", "n_sim"}``.

    >>> f = ece_noise_floor(np.full(128, 0.7), n_sim=50)
    >>> 0.0 < f["mean"] < 0.15 and f["n"] == 128
    True
    """
    p = np.asarray(p, dtype=np.float64)
    rng = np.random.default_rng(seed)
    vals = np.array([ece((rng.random(len(p)) < p).astype(np.float64), p, bins=bins) for _ in range(n_sim)])
    if not len(p):
        return {"mean": None, "q95": None, "n": 0, "n_sim": int(n_sim)}
    return {"mean": float(vals.mean()), "q95": float(np.quantile(vals, 0.95)), "n": int(len(p)), "n_sim": int(n_sim)}


def _quality(y, p) -> dict:
    return {"nll": nll(y, p), "brier": brier(y, p), "ece": ece(y, p)}
