"""The statistics of ``emofast run`` once every text is projected: scales, selection and calibration on val,
held-out metrics, the permutation test per pair (Holm-corrected), the intervals of every difference the reports
state (train - test, centred - cosine), the software self-test (polarity swap) and the shuffled-label baselines.

What is evidence and what is a self-test (``metrics.json["controls"]["kinds"]``): the neutral texts, the
shuffled-label baselines, centred against cosine, train against test, the lexical, random-init and out-of-domain
controls can each come out against the probe; the in-run polarity swap cannot (negated directions, the same
midpoints, mirrored resamples and a symmetric calibration make it zero by construction): it checks the software.
"""

from __future__ import annotations

import time

import numpy as np

from ..probe.evaluation import (
    cross_reading,
    direction_cosines,
    evaluate_split,
    mirror_deviation,
    neutral_readings,
    per_layer_curves,
    reliability_curves,
    split_outputs,
)
from ..probe.paired import SCORES, PairedProbe, SplitIndex
from ..probe.selection import layer_scale
from ..probe.stats import balanced_accuracy, holm, paired_difference

__all__ = ["CONTROL_KINDS", "evaluate_run", "difference_columns"]

#: Which controls are evidence (they can come out against the probe) and which are software self-tests.
CONTROL_KINDS = {
    "neutral": "evidence",
    "shuffled_labels": "evidence",
    "scoring": "evidence",
    "centered_minus_cosine": "evidence",
    "train_test": "evidence",
    "lexical": "evidence",
    "random_init": "evidence",
    "out_of_domain": "evidence",
    "refits": "evidence",
    "contrast": "evidence",
    "polarity_swap": "self-test",
}


def evaluate_run(
    probe: PairedProbe,
    raw: dict,
    baselines: list,
    base_raw: list,
    offsets: dict,
    splits: dict,
    data,
    *,
    policy,
    width,
    calibration,
    val_use="halves",
    n_boot=1000,
    n_perm=10_000,
    seed=0,
    train_matched=None,
) -> tuple[dict, dict]:
    """Every statistic of a run.

    Args:
        raw: ``{kind: [N_all, nL, P]}`` raw per-layer scores of every text (train, val, test, neutral at
            ``offsets``) under each scoring; base_raw: the same for each shuffled-label baseline (its own kind).
        train_matched: False when train is not line-matched throughout (``--augment contrast`` adds texts whose
            sides were written apart): its intervals then never resample by scene; None detects it from the ids.

    Returns:
        ``(metrics, scores)``: the metrics, and ``{kind: [N_all, nL, P]}`` scores on each kind's train scale.
    """
    scales = {k: layer_scale(raw[k][offsets["train"]], splits["train"]) for k in raw}
    probe.scales = scales[probe.score_kind]
    scores = {k: raw[k] / scales[k].T[None] for k in raw}
    sel = {"policy": policy, "width": width, "calibration": calibration, "val_use": val_use}
    metrics = _evaluate(probe, scores, scales, offsets, splits, data, sel, n_boot, n_perm, seed, train_matched)
    if baselines:
        t = time.perf_counter()
        metrics["controls"]["shuffled_labels"] = _shuffled(baselines, base_raw, offsets, splits, sel, metrics, seed)
        metrics["controls"]["shuffled_labels"]["seconds"] = time.perf_counter() - t
    metrics["controls"]["kinds"] = dict(CONTROL_KINDS)
    return metrics, scores


