"""The report section "What the model adds": per pair, the probe beside what the words alone reach (lexical
baseline), what an untrained network of the same shape reaches (random-init), chance (shuffled labels) and the
out-of-domain texts, with the paired intervals of the differences, and one sentence per pair saying which
differences are outside the noise; then the contrast split (texts whose words point to the other side): the probe
against the words there, with a figure and a sentence per pair."""

from __future__ import annotations

import numpy as np

from .common import Run
from .figures import fig_contrast

__all__ = ["section_model_adds", "adds_sentence", "contrast_sentence"]


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


def _spread(seeds: dict | None) -> str:
    """``min-max`` of the random-init balanced accuracy over seeds (n/a for one seed)."""
    if not seeds or len(seeds["balanced_accuracy"]) < 2:
        return "n/a"
    return f"{seeds['min']:.3f}-{seeds['max']:.3f} ({len(seeds['balanced_accuracy'])} seeds)"


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


def contrast_sentence(pair: str, entry: dict) -> str:
    """One sentence on a pair's contrast texts: whether the probe is fooled (interval below or spanning chance) and
    whether it reads them better than the words alone (interval of probe - lexical above 0)."""
    ba = entry["balanced_accuracy"]
    v, (lo, hi) = ba["value"], ba["ci95"]
    if lo > 0.5:
        probe = f"reads the meaning over the words ({v:.3f}, interval [{lo:.3f}, {hi:.3f}] above chance)"
    elif hi < 0.5:
        probe = f"is fooled by the words ({v:.3f}, interval [{lo:.3f}, {hi:.3f}] below chance)"
    else:
        probe = f"is at chance ({v:.3f}, interval [{lo:.3f}, {hi:.3f}] spans 0.5)"
    lex = entry.get("lexical")
    if not lex:
        return f"{pair}: on contrast texts the probe {probe}."
    d, (dlo, dhi) = lex["probe_minus"]["value"], lex["probe_minus"]["ci95"]
    if dlo > 0:
        rel = f"it beats the words alone ({lex['balanced_accuracy']['value']:.3f}) by {d:+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
    elif dhi < 0:
        rel = f"it is below the words alone ({lex['balanced_accuracy']['value']:.3f}) by {-d:.3f}"
    else:
        rel = f"it cannot be told apart from the words alone ({d:+.3f}, interval [{dlo:+.3f}, {dhi:+.3f}] spans 0)"
    return f"{pair}: on contrast texts the probe {probe}; {rel}."


def section_model_adds(doc, runs: list[Run]) -> None:
    """Add the section (skipped when no run has the lexical, random-init or contrast control)."""
    runs = [r for r in runs if {"lexical", "random_init", "contrast"} & set(r.metrics.get("controls", {}))]
    if not runs:
        return
    doc.h2("What the model adds", "adds")
    doc.p(
        "Balanced accuracy on the held-out test split, with 95% intervals. Lexical: TF-IDF word 1-2-grams and "
        "logistic regression on the same train split (C chosen on val). Random-init: the same architecture and "
        "tokenizer with freshly initialised weights, through the same pipeline. Shuffled: the probe fitted on "
        "permuted labels (mean over seeds). Differences are paired: the same bootstrap resamples of the test texts "
        "for both classifiers. Over refits: probe and lexical baseline refitted on bootstrap resamples of train "
        "(layers, calibration and C chosen again on val), each refit's difference resampled over test texts, so "
        "the interval holds the uncertainty of the fits as well as of the test texts; its one-sided p is "
        "Holm-corrected across the pairs. Random-init over seeds: the range over freshly initialised models "
        "(--random-init-seeds). These controls are evidence: each can come out against the probe."
    )
    for r in runs:
        c = r.metrics["controls"]
        if len(runs) > 1:
            doc.h3(r.label)
        rows = []
        for pair in r.names:
            sh = (c.get("shuffled_labels") or {}).get("balanced_accuracy", {}).get(pair)
            ood = c.get("out_of_domain", {}).get(pair)
            rf = c.get("refits", {}).get(pair)
            seeds = c.get("random_init", {}).get("across_seeds", {}).get(pair)
            rows.append(
                [
                    pair,
                    _ci(r.metrics["pairs_test"][pair]["balanced_accuracy"]),
                    _ci(c.get("lexical", {}).get(pair, {}).get("balanced_accuracy")),
                    _ci(c.get("random_init", {}).get(pair, {}).get("balanced_accuracy")),
                    f"{np.mean(sh):.3f}" if sh else "n/a",
                    _diff(c.get("lexical", {}).get(pair, {}).get("probe_minus")),
                    _diff(c.get("random_init", {}).get(pair, {}).get("probe_minus")),
                    _refit(rf),
                    _spread(seeds),
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
                "probe - lexical over refits",
                "random-init over seeds",
                "probe, out-of-domain",
            ],
            rows,
        )
        for pair in r.names:
            doc.p(adds_sentence(pair, c))
    _contrast(doc, [r for r in runs if r.metrics["controls"].get("contrast")])


