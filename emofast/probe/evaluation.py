"""Held-out evaluation of a fitted probe, with bootstrap confidence intervals, the emotion profile, and the
controls (neutral texts, polarity swap)."""

from __future__ import annotations

import numpy as np

from .calibration import Calibrator, calibration_report, equal_mass_bins
from .paired import PairedProbe, SplitIndex
from .stats import (
    auroc,
    balanced_accuracy,
    balanced_accuracy_ci,
    bootstrap_ci,
    permutation_p,
    require_finite,
    scene_keys,
    separation,
)

__all__ = [
    "evaluate_split",
    "neutral_readings",
    "mirror_deviation",
    "per_layer_curves",
    "cross_reading",
    "direction_cosines",
    "reliability",
    "reliability_curves",
    "split_outputs",
]


def _ci(est_lo_hi) -> dict:
    est, lo, hi = est_lo_hi
    return {"value": est, "ci95": [lo, hi]}


def evaluate_split(
    probe: PairedProbe,
    layer_scores: np.ndarray,
    layers,
    index: SplitIndex,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    chosen: dict | None = None,
    split: str = "test",
    n_perm: int = 10_000,
    matched: bool | None = None,
) -> dict:
    """Metrics per pair on one split.

    Args:
        layer_scores: ``[N, len(layers), P]`` per-layer scores of ``index``'s texts.
        index: which pair and side each text belongs to.
        split: the split's name (for error messages).
        n_perm: label permutations of the permutation test (0: none).
        matched: resample by scene (True), by side (False), or detect it from the ids (None,
            :func:`~emofast.probe.stats.scene_keys`).

    Returns:
        ``{pair: {balanced_accuracy, auroc, sign_accuracy, mean_p_left_on_left, mean_p_right_on_right,
        margin_left, margin_right, mean_p_left, separation, calibration, n_left, n_right, resample,
        permutation_p}}``; each statistic as ``{"value", "ci95": [lo, hi]}``: the balanced accuracies with the
        Wilson/MOVER interval, the rest with the BCa bootstrap (by scene for matched data).

    Raises:
        ValueError: a non-finite score (names the pair, the split and the texts).
    """
    band = probe.band_scores(layer_scores, layers, chosen)
    p_left = probe.probabilities(band)
    out = {}
    for p, name in enumerate(probe.names):
        idx = index.of_pair(p)
        ids = [index.ids[i] for i in idx]
        require_finite(band[idx, p], f"pair {name}, split {split}", ids)
        y, s, pl = index.y[idx], band[idx, p], p_left[idx, p]
        scenes = scene_keys(ids, y) if matched is not False else None
        if matched and scenes is None:
            raise ValueError(f"pair {name}, split {split}: matched=True but the ids do not pair up by scene")
        boot = {"n_boot": n_boot, "seed": seed, "keys": ids, "scenes": scenes}
        fits = probe.fit_report.get("calibration", {}).get(name, {}).get("fits", {})
        cals = {"calibrated": probe.calibrators[name]}
        if "temperature" in fits:
            cals["temperature"] = Calibrator.from_dict(fits["temperature"])
        out[name] = {
            "n_left": int(y.sum()),
            "n_right": int((1 - y).sum()),
            "resample": "scene" if scenes is not None else "stratified",
            "balanced_accuracy": _ci(balanced_accuracy_ci(y, pl > 0.5, scenes=scenes)),
            "sign_accuracy": _ci(balanced_accuracy_ci(y, s > 0, scenes=scenes)),
            "auroc": _ci(bootstrap_ci(auroc, y, s, **boot)),
            "mean_p_left_on_left": _ci(bootstrap_ci(lambda y, q: float(q[y == 1].mean()), y, pl, **boot)),
            "mean_p_right_on_right": _ci(bootstrap_ci(lambda y, q: float(1 - q[y == 0].mean()), y, pl, **boot)),
            "margin_left": _ci(bootstrap_ci(lambda y, v: float(v[y == 1].mean()), y, s, **boot)),
            "margin_right": _ci(bootstrap_ci(lambda y, v: float(-v[y == 0].mean()), y, s, **boot)),
            "mean_p_left": _ci(bootstrap_ci(lambda y, q: float(q.mean()), y, pl, **boot)),
            "separation": separation(y, s),
            "calibration": calibration_report(y, s, cals),
        }
        if n_perm:
            out[name]["permutation_p"] = permutation_p(y, pl > 0.5, n_perm=n_perm, seed=seed, ids=ids, scenes=scenes)
    return out


def split_outputs(probe: PairedProbe, layer_scores: np.ndarray, layers, index: SplitIndex) -> dict:
    """Per pair, the per-text outputs on one split: ``{"ids", "y", "score", "p_left"}`` (lists in the split's
    order), kept in ``metrics.json`` so that reports can pair two runs text by text (model A - model B)."""
    band = probe.band_scores(layer_scores, layers)
    p_left = probe.probabilities(band)
    out = {}
    for p, name in enumerate(probe.names):
        idx = index.of_pair(p)
        out[name] = {
            "ids": [index.ids[i] for i in idx],
            "y": index.y[idx].tolist(),
            "score": band[idx, p].tolist(),
            "p_left": p_left[idx, p].tolist(),
        }
    return out