def _evaluate(probe, scores, scales, offsets, splits, data, sel, n_boot, n_perm, seed, train_matched=None) -> dict:
    main, layers = probe.score_kind, probe.layers
    val_s, test_s = scores[main][offsets["val"]], scores[main][offsets["test"]]
    probe.select_and_calibrate(val_s, splits["val"], **sel)
    boot = {"n_boot": n_boot, "seed": seed}
    test = evaluate_split(probe, test_s, layers, splits["test"], n_perm=n_perm, **boot)
    train_s = scores[main][offsets["train"]]
    train = evaluate_split(
        probe, train_s, layers, splits["train"], split="train", n_perm=0, matched=train_matched, **boot
    )
    for name, p_holm in zip(probe.names, holm([test[n]["permutation_p"] for n in probe.names])):
        test[name]["permutation_p_holm"] = p_holm
    outputs = split_outputs(probe, test_s, layers, splits["test"])
    metrics = {
        "pairs_test": test,
        "pairs_train": train,
        "outputs_test": outputs,
        "selection": probe.fit_report["selection"],
        "calibration": probe.fit_report["calibration"],
        "curves": {
            s: per_layer_curves(scores[main][offsets[s]], layers, splits[s], probe.names)
            for s in ("train", "val", "test")
        },
        "reliability_test": reliability_curves(probe, test_s, layers, splits["test"]),
        "cross_reading_test": cross_reading(probe, test_s, layers, splits["test"]),
        "direction_cosines": direction_cosines(probe),
    }
    neutral_ids = [i for i, _ in data.neutral]
    if data.neutral:
        metrics["neutral"] = neutral_readings(probe, scores[main][offsets["neutral"]], layers, ids=neutral_ids, **boot)
    bas = [test[n]["balanced_accuracy"]["value"] for n in probe.names]
    # Descriptive only: the train balanced accuracy is in-sample (1.0 for LDA on separable rows), not a binomial
    # estimate of anything, so a MOVER interval around train - test would claim precision it does not have.
    gaps = {
        n: {
            "value": float(train[n]["balanced_accuracy"]["value"] - test[n]["balanced_accuracy"]["value"]),
            "train": float(train[n]["balanced_accuracy"]["value"]),
            "test": float(test[n]["balanced_accuracy"]["value"]),
        }
        for n in probe.names
    }
    metrics["summary"] = {
        "mean_balanced_accuracy": float(np.mean(bas)),
        "min_balanced_accuracy": float(np.min(bas)),
        "mean_auroc": float(np.mean([test[n]["auroc"]["value"] for n in probe.names])),
        "mean_train_test_gap": float(np.mean([g["value"] for g in gaps.values()])),
        "chosen_layers": probe.chosen,
        "val_use": sel["val_use"],
    }
    # Self-test: the polarity swap, recomputed from mirrored scores (directions negated => scores negated).
    swapped = PairedProbe(
        [(b, a) for a, b in probe.pairs],
        layers,
        -probe.directions,
        probe.midpoints,
        score_kind=main,
        meta=probe.meta,
        scales=probe.scales,
    )
    sw_splits = {s: SplitIndex(ix.texts, ix.ids, ix.pair, 1 - ix.y) for s, ix in splits.items()}
    swapped.select_and_calibrate(-val_s, sw_splits["val"], **sel)
    sw_test = evaluate_split(swapped, -test_s, layers, sw_splits["test"], n_perm=0, **boot)
    metrics["controls"] = {
        "polarity_swap": {
            "kind": "self-test",
            "max_abs_deviation": mirror_deviation(test, sw_test, probe.names, swapped.names),
            "same_layers": all(probe.chosen[a] == swapped.chosen[b] for a, b in zip(probe.names, swapped.names)),
        },
        "train_test": {
            "kind": "evidence",
            "interval": None,
            "note": "descriptive: the train accuracy is in-sample (the directions were fitted on those texts)",
            **gaps,
        },
    }
    side, diff = _scorings(probe, scores, scales, offsets, splits, data, sel, boot)
    metrics["controls"]["scoring"] = side
    metrics["controls"]["centered_minus_cosine"] = diff
    probe.select_and_calibrate(val_s, splits["val"], **sel)  # leave the probe as fitted by the main scoring
    return metrics


def _scorings(probe, scores, scales, offsets, splits, data, sel, boot) -> tuple[dict, dict]:
    """Both scorings side by side (each with its own scale, layers and calibration) and centred - cosine."""
    side, decisions = {}, {}
    test = splits["test"]
    neutral_ids = [i for i, _ in data.neutral]
    for kind in SCORES:
        alt = PairedProbe(
            probe.pairs,
            probe.layers,
            probe.directions,
            probe.midpoints,
            score_kind=kind,
            meta=probe.meta,
            scales=scales[kind],
        )
        alt.select_and_calibrate(scores[kind][offsets["val"]], splits["val"], **sel)
        alt_test = evaluate_split(alt, scores[kind][offsets["test"]], probe.layers, test, n_perm=0, **boot)
        decisions[kind] = split_outputs(alt, scores[kind][offsets["test"]], probe.layers, test)
        entry = {
            "mean_balanced_accuracy": float(np.mean([alt_test[n]["balanced_accuracy"]["value"] for n in probe.names])),
            "per_pair": {n: alt_test[n]["balanced_accuracy"] for n in probe.names},
            "chosen_layers": alt.chosen,
        }
        if data.neutral:
            alt_neutral = neutral_readings(alt, scores[kind][offsets["neutral"]], probe.layers, ids=neutral_ids, **boot)
            entry["neutral_mean_p_left"] = {n: alt_neutral[n]["mean_p_left"]["value"] for n in probe.names}
        side[kind] = entry
    diff = {}
    for n in probe.names:
        a, b = decisions["centered"][n], decisions["cosine"][n]
        diff[n] = paired_difference(
            np.array(a["y"]),
            np.array(a["p_left"]) - 0.5,
            np.array(b["p_left"]) - 0.5,
            ids=a["ids"],
            n_boot=boot["n_boot"],
            seed=boot["seed"],
        )
    return side, diff


