"""The contrast split of ``emofast run``: texts whose words point to the other side while the meaning does not.

A bag of words is fooled by such texts by construction; an instrument that reads meaning is not. Where a pair has a
``contrast`` split, every run reads it with the probe (its rows come from the run's one model pass, beside train,
val and test) and, in :mod:`emofast.commands.controls`, with the lexical baseline and the random-init model
(``metrics.json["controls"]["contrast"]``).

The two sides of a contrast split are written apart: line ``k`` of the left file does not describe the same scene
as line ``k`` of the right file, even when the ids look alike (``sad-contrast-001`` / ``happy-contrast-001``). So
no statistic here resamples by scene: balanced accuracy gets the MOVER interval of independent sides (as test), the
AUROC and every paired difference the bootstrap stratified by side.

``--augment contrast`` (:func:`augment_train`) adds each pair's ``contrast_train`` texts to its train split, so
that the probe's directions, the layer scale, the shuffled-label baselines, the lexical baseline and the
random-init control are all fitted on them; both fits are then read on the ``contrast`` part (and test).

Example:
    >>> from emofast.data import load_pairs
    >>> split_index(load_pairs(), "no-such-split") is None
    True
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..data.pairs import DataError, Pair, PairedDataset
from ..probe.paired import PairedProbe, SplitIndex
from ..probe.stats import auroc, balanced_accuracy_ci, bootstrap_ci

__all__ = [
    "CONTRAST",
    "CONTRAST_TRAIN",
    "AUGMENTS",
    "split_index",
    "augment_train",
    "probe_on_contrast",
    "contrast_columns",
]

CONTRAST = "contrast"
CONTRAST_TRAIN = "contrast_train"
#: What ``--augment`` accepts: ``contrast`` adds every pair's ``contrast_train`` split to its train split.
AUGMENTS = ("contrast",)


def split_index(data: PairedDataset, split: str) -> SplitIndex | None:
    """The texts of ``split`` of every pair that has it, as a :class:`SplitIndex` whose ``pair`` numbers are the
    positions in ``data.pairs`` (pairs without the split get no rows); None when no pair has it.

    Example:
        >>> from emofast.data import load_pairs
        >>> ix = split_index(load_pairs(), "test")
        >>> len(ix.texts) == len(ix.y) and set(ix.y.tolist()) == {0, 1}
        True
    """
    if not any(split in p.texts for p in data.pairs):
        return None
    return SplitIndex.of(data, split, skip_missing=True)


def augment_train(data: PairedDataset, augment: str | None) -> tuple[PairedDataset, dict | None]:
    """``(data, record)``: with ``augment="contrast"``, every pair's train split followed by its
    ``contrast_train`` texts (the other splits unchanged), and what was added (``metrics.json["augment"]``);
    with ``augment=None``, ``data`` as it is and None.

    Raises:
        ValueError: an unknown ``augment``.
        DataError: a pair without a ``contrast_train`` split (names the pair and where the files belong).

    Example:
        >>> from emofast.data import load_pairs
        >>> augment_train(load_pairs(), None)[1] is None
        True
    """
    if augment in (None, "", "none"):
        return data, None
    if augment not in AUGMENTS:
        raise ValueError(f"--augment {augment!r}: expected one of {', '.join(AUGMENTS)}")
    missing = [p for p in data.pairs if CONTRAST_TRAIN not in p.texts]
    if missing:
        p = missing[0]
        raise DataError(
            f"{data.root}: --augment contrast needs a {CONTRAST_TRAIN} split in every pair; "
            f"{', '.join(q.name for q in missing)} ha{'s' if len(missing) == 1 else 've'} none (expected "
            f"{data.root}/{p.name}/{CONTRAST_TRAIN}/{p.left}.jsonl and {p.right}.jsonl)"
        )
    pairs, counts = [], {}
    for p in data.pairs:
        texts = dict(p.texts)
        texts["train"] = {s: list(p.texts["train"][s]) + list(p.texts[CONTRAST_TRAIN][s]) for s in (p.left, p.right)}
        pairs.append(Pair(p.left, p.right, texts, p.files))
        counts[p.name] = {
            s: {side: len(p.texts[s][side]) for side in (p.left, p.right)} for s in ("train", CONTRAST_TRAIN)
        }
    record = {
        "augment": augment,
        "train_splits": ["train", CONTRAST_TRAIN],
        "fitted_on_it": ["directions", "layer scale", "shuffled labels", "lexical", "random-init"],
        "counts": counts,
    }
    return dataclasses.replace(data, pairs=pairs), record


def probe_on_contrast(
    probe: PairedProbe, layer_scores: np.ndarray, index: SplitIndex, *, n_boot: int = 1000, seed: int = 0
) -> tuple[dict, np.ndarray, np.ndarray]:
    """The probe's reading of the contrast texts, per pair that has them.

    Args:
        layer_scores: ``[N, len(probe.layers), P]`` the texts' per-layer scores on the probe's scale.
        index: :func:`split_index` of the contrast split.

    Returns:
        ``(entries, band [N, P], p_left [N, P])``; ``entries[pair]`` holds ``n_left``, ``n_right``,
        ``balanced_accuracy`` (of ``p_left > 0.5``, MOVER with independent sides), ``auroc`` (BCa,
        stratified bootstrap) and ``resample: "stratified"``: never by scene (the sides are not matched).
    """
    band = probe.band_scores(layer_scores, probe.layers)
    p_left = probe.probabilities(band)
    out = {}
    for p, name in enumerate(probe.names):
        idx = index.of_pair(p)
        if len(idx) == 0:
            continue
        y, ids = index.y[idx], [index.ids[i] for i in idx]
        if y.min() == y.max():
            raise DataError(f"pair {name}: the contrast split needs texts of both sides")
        bal = balanced_accuracy_ci(y, p_left[idx, p] > 0.5, scenes=None)
        auc = bootstrap_ci(auroc, y, band[idx, p], n_boot=n_boot, seed=seed, keys=ids, scenes=None)
        out[name] = {
            "n_left": int(y.sum()),
            "n_right": int(len(y) - y.sum()),
            "balanced_accuracy": {"value": bal[0], "ci95": [bal[1], bal[2]]},
            "auroc": {"value": auc[0], "ci95": [auc[1], auc[2]]},
            "resample": "stratified",
        }
    return out, band, p_left


def contrast_columns(metrics: dict, name: str) -> dict:
    """The contrast columns of one ``pairs.csv`` row (none when the pair has no contrast split)."""
    e = metrics.get("controls", {}).get(CONTRAST, {}).get(name)
    if not e:
        return {}
    row = {"contrast_n": e["n_left"] + e["n_right"]}
    row["contrast_balanced_accuracy"] = e["balanced_accuracy"]["value"]
    row["contrast_balanced_accuracy_lo"], row["contrast_balanced_accuracy_hi"] = e["balanced_accuracy"]["ci95"]
    row["contrast_auroc"] = e["auroc"]["value"]
    for key in ("lexical", "random_init"):
        if key in e:
            c = e[key]
            row[f"{key}_contrast_balanced_accuracy"] = c["balanced_accuracy"]["value"]
            row[f"{key}_contrast_balanced_accuracy_lo"], row[f"{key}_contrast_balanced_accuracy_hi"] = c[
                "balanced_accuracy"
            ]["ci95"]
            row[f"probe_minus_{key}_contrast"] = c["probe_minus"]["value"]
            row[f"probe_minus_{key}_contrast_lo"], row[f"probe_minus_{key}_contrast_hi"] = c["probe_minus"]["ci95"]
    return row