def neutral_readings(
    probe: PairedProbe, layer_scores: np.ndarray, layers, *, n_boot: int = 1000, seed: int = 0, ids=None
) -> dict:
    """Mean ``p_left`` of every pair on the neutral texts, and the share read as left (``p_left > 0.5``)."""
    band = probe.band_scores(layer_scores, layers)
    p_left = probe.probabilities(band)
    y = np.zeros(len(band), dtype=np.int64)
    out = {}
    for p, name in enumerate(probe.names):
        require_finite(band[:, p], f"pair {name}, neutral texts", ids)
        q = p_left[:, p]
        out[name] = {
            "n": int(len(q)),
            "mean_p_left": _ci(bootstrap_ci(lambda y, q: float(q.mean()), y, q, n_boot=n_boot, seed=seed, keys=ids)),
            "share_left": float((q > 0.5).mean()),
            "mean_score": float(band[:, p].mean()),
        }
    return out


def per_layer_curves(layer_scores: np.ndarray, layers, index: SplitIndex, names) -> dict:
    """Balanced sign accuracy and separation of every pair at every layer (for the reports)."""
    out = {}
    for p, name in enumerate(names):
        idx = index.of_pair(p)
        y = index.y[idx]
        out[name] = {
            "layers": list(layers),
            "balanced_accuracy": [balanced_accuracy(y, layer_scores[idx, i, p] > 0) for i in range(len(layers))],
            "separation": [separation(y, layer_scores[idx, i, p]) for i in range(len(layers))],
        }
    return out


_MIRROR = {
    "balanced_accuracy": "balanced_accuracy",
    "sign_accuracy": "sign_accuracy",
    "auroc": "auroc",
    "mean_p_left_on_left": "mean_p_right_on_right",
    "mean_p_right_on_right": "mean_p_left_on_left",
    "margin_left": "margin_right",
    "margin_right": "margin_left",
}


def mirror_deviation(metrics: dict, swapped: dict, names: list[str], swapped_names: list[str]) -> float:
    """Largest difference between every number of a run and the mirrored number of its polarity-swapped run.

    Swapping left and right must exchange the per-side numbers, keep accuracy and AUROC, and turn every
    ``p_left`` into ``1 - p_left``; 0 means a perfect mirror.
    """
    worst = 0.0
    for a, b in zip(names, swapped_names):
        ma, mb = metrics[a], swapped[b]
        for key, other in _MIRROR.items():
            va = [ma[key]["value"], *ma[key]["ci95"]]
            vb = [mb[other]["value"], *mb[other]["ci95"]]
            worst = max(worst, max(abs(x - y) for x, y in zip(va, vb)))
        pa = [ma["mean_p_left"]["value"], *ma["mean_p_left"]["ci95"]]
        pb = [1 - mb["mean_p_left"]["value"], *(1 - v for v in mb["mean_p_left"]["ci95"][::-1])]
        worst = max(worst, max(abs(x - y) for x, y in zip(pa, pb)))
    return worst


def cross_reading(probe: PairedProbe, layer_scores: np.ndarray, layers, index: SplitIndex) -> dict:
    """How well each pair's direction reads every pair's texts: AUROC of pair ``p``'s score (at ``p``'s chosen
    layers) separating pair ``q``'s left from right texts. 0.5: unrelated; above: aligned; below: reversed.

    Returns:
        ``{"directions": names, "texts": names, "auroc": [[...] per direction]}``.
    """
    band = probe.band_scores(layer_scores, layers)
    matrix = []
    for p in range(len(probe.names)):
        row = []
        for q in range(len(probe.names)):
            idx = index.of_pair(q)
            row.append(auroc(index.y[idx], band[idx, p]))
        matrix.append(row)
    return {"directions": list(probe.names), "texts": list(probe.names), "auroc": matrix}


def direction_cosines(probe: PairedProbe) -> dict:
    """Cosine similarity between the pairs' directions, averaged over the layers either pair uses."""
    pos = {x: i for i, x in enumerate(probe.layers)}
    d = probe.directions.double()
    out = []
    for a in probe.names:
        row = []
        for b in probe.names:
            layers = sorted(set(probe.chosen[a]) | set(probe.chosen[b]))
            ia, ib = probe.names.index(a), probe.names.index(b)
            # layers where either direction is zero (the two sides did not differ there) say nothing
            cos = [float(d[ia, pos[x]] @ d[ib, pos[x]]) for x in layers if d[ia, pos[x]].any() and d[ib, pos[x]].any()]
            row.append(float(np.mean(cos)) if cos else None)
        out.append(row)
    return {"pairs": list(probe.names), "cosine": out}


def reliability(y, p, bins: int = 5) -> dict:
    """Reliability diagram data: per equal-mass bin of ``p_left`` (the texts sorted by ``p_left``, cut into
    ``bins`` groups of near-equal size), the count, mean ``p_left`` and the observed share of left texts."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    which = equal_mass_bins(p, bins)
    groups = [g for g in (np.flatnonzero(which == b) for b in range(bins)) if len(g)]
    return {
        "bins": "equal-mass",
        "count": [int(len(g)) for g in groups],
        "mean_p_left": [float(p[g].mean()) for g in groups],
        "frac_left": [float(y[g].mean()) for g in groups],
    }


def reliability_curves(probe: PairedProbe, layer_scores: np.ndarray, layers, index: SplitIndex) -> dict:
    """Per pair: reliability data of the temperature-only fit (``temperature``, when the probe has its fit
    report) and of the probe's calibration (``calibrated``)."""
    band = probe.band_scores(layer_scores, layers)
    p_left = probe.probabilities(band)
    out = {}
    for p, name in enumerate(probe.names):
        idx = index.of_pair(p)
        out[name] = {"calibrated": reliability(index.y[idx], p_left[idx, p])}
        fits = probe.fit_report.get("calibration", {}).get(name, {}).get("fits", {})
        if "temperature" in fits:
            t = Calibrator.from_dict(fits["temperature"])
            out[name]["temperature"] = reliability(index.y[idx], t(band[idx, p]))
    return out
