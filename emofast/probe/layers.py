"""Choosing the layers that carry each concept, on the validation split only.

Per pair and layer the signal is the *balanced sign accuracy* of the score (left texts > 0, right texts < 0) and
the *separation* (standardised mean difference). A band's score is the mean of its layers' scores.

Policies (``width`` = band width ``w``):

* ``single``: one layer for every pair, the best mean balanced accuracy across pairs;
* ``band``: one contiguous band of ``w`` layers for every pair, the best mean balanced accuracy across pairs;
* ``global-band``: one band for every pair by votes: each pair votes for its own best band; most votes wins,
  ties broken by mean balanced accuracy, then by mean separation, then by the lower index;
* ``per-pair``: each pair its own best band of ``w`` layers.

Every comparison breaks ties by balanced accuracy, then separation, then the lower layer index.
"""

from __future__ import annotations

import numpy as np

from .stats import balanced_accuracy, separation

__all__ = ["POLICIES", "band_table", "choose_layers"]

POLICIES = ("single", "band", "global-band", "per-pair")


def _r(x: float) -> float:
    """Round so that ties which are exact in theory are exact in floating point too."""
    return round(float(x), 10)


def band_table(scores: np.ndarray, y: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced accuracy and separation of every band of ``width`` consecutive layers.

    Args:
        scores: ``[N, nL]`` one pair's scores of its own texts at each candidate layer.
        y: ``[N]`` 1 for left texts, 0 for right.
        width: band width (1 = single layers).

    Returns:
        ``(ba [nL - width + 1], sep [nL - width + 1])``, indexed by the band's first position.

    >>> s = np.array([[1.0, -1.0, 2.0], [-1.0, -2.0, -1.0]]); band_table(s, np.array([1, 0]), 2)[0].tolist()
    [1.0, 0.5]
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_layers = scores.shape[1]
    if not 1 <= width <= n_layers:
        raise ValueError(f"band width {width} must be between 1 and the number of candidate layers ({n_layers})")
    csum = np.concatenate([np.zeros((scores.shape[0], 1)), np.cumsum(scores, axis=1)], axis=1)
    starts = n_layers - width + 1
    ba, sep = np.empty(starts), np.empty(starts)
    for i in range(starts):
        band = (csum[:, i + width] - csum[:, i]) / width
        ba[i] = balanced_accuracy(y, band > 0)
        sep[i] = separation(y, band)
    return ba, sep


def _best(ba: np.ndarray, sep: np.ndarray) -> int:
    """Index of the best entry: highest BA, then highest separation, then lowest index."""
    return min(range(len(ba)), key=lambda i: (-_r(ba[i]), -_r(sep[i]), i))


def choose_layers(per_pair: dict, layers: list[int], policy: str = "per-pair", width: int = 4):
    """Pick layers per pair.

    Args:
        per_pair: ``{pair: (scores [N, nL], y [N])}``, validation scores at the candidate ``layers``.
        layers: the candidate layer indices, in order (bands are runs of consecutive entries).
        policy: one of :data:`POLICIES`.
        width: band width for ``band``, ``global-band`` and ``per-pair``.

    Returns:
        ``(chosen, table)``: ``chosen[pair]`` is the list of layer indices; ``table`` holds the per-layer and
        per-band balanced accuracy and separation of every pair, and the votes, for reports.
    """
    if policy not in POLICIES:
        raise ValueError(f"layer policy {policy!r}: expected one of {', '.join(POLICIES)}")
    w = 1 if policy == "single" else width
    names = list(per_pair)
    tables = {p: band_table(s, y, w) for p, (s, y) in per_pair.items()}
    per_layer = {p: band_table(s, y, 1) for p, (s, y) in per_pair.items()}
    table = {
        "layers": list(layers),
        "width": w,
        "per_layer": {
            p: {"balanced_accuracy": ba.tolist(), "separation": sep.tolist()} for p, (ba, sep) in per_layer.items()
        },
        "bands": {p: {"balanced_accuracy": ba.tolist(), "separation": sep.tolist()} for p, (ba, sep) in tables.items()},
    }
    band = lambda i: [layers[j] for j in range(i, i + w)]  # noqa: E731
    if policy == "per-pair":
        return {p: band(_best(*tables[p])) for p in names}, table
    mean_ba = np.mean([tables[p][0] for p in names], axis=0)
    mean_sep = np.mean([tables[p][1] for p in names], axis=0)
    if policy in ("single", "band"):
        i = _best(mean_ba, mean_sep)
    else:
        votes = np.zeros(len(mean_ba), dtype=int)
        for p in names:
            votes[_best(*tables[p])] += 1
        table["votes"] = votes.tolist()
        i = min(range(len(votes)), key=lambda j: (-votes[j], -_r(mean_ba[j]), -_r(mean_sep[j]), j))
    return {p: band(i) for p in names}, table
