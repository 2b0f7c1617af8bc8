"""The validation split's two jobs, layer choice and calibration, and the common scale of a band's layers.

* :func:`val_halves`: the val split cut in two halves per pair, one to choose the layers, the other to fit the
  calibration. Choosing layers and calibrating on the same texts inflates the calibration slope (the chosen band
  is the one that looked best on exactly those texts; about 25% in the review's simulation).
* :func:`layer_scale`: per pair and layer, the pooled within-side standard deviation of the train scores. A band's
  score is the mean of its layers' scores *in these units*, so that the deepest layer (largest activations) does
  not dominate a band.
* :func:`select_and_calibrate`: both, for a :class:`~emofast.probe.paired.PairedProbe`.
"""

from __future__ import annotations

import numpy as np

from .calibration import calibration_report, fit_platt, fit_temperature
from .layers import choose_layers
from .stats import require_finite, scene_keys

__all__ = ["VAL_USES", "val_halves", "layer_scale", "select_and_calibrate"]

#: ``halves``: layers on one half of val, calibration on the other; ``shared``: both on all of val.
VAL_USES = ("halves", "shared")


def val_halves(ids, y) -> tuple[np.ndarray, np.ndarray]:
    """Split one pair's val texts in two halves: ``(select_mask [N], calibrate_mask [N])``.

    Matched data (:func:`~emofast.probe.stats.scene_keys`) is split by scene (both texts of a scene in one half);
    otherwise each side's texts, in sorted id order, alternate. The halves depend on the ids only, not on the
    texts' order or on which side is left.

    >>> a, b = val_halves(["s-val-1", "s-val-2", "h-val-2", "h-val-1"], [1, 1, 0, 0])
    >>> a.tolist(), b.tolist()
    ([True, False, False, True], [False, True, True, False])
    """
    y = np.asarray(y)
    ids = np.asarray(ids).astype(str)
    first = np.zeros(len(y), dtype=bool)
    scenes = scene_keys(ids, y)
    if scenes is not None:
        order = sorted(set(scenes), key=_natural)
        keep = {k for k in order[::2]}
        first = np.array([k in keep for k in scenes])
    else:
        for side in np.unique(y):
            pos = np.flatnonzero(y == side)
            pos = pos[sorted(range(len(pos)), key=lambda i: _natural(ids[pos[i]]))]
            first[pos[::2]] = True
    if min(first[y == s].sum() for s in (0, 1)) < 1 or min((~first)[y == s].sum() for s in (0, 1)) < 1:
        raise ValueError("val halves need at least 2 val texts per side")
    return first, ~first


def _natural(key: str):
    """Sort key that orders ``test-2`` before ``test-10``."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(key))]


def layer_scale(scores: np.ndarray, index) -> np.ndarray:
    """``[P, nL]`` pooled within-side standard deviation of each pair's scores of its own texts, per layer.

    Args:
        scores: ``[N, nL, P]`` raw per-layer scores of ``index``'s texts (the train split).
        index: a :class:`~emofast.probe.paired.SplitIndex` (``pair``, ``y``, ``ids``).

    Zero or undefined spreads become 1 (nothing to rescale).

    >>> from types import SimpleNamespace
    >>> ix = SimpleNamespace(pair=np.zeros(4, int), y=np.array([1, 1, 0, 0]), ids=list("abcd"))
    >>> layer_scale(np.array([[1.0, 10], [3, 30], [-1, -10], [-3, -30]])[:, :, None], ix).round(3).tolist()
    [[1.414, 14.142]]
    """
    n_pairs = scores.shape[2]
    out = np.ones((n_pairs, scores.shape[1]))
    for p in range(n_pairs):
        idx = np.flatnonzero(index.pair == p)
        s = scores[idx, :, p]
        require_finite(s, f"pair #{p}, train scores", [index.ids[i] for i in idx])
        y = index.y[idx]
        ss = sum(((s[y == side] - s[y == side].mean(0)) ** 2).sum(0) for side in (0, 1) if (y == side).sum() > 1)
        dof = max(len(idx) - 2, 1)
        sd = np.sqrt(np.asarray(ss, dtype=np.float64) / dof)
        out[p] = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
    return out


def select_and_calibrate(probe, val_scores, val, *, policy, width, calibration, val_use="halves", split="val"):
    """Choose ``probe``'s layers and fit its calibrators from val scores ``[N_val, nL, P]`` (all candidate layers,
    already on the probe's scale); fills ``probe.chosen``, ``probe.calibrators``, ``probe.fit_report``.

    ``val_use="halves"`` chooses on one half of each pair's val texts and calibrates on the other
    (:func:`val_halves`); ``"shared"`` uses all of val for both.
    """
    if val_use not in VAL_USES:
        raise ValueError(f"val use {val_use!r}: expected one of {', '.join(VAL_USES)}")
    per_pair, cal_rows = {}, {}
    for p, name in enumerate(probe.names):
        idx = val.of_pair(p)
        require_finite(val_scores[idx, :, p], f"pair {name}, split {split}", [val.ids[i] for i in idx])
        if val_use == "halves":
            a, b = val_halves([val.ids[i] for i in idx], val.y[idx])
            sel, cal = idx[a], idx[b]
        else:
            sel = cal = idx
        per_pair[name] = (val_scores[sel, :, p], val.y[sel])
        cal_rows[name] = cal
    probe.chosen, table = choose_layers(per_pair, probe.layers, policy=policy, width=width)
    band = probe.band_scores(val_scores, probe.layers)
    cal_report = {}
    for p, name in enumerate(probe.names):
        idx = cal_rows[name]
        fits = {"platt": fit_platt(band[idx, p], val.y[idx]), "temperature": fit_temperature(band[idx, p], val.y[idx])}
        probe.calibrators[name] = fits[calibration]
        cal_report[name] = {
            "fits": {k: c.to_dict() for k, c in fits.items()},
            "val": calibration_report(val.y[idx], band[idx, p], fits, n_sim=0),
            "n_select": int(len(per_pair[name][1])),
            "n_calibrate": int(len(idx)),
        }
    probe.meta.update(
        {"layer_policy": policy, "band_width": table["width"], "calibration_method": calibration, "val_use": val_use}
    )
    probe.fit_report = {"selection": table, "calibration": cal_report}
