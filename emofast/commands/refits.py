"""The refit control of ``emofast run``: does "the probe beats the words" survive fitting both again?

The test-set intervals of probe − lexical hold one fitted probe and one fitted baseline fixed and resample only
the test texts. Here both are refitted on ``B`` bootstrap resamples of the train split (by scene for matched
data): the probe's directions from the resampled train rows (held from the run's one model pass: no new pass),
its layer scale on the resample, its layers chosen and its calibration fitted on val as in the run; the lexical
baseline on the resampled train texts with ``C`` chosen on val. Each refit pair is scored on the same test texts,
and each refit's difference is resampled over test texts (scenes for matched data), so the interval holds both
sources of uncertainty. A one-sided p (probe − lexical <= 0) per pair is Holm-corrected across the run's pairs.

Where the run has a contrast split, the same refits (probe and baseline) are scored on it too, each refit's
difference resampled by side (contrast texts are not matched scenes), with its own Holm correction:
``out["contrast"]``. The contrast split is never in a resample of train (with ``--augment contrast`` only
``contrast_train`` is).
"""

from __future__ import annotations

import time

import numpy as np

from ..data.lexical import LexicalBaseline
from ..probe.directions import logistic, shrinkage_lda
from ..probe.paired import PairedProbe, SplitIndex, fit_rows
from ..probe.resample import train_resamples
from ..probe.selection import layer_scale
from ..probe.stats import balanced_accuracy, balanced_accuracy_rows, holm, resample_indices, scene_keys

__all__ = ["refit_probes", "refit_control", "DEFAULT_REFITS", "TEST_RESAMPLES"]

#: refits per run by default (the issue asks for at least 20)
DEFAULT_REFITS = 20
#: test resamples per refit in the combined interval
TEST_RESAMPLES = 100


def _subset(index: SplitIndex, idx: np.ndarray) -> SplitIndex:
    return SplitIndex([index.texts[i] for i in idx], [index.ids[i] for i in idx], index.pair[idx], index.y[idx])


def refit_probes(probe: PairedProbe, train_rows, train: SplitIndex, n: int, seed: int) -> list:
    """``n`` probes fitted like ``probe`` on bootstrap resamples of the train split.

    Args:
        train_rows: ``[N_train, nL, D]`` rows of the train texts over ``probe.layers`` (train order).
        train: the train :class:`SplitIndex`.

    Returns:
        ``[(PairedProbe, idx)]``: each refit probe (directions and midpoints only) and its resample, an index
        array into the train split.
    """
    method = probe.meta.get("method", "lda")
    fn = {"mean-diff": None, "lda": shrinkage_lda, "logreg": logistic}[method]
    out = []
    for b, idx in enumerate(train_resamples(train, n, seed)):
        d, m = fit_rows(train_rows[idx], _subset(train, idx), train.y[idx], fn)
        meta = {**probe.meta, "refit": b, "refit_seed": seed}
        out.append((PairedProbe(probe.pairs, probe.layers, d, m, score_kind=probe.score_kind, meta=meta), idx))
    return out


def _refit_outputs(rp: PairedProbe, idx, raw, offsets, splits, sel, evals) -> dict:
    """Scale on the resample, choose layers and calibrate on val, then ``p_left`` on each split of ``evals``."""
    rp.scales = layer_scale(raw[offsets["train"]][idx], _subset(splits["train"], idx))
    sc = raw / rp.scales.T[None]
    rp.select_and_calibrate(sc[offsets["val"]], splits["val"], **sel)
    return {s: rp.probabilities(rp.band_scores(sc[offsets[s]], rp.layers)) for s in evals}


