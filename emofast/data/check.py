"""``emofast data check DIR``: can a paired dataset be solved without understanding it?

Per pair, split and side: text count, mean length, the rate of every surface cue (:mod:`emofast.data.cues`) and of
the side's own label words; for each cue the AUROC with which its count alone separates the sides; how strongly
line ``k`` of the left file matches line ``k`` of the right file (word Jaccard, against random line pairs);
near-duplicates across splits (TF-IDF cosine >= 0.5); and the lexical baseline (:mod:`emofast.data.lexical`)
trained on train, evaluated on test. Warns for every cue with AUROC >= 0.65 and every cross-split near-duplicate.

Example:
    >>> report = check_dataset()             # the bundled pairs   # doctest: +SKIP
    >>> report["warnings"]                                          # doctest: +SKIP
    []
"""

from __future__ import annotations

import numpy as np

from .cues import CUES, STYLE_CUES, cue_auroc, cue_counts, label_word_counts
from .lexical import LexicalBaseline
from .pairs import load_pairs

__all__ = ["check_dataset", "check_emotions", "markdown", "WARN_AUROC", "DUP_COSINE"]

WARN_AUROC = 0.65
DUP_COSINE = 0.5


def _jaccard(a: str, b: str) -> float:
    x, y = set(a.lower().split()), set(b.lower().split())
    return len(x & y) / max(1, len(x | y))


def _pairing(left: list[str], right: list[str], seed: int = 0) -> dict:
    n = min(len(left), len(right))
    matched = float(np.mean([_jaccard(left[k], right[k]) for k in range(n)])) if n else float("nan")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n) if n else []
    rand = float(np.mean([_jaccard(left[k], right[perm[k]]) for k in range(n)])) if n else float("nan")
    return {"matched_jaccard": matched, "random_jaccard": rand}


def _near_duplicates(items: list[tuple[str, str, str]]) -> list[dict]:
    """``items``: (split, id, text); pairs from different splits with TF-IDF cosine >= DUP_COSINE."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(items) < 2:
        return []
    m = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform([t for _, _, t in items])
    sim = (m @ m.T).tocoo()
    out = []
    for i, j, v in zip(sim.row, sim.col, sim.data):
        if i < j and v >= DUP_COSINE and items[i][0] != items[j][0]:
            out.append(
                {
                    "split_a": items[i][0],
                    "id_a": items[i][1],
                    "split_b": items[j][0],
                    "id_b": items[j][1],
                    "cosine": round(float(v), 3),
                    "text_a": items[i][2],
                    "text_b": items[j][2],
                }
            )
    return sorted(out, key=lambda d: -d["cosine"])


def check_dataset(root=None, pairs=None, *, seed: int = 0) -> dict:
    """Check a paired dataset (default: the bundled one); see the module docstring. Returns a JSON-able dict."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    data = load_pairs(root, pairs)
    report = {"root": data.source, "pairs": {}, "near_duplicates": [], "warnings": []}
    items = []
    for pair in data.pairs:
        entry = {"splits": {}, "pairing": {}}
        for split, sides in pair.texts.items():
            texts = {side: [t for _, t in rows] for side, rows in sides.items()}
            counts = {side: cue_counts(ts) for side, ts in texts.items()}
            labels = {side: label_word_counts(ts, side) for side, ts in texts.items()}
            L, R = pair.left, pair.right
            s = {
                "texts": {side: len(ts) for side, ts in texts.items()},
                "mean_words": {side: float(np.mean([len(t.split()) for t in ts])) for side, ts in texts.items()},
                "rates": {c: {side: float(np.mean(counts[side][c] > 0)) for side in texts} for c in CUES},
                "auroc": {c: cue_auroc(counts[L][c], counts[R][c]) for c in CUES},
                "label_word_rate": {side: float(np.mean(labels[side] > 0)) for side in texts},
            }
            # a side's own words should not separate the sides either: left's words + right's words, signed
            s["auroc"]["label_words"] = cue_auroc(
                labels[L] - label_word_counts(texts[L], R), labels[R] - label_word_counts(texts[R], L)
            )
            lens = {side: np.array([len(t.split()) for t in ts]) for side, ts in texts.items()}
            s["auroc"]["length"] = cue_auroc(lens[L], lens[R])
            entry["splits"][split] = s
            entry["pairing"][split] = _pairing(texts[L], texts[R], seed)
            for cue, v in s["auroc"].items():
                if cue != "length" and v >= WARN_AUROC:
                    report["warnings"].append(
                        f"{pair.name} {split}: the cue '{cue}' alone separates the sides "
                        f"(AUROC {v:.2f} >= {WARN_AUROC})"
                    )
            for rows in sides.values():
                items += [(split, f"{pair.name}/{i}", t) for i, t in rows]
        tr_l, tr_r = pair.split("train")
        va_l, va_r = pair.split("val")
        te_l, te_r = pair.split("test")
        lex = LexicalBaseline.fit(
            tr_l + tr_r, [1] * len(tr_l) + [0] * len(tr_r), va_l + va_r, [1] * len(va_l) + [0] * len(va_r), seed=seed
        )
        y = np.r_[np.ones(len(te_l)), np.zeros(len(te_r))]
        sc = lex.scores(te_l + te_r)
        entry["lexical"] = {
            "C": lex.C,
            "test_balanced_accuracy": float(balanced_accuracy_score(y, sc > 0)),
            "test_auroc": float(roc_auc_score(y, sc)),
        }
        report["pairs"][pair.name] = entry
    dups = _near_duplicates(items)
    report["near_duplicates"] = dups
    for d in dups:
        report["warnings"].append(
            f"near-duplicate across splits (cosine {d['cosine']:.2f}): "
            f"{d['split_a']} {d['id_a']} ~ {d['split_b']} {d['id_b']}"
        )
    if data.neutral:
        nt = [t for _, t in data.neutral]
        c = cue_counts(nt)
        report["neutral"] = {
            "texts": len(nt),
            "rates": {k: float(np.mean(v > 0)) for k, v in c.items()},
            "mean_words": float(np.mean([len(t.split()) for t in nt])),
        }
    report["style_cues"] = list(STYLE_CUES)
    return report