def _refit(rf: dict | None) -> str:
    """Probe - lexical over refits with its interval and Holm p, or n/a."""
    return f"{_diff(rf)}, Holm p {rf['p_holm']:.2g}" if rf and rf.get("ci95") else "n/a"


def _contrast(doc, runs: list[Run]) -> None:
    """The contrast subsection: a paragraph, the figure, one table over every run, a sentence per pair."""
    if not runs:
        return
    doc.h3("Meaning or words: the contrast split")
    doc.p(
        "On ordinary texts the words and the meaning agree, so the test split cannot tell a probe that reads "
        "meaning from one that reads words. Contrast texts are written so that the vocabulary points to the other "
        "side while the protagonist's feeling is unambiguous (a sad person at a wedding full of laughter): a bag "
        "of words is fooled by construction (below 0.5), an instrument that reads meaning is not. Probe and "
        "lexical baseline are read on the same contrast texts; intervals as on test, but resampled by side only "
        "(the two sides of a contrast split are written apart, not as matched scenes); over refits: probe and "
        "baseline refitted on bootstrap resamples of train and read on the contrast texts (--refits). A probe "
        "fitted with --augment contrast also saw each pair's contrast_train texts (never the contrast texts it "
        "is read on); so did its lexical baseline."
    )
    doc.figure(
        "contrast.png",
        fig_contrast(runs),
        "Per model and pair: balanced accuracy of the probe (blue) and of the lexical baseline (orange) on the "
        "test split (solid) and on the contrast split (light), with 95% intervals; dashed: chance.",
    )
    rows = []
    for r in runs:
        c = r.metrics["controls"]["contrast"]
        fitted = "train + contrast_train" if r.metrics.get("augment") else "train"
        for pair in r.names:
            e = c.get(pair)
            if not e:
                continue
            rows.append(
                [
                    r.label,
                    fitted,
                    pair,
                    str(e["n_left"] + e["n_right"]),
                    _ci(r.metrics["pairs_test"][pair]["balanced_accuracy"]),
                    _ci(e["balanced_accuracy"]),
                    _ci(e.get("lexical", {}).get("balanced_accuracy")),
                    _diff(e.get("lexical", {}).get("probe_minus")),
                    _refit(r.metrics["controls"].get("refits", {}).get("contrast", {}).get(pair)),
                    _ci(e.get("random_init", {}).get("balanced_accuracy")),
                ]
            )
    doc.table(
        [
            "model",
            "fitted on",
            "pair",
            "contrast texts",
            "probe, test",
            "probe, contrast",
            "lexical, contrast",
            "probe - lexical, contrast",
            "over refits, Holm p",
            "random-init, contrast",
        ],
        rows,
    )
    for r in runs:
        c = r.metrics["controls"]["contrast"]
        for pair in r.names:
            if c.get(pair):
                doc.p((f"{r.label}, " if len(runs) > 1 else "") + contrast_sentence(pair, c[pair]))