def _summary(per: dict, names: list) -> dict:
    """Per pair: mean difference over refits, its interval over refits x resamples, one-sided p and Holm."""
    out, pvals = {}, []
    for name in names:
        if not per[name]["probe"]:
            continue
        d = np.asarray(per[name]["probe"]) - np.asarray(per[name]["lexical"])
        draws = np.concatenate(per[name]["draws"])
        p_one = float((1 + np.sum(draws <= 0)) / (1 + len(draws)))
        pvals.append(p_one)
        out[name] = {
            "value": float(d.mean()),
            "ci95": [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))],
            "refit_only": {
                "sd": float(d.std(ddof=1)) if len(d) > 1 else None,
                "q025": float(np.quantile(d, 0.025)),
                "q975": float(np.quantile(d, 0.975)),
            },
            "p_one_sided": p_one,
            "probe_balanced_accuracy": [float(v) for v in per[name]["probe"]],
            "lexical_balanced_accuracy": [float(v) for v in per[name]["lexical"]],
        }
    for name, ph in zip(list(out), holm(pvals)):
        out[name]["p_holm"] = float(ph)
    return out


def refit_control(
    refits: list,
    raws: list,
    offsets: dict,
    splits: dict,
    data,
    sel: dict,
    *,
    seed: int = 0,
    n_test=TEST_RESAMPLES,
    contrast: SplitIndex | None = None,
) -> dict:
    """Probe − lexical over refits, per pair, on test (and on the contrast split when given).

    Args:
        refits: :func:`refit_probes`' output; raws: each refit's raw per-layer scores ``[N_all, nL, P]`` of every
            text (train, val, test, and ``"contrast"`` when given, at ``offsets``).
        sel: the run's selection settings (``policy``, ``width``, ``calibration``, ``val_use``).
        contrast: the run's contrast :class:`SplitIndex` (rows at ``offsets["contrast"]``), or None.

    Returns:
        ``{"kind", "refits", "test_resamples", "seconds", pair: {...}}``; per pair ``value`` (mean over refits of
        probe − lexical on the whole test split), ``ci95`` (2.5-97.5% over refits × test resamples),
        ``refit_only`` (spread over refits, test fixed), ``p_one_sided``, ``p_holm`` and the refits' balanced
        accuracies; with ``contrast``, ``"contrast": {pair: {...}}`` the same on the contrast split (resampled by
        side; pairs without contrast texts left out; Holm across the pairs it has).

    Example:
        >>> out = refit_control(refits, raws, offsets, splits, data, sel, contrast=cix)   # doctest: +SKIP
        >>> out["sad_vs_happy"]["ci95"], out["contrast"]["sad_vs_happy"]["p_holm"]        # doctest: +SKIP
    """
    t0 = time.perf_counter()
    train, val = splits["train"], splits["val"]
    evals = {"test": splits["test"]}
    if contrast is not None and len(contrast.texts):
        evals["contrast"] = contrast
    names = [p.name for p in data.pairs]
    per = {s: {n: {"probe": [], "lexical": [], "draws": []} for n in names} for s in evals}
    for b, ((rp, idx), raw) in enumerate(zip(refits, raws)):
        p_left = _refit_outputs(rp, idx, raw, offsets, splits, sel, evals)
        for p, name in enumerate(names):
            tr = idx[train.pair[idx] == p]
            va = val.of_pair(p)
            lex = LexicalBaseline.fit(
                [train.texts[i] for i in tr],
                train.y[tr],
                [val.texts[i] for i in va],
                val.y[va],
                seed=seed,
            )
            for s, index in evals.items():
                ti = index.of_pair(p)
                if len(ti) == 0:
                    continue
                y = index.y[ti]
                ours = p_left[s][ti, p] > 0.5
                theirs = lex.scores([index.texts[i] for i in ti]) > 0
                per[s][name]["probe"].append(balanced_accuracy(y, ours))
                per[s][name]["lexical"].append(balanced_accuracy(y, theirs))
                ids = [index.ids[i] for i in ti]
                scenes = scene_keys(ids, y) if s == "test" else None  # contrast sides are written apart
                r = resample_indices(y, n_test, seed + 7919 * (b + 1), keys=ids, scenes=scenes)
                yb = y[r].astype(bool)
                draw = balanced_accuracy_rows(yb, ours[r]) - balanced_accuracy_rows(yb, theirs[r])
                per[s][name]["draws"].append(draw)
    out = {"kind": "evidence", "refits": len(refits), "test_resamples": int(n_test)}
    out.update(_summary(per["test"], names))
    if "contrast" in evals:
        out["contrast"] = _summary(per["contrast"], names)
    out["seconds"] = time.perf_counter() - t0
    return out