def markdown(report: dict) -> str:
    """The check as Markdown: one table per pair (cue AUROC per split), the lexical baseline, the warnings."""
    out = [f"# Data check: {report['root']}", ""]
    for name, e in report["pairs"].items():
        splits = list(e["splits"])
        cues = list(next(iter(e["splits"].values()))["auroc"])
        out += [
            f"## {name}",
            "",
            "| cue | " + " | ".join(f"{s} AUROC" for s in splits) + " |",
            "|---|" + "---:|" * len(splits),
        ]
        for c in cues:
            out.append(f"| {c} | " + " | ".join(f"{e['splits'][s]['auroc'][c]:.2f}" for s in splits) + " |")
        out += [
            "",
            "| split | texts | " + " | ".join(f"{c} rate (L / R)" for c in CUES) + " |",
            "|---|---:|" + "---:|" * len(CUES),
        ]
        for s in splits:
            sd = e["splits"][s]
            L, R = list(sd["texts"])
            rates = " | ".join(f"{sd['rates'][c][L]:.0%} / {sd['rates'][c][R]:.0%}" for c in CUES)
            out.append(f"| {s} | {sd['texts'][L]} + {sd['texts'][R]} | {rates} |")
        pr = e["pairing"].get("test", next(iter(e["pairing"].values())))
        lx = e["lexical"]
        out += [
            "",
            f"Line pairing (test): word Jaccard {pr['matched_jaccard']:.2f} for matched lines, "
            f"{pr['random_jaccard']:.2f} for random ones. Lexical baseline (C={lx['C']:g}): test balanced "
            f"accuracy {lx['test_balanced_accuracy']:.3f}, AUROC {lx['test_auroc']:.3f}.",
            "",
        ]
    if "neutral" in report:
        n = report["neutral"]
        out += [
            "## neutral",
            "",
            f"{n['texts']} texts, {n['mean_words']:.1f} words on average; cue rates: "
            + ", ".join(f"{k} {v:.0%}" for k, v in n["rates"].items())
            + ".",
            "",
        ]
    out += ["## Warnings", ""] + ([f"- {w}" for w in report["warnings"]] or ["None."]) + [""]
    return "\n".join(out)


def check_emotions(root=None, *, seed: int = 0) -> dict:
    """The check of an emotion dataset (:func:`emofast.data.emotions.load_emotions`): per split, each emotion
    against all the others, every cue's AUROC and the label words'; cross-split near-duplicates; the neutral set's
    cue rates. Warns like :func:`check_dataset`."""
    from .emotions import load_emotions

    data = load_emotions(root)
    report = {"root": data.source, "kind": "space", "emotions": {}, "near_duplicates": [], "warnings": []}
    items = []
    for split in ("train", "val", "test"):
        texts = {e: [t for _, t in data.texts[e][split]] for e in data.emotions}
        counts = {e: cue_counts(ts) for e, ts in texts.items()}
        for e in data.emotions:
            rest = [x for o in data.emotions if o != e for x in texts[o]]
            rc = cue_counts(rest)
            entry = report["emotions"].setdefault(e, {})
            au = {c: cue_auroc(counts[e][c], rc[c]) for c in CUES}
            au["label_words"] = cue_auroc(label_word_counts(texts[e], e), label_word_counts(rest, e))
            entry[split] = {"texts": len(texts[e]), "auroc": au}
            for cue, v in au.items():
                if v >= WARN_AUROC:
                    report["warnings"].append(
                        f"{e} {split}: the cue '{cue}' alone separates it from the other "
                        f"emotions (AUROC {v:.2f} >= {WARN_AUROC})"
                    )
            items += [(split, f"{e}/{i}", t) for i, t in data.texts[e][split]]
    dups = _near_duplicates(items)
    report["near_duplicates"] = dups
    report["warnings"] += [
        f"near-duplicate across splits (cosine {d['cosine']:.2f}): {d['split_a']} {d['id_a']} ~ "
        f"{d['split_b']} {d['id_b']}"
        for d in dups
    ]
    nt = [t for rows in data.neutral.values() for _, t in rows]
    report["neutral"] = {"texts": len(nt), "rates": {k: float(np.mean(v > 0)) for k, v in cue_counts(nt).items()}}
    return report
