"""The report section "What the model adds": per pair, the probe beside what the words alone reach (lexical
baseline), what an untrained network of the same shape reaches (random-init), chance (shuffled labels) and the
out-of-domain texts, with the paired intervals of the differences, and one sentence per pair saying which
differences are outside the noise."""

from __future__ import annotations

import numpy as np

from .common import Run

__all__ = ["section_model_adds", "adds_sentence"]


def _ci(e: dict | None) -> str:
    if not e:
        return "n/a"
    lo, hi = e["ci95"]
    return f"{e['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def _diff(e: dict | None) -> str:
    if not e:
        return "n/a"
    lo, hi = e["ci95"]
    return f"{e['value']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def adds_sentence(pair: str, controls: dict) -> str:
    """One sentence: which of probe - lexical and probe - random-init are outside the noise (interval excludes 0)."""
    parts = []
    for key, what in (("lexical", "the words alone"), ("random_init", "an untrained network of the same shape")):
        e = controls.get(key, {}).get(pair)
        if not e:
            continue
        v, (lo, hi) = e["probe_minus"]["value"], e["probe_minus"]["ci95"]
        if lo > 0:
            parts.append(f"beats {what} by {v:+.3f} (interval above 0)")
        elif hi < 0:
            parts.append(f"is below {what} by {-v:.3f} (interval below 0)")
        else:
            parts.append(f"cannot be told apart from {what} ({v:+.3f}, interval [{lo:+.3f}, {hi:+.3f}] spans 0)")
    if not parts:
        return f"{pair}: no lexical or random-init control in this run."
    return f"{pair}: the probe " + "; it ".join(parts) + "."


def section_model_adds(doc, runs: list[Run]) -> None:
    """Add the section (skipped when no run has the lexical or random-init control)."""
    runs = [r for r in runs if {"lexical", "random_init"} & set(r.metrics.get("controls", {}))]
    if not runs:
        return
    doc.h2("What the model adds", "adds")
    doc.p(
        "Balanced accuracy on the held-out test split, with 95% intervals. Lexical: TF-IDF word 1-2-grams and "
        "logistic regression on the same train split (C chosen on val). Random-init: the same architecture and "
        "tokenizer with freshly initialised weights, through the same pipeline. Shuffled: the probe fitted on "
        "permuted labels (mean over seeds). Differences are paired: the same bootstrap resamples of the test texts "
        "for both classifiers. These controls are evidence: each can come out against the probe."
    )
    for r in runs:
        c = r.metrics["controls"]
        if len(runs) > 1:
            doc.h3(r.label)
        rows = []
        for pair in r.names:
            sh = (c.get("shuffled_labels") or {}).get("balanced_accuracy", {}).get(pair)
            ood = c.get("out_of_domain", {}).get(pair)
            rows.append(
                [
                    pair,
                    _ci(r.metrics["pairs_test"][pair]["balanced_accuracy"]),
                    _ci(c.get("lexical", {}).get(pair, {}).get("balanced_accuracy")),
                    _ci(c.get("random_init", {}).get(pair, {}).get("balanced_accuracy")),
                    f"{np.mean(sh):.3f}" if sh else "n/a",
                    _diff(c.get("lexical", {}).get(pair, {}).get("probe_minus")),
                    _diff(c.get("random_init", {}).get(pair, {}).get("probe_minus")),
                    _ci(ood["balanced_accuracy"]) if ood else "n/a",
                ]
            )
        doc.table(
            [
                "pair",
                "probe",
                "lexical",
                "random-init",
                "shuffled",
                "probe - lexical",
                "probe - random-init",
                "probe, out-of-domain",
            ],
            rows,
        )
        for pair in r.names:
            doc.p(adds_sentence(pair, c))