def _shuffled(baselines, base_raw, offsets, splits, sel, metrics, seed) -> dict:
    """The shuffled-label baselines, fitted, scaled, selected and calibrated exactly like the probe: their
    held-out balanced accuracies (chance level of the whole pipeline), and where the probe stands among them."""
    per_seed = []
    test = splits["test"]
    for b, raw in zip(baselines, base_raw):
        b.scales = layer_scale(raw[offsets["train"]], splits["train"])
        sc = raw / b.scales.T[None]
        b.select_and_calibrate(sc[offsets["val"]], splits["val"], **sel)
        band = b.band_scores(sc[offsets["test"]], b.layers)
        p_left = b.probabilities(band)
        row = {}
        for p, n in enumerate(b.names):
            idx = test.of_pair(p)
            y = test.y[idx]
            row[n] = (balanced_accuracy(y, p_left[idx, p] > 0.5), balanced_accuracy(y, band[idx, p] > 0))
        per_seed.append(row)
    names = baselines[0].names
    out = {
        "kind": "evidence",
        "seeds": [b.meta["shuffled_labels_seed"] for b in baselines],
        "balanced_accuracy": {n: [s[n][0] for s in per_seed] for n in names},
        "sign_accuracy": {n: [s[n][1] for s in per_seed] for n in names},
        "mean_balanced_accuracy": float(np.mean([s[n][0] for s in per_seed for n in names])),
        "mean_sign_accuracy": float(np.mean([s[n][1] for s in per_seed for n in names])),
        "distribution": {},
    }
    for n in names:
        vals = np.array(out["balanced_accuracy"][n])
        probe_ba = metrics["pairs_test"][n]["balanced_accuracy"]["value"]
        out["distribution"][n] = {
            "mean": float(vals.mean()),
            "q05": float(np.quantile(vals, 0.05)),
            "median": float(np.median(vals)),
            "q95": float(np.quantile(vals, 0.95)),
            "max": float(vals.max()),
            # where the probe stands: (1 + #shuffled >= probe) / (1 + K), the pipeline-level p-value
            "p_probe": float((1 + np.sum(vals >= probe_ba - 1e-12)) / (1 + len(vals))),
        }
    return out


def difference_columns(metrics: dict, name: str) -> dict:
    """The ``pairs.csv`` columns of one pair's tests and differences (each difference with its interval)."""
    t, c = metrics["pairs_test"][name], metrics["controls"]
    row = {"permutation_p": t.get("permutation_p"), "permutation_p_holm": t.get("permutation_p_holm")}
    gap = c.get("train_test", {}).get(name)
    if gap:
        row["train_minus_test"] = gap["value"]
    d = c.get("centered_minus_cosine", {}).get(name)
    if d:
        row["centered_minus_cosine"] = d["value"]
        row["centered_minus_cosine_lo"], row["centered_minus_cosine_hi"] = d["ci95"]
    rf = c.get("refits", {}).get(name)
    if rf and rf.get("ci95"):
        row["probe_minus_lexical_refit"] = rf["value"]
        row["probe_minus_lexical_refit_lo"], row["probe_minus_lexical_refit_hi"] = rf["ci95"]
        row["probe_minus_lexical_refit_p_holm"] = rf["p_holm"]
    rc = c.get("refits", {}).get("contrast", {}).get(name)
    if rc:
        row["probe_minus_lexical_contrast_refit"] = rc["value"]
        row["probe_minus_lexical_contrast_refit_lo"], row["probe_minus_lexical_contrast_refit_hi"] = rc["ci95"]
        row["probe_minus_lexical_contrast_refit_p_holm"] = rc["p_holm"]
    sh = c.get("shuffled_labels", {}).get("distribution", {}).get(name)
    if sh:
        row["shuffled_balanced_accuracy_mean"] = sh["mean"]
        row["shuffled_balanced_accuracy_q95"] = sh["q95"]
        row["shuffled_p_probe"] = sh["p_probe"]
    return row
