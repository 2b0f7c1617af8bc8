"""The data check (:func:`emofast.data.check.check_dataset`) as Markdown, and the largest cue AUROC of each cue
family per split (:func:`family_max`), which the CLI prints and the dataset card states.

Example:
    >>> from emofast.data.check import check_dataset   # doctest: +SKIP
    >>> print(markdown(check_dataset())[:40])          # doctest: +SKIP
    # Data check: bundled:emotions
"""

from __future__ import annotations

from .cues import CUES, STYLE_CUES

__all__ = ["markdown", "family_max", "FAMILIES"]

#: Cue families, in the order the check prints them.
FAMILIES = ("style", "shape", "words", "label_words", "length")


def family_max(split_report: dict) -> dict:
    """The largest AUROC of each cue family in one split's check: ``{"style", "shape", "words", "label_words",
    "length"}`` (label words ``None`` on a contrast split, where they point the other way by design)."""
    a = split_report["auroc"]
    return {
        "style": max(a[c] for c in (*STYLE_CUES, "first_person")),
        "shape": max(split_report["shape_auroc"].values()),
        "words": max(d["auroc"] for d in split_report["words"].values()),
        "label_words": None if split_report.get("label_words_by_design") else a["label_words"],
        "length": a["length"],
    }


def _argmax(d: dict) -> str:
    k = max(d, key=d.get)
    return f"{d[k]:.2f} ({k})"


def _f(v, fmt=".3f") -> str:
    return "–" if v is None else format(v, fmt)


def markdown(report: dict) -> str:
    """The check as Markdown: per pair, the largest cue AUROC of each family per split, every style cue's AUROC,
    the cue rates, line pairing, the lexical baseline on every split it is evaluated on; the neutral sets; the
    warnings."""
    out = [f"# Data check: {report['root']}", ""]
    for name, e in report["pairs"].items():
        splits = list(e["splits"])
        sp = e["splits"]
        out += [
            f"## {name}",
            "",
            "| split | texts | style | sentence shape | single word | label words | length |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for s in splits:
            sd = sp[s]
            L, R = list(sd["texts"])
            fm = family_max(sd)
            words = {w: d["auroc"] for w, d in sd["words"].items()}
            style = {c: sd["auroc"][c] for c in (*STYLE_CUES, "first_person")}
            out.append(
                f"| {s} | {sd['texts'][L]} + {sd['texts'][R]} | {_argmax(style)} | {_argmax(sd['shape_auroc'])} | "
                f"{_argmax(words)} | {_f(fm['label_words'], '.2f')} | {fm['length']:.2f} |"
            )
        out += [
            "",
            "| split | " + " | ".join(f"{c} rate (L / R)" for c in CUES) + " | sentences (L / R) |",
            "|---|" + "---:|" * (len(CUES) + 1),
        ]
        for s in splits:
            sd = sp[s]
            L, R = list(sd["texts"])
            rates = " | ".join(f"{sd['rates'][c][L]:.0%} / {sd['rates'][c][R]:.0%}" for c in CUES)
            ms = sd["mean_sentences"]
            out.append(f"| {s} | {rates} | {ms[L]:.1f} / {ms[R]:.1f} |")
        words = list(next(iter(sp.values()))["words"])
        out += [
            "",
            "Single words, texts with the word (L / R):",
            "",
            "| split | " + " | ".join(words) + " |",
            "|---|" + "---:|" * len(words),
        ]
        for s in splits:
            wd = sp[s]["words"]
            out.append(f"| {s} | " + " | ".join(f"{wd[w]['n_left']} / {wd[w]['n_right']}" for w in words) + " |")
        lx = e["lexical"]
        evals = [s for s in ("test", "ood", "contrast", "contrast_train") if f"{s}_balanced_accuracy" in lx]
        out += [
            "",
            f"Lexical baseline (fitted on train, C={lx['C']:g} chosen on val): "
            + "; ".join(
                f"{s} balanced accuracy {lx[f'{s}_balanced_accuracy']:.3f}, AUROC {lx[f'{s}_auroc']:.3f}" for s in evals
            )
            + ".",
        ]
        if "test" in e["pairing"]:
            pr = e["pairing"]["test"]
            out.append(
                f"Line pairing (test): word Jaccard {pr['matched_jaccard']:.2f} for matched lines, "
                f"{pr['random_jaccard']:.2f} for random ones."
            )
        broken = [(s, b) for s, pr in e["pairing"].items() for b in pr["broken_lines"]]
        out.append(f"Broken line pairs: {len(broken)}.")
        if "contrast" in e:
            c = e["contrast"]
            out.append(
                f"Contrast texts using a label word of their own side: {len(c['own_label_word_texts'])}; with the "
                "other side's label words (for other people or negated): "
                + ", ".join(
                    f"{s} " + " / ".join(f"{v:.0%}" for v in r.values()) for s, r in c["other_label_word_rate"].items()
                )
                + "."
            )
        out.append("")
    for key in ("neutral", "neutral_ood"):
        if key in report:
            n = report[key]
            out += [
                f"## {key}",
                "",
                f"{n['texts']} texts, {n['mean_words']:.1f} words on average (pair texts {n['pair_mean_words']:.1f}); "
                f"length AUROC against the pair texts {n['length_auroc']:.2f}, TF-IDF separability (out-of-fold "
                f"AUROC) {n['tfidf_auroc']:.2f}, balanced accuracy {n['tfidf_balanced_accuracy']:.2f}; cue rates: "
                + ", ".join(f"{k} {v:.0%}" for k, v in n["rates"].items())
                + ".",
                "",
            ]
    out += ["## Warnings", ""] + ([f"- {w}" for w in report["warnings"]] or ["None."]) + [""]
    return "\n".join(out)
