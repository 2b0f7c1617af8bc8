"""``emofast data check DIR``: can a paired dataset be solved without understanding it?

Per pair, split and side: text count, mean length, and how well each surface cue alone separates the sides
(AUROC of its per-text count, direction-free), in four families:

* style (:data:`emofast.data.cues.CUES`): negation, "!", "?", first person, future, repetition words;
* sentence shapes (:data:`emofast.data.cues.SHAPE_CUES`): connectives (", so I", "and then", "but", "because",
  ...), clause punctuation, sentences per text, and the most frequent sentence-initial words of each side;
* label words: left's label words minus right's, scored alike for every text (equal self-naming on both sides
  adds up, it does not cancel), and length in words;
* single words of a kind (:data:`emofast.data.cues.WORDS`: "always", "again", "every", ...), one by one: a word
  is flagged when it separates alone (AUROC > 0.60) or sits on one side (Fisher exact p < 0.01).

Then: line matching of the matched splits (line ``k`` of left against line ``k`` of right: word Jaccard against
random pairs, and broken lines, :func:`emofast.data.matching.broken_lines`); near-duplicates across splits and
within a split; the lexical baseline (:mod:`emofast.data.lexical`) fitted on train (``C`` on val) and evaluated
on test, ``ood``, and the ``contrast`` parts, which it must fail (balanced accuracy <= 0.55 on ``contrast``); the
contrast texts' label words (no label word of a text's own side); and each neutral set against the pair texts
(:mod:`emofast.data.neutral_check`). Every cue above AUROC 0.60 is a warning.

Example:
    >>> report = check_dataset()             # the bundled pairs   # doctest: +SKIP
    >>> report["warnings"]                                          # doctest: +SKIP
    []
"""

from __future__ import annotations

import numpy as np

from .check_markdown import family_max, markdown
from .cues import (
    CUES,
    STYLE_CUES,
    cue_auroc,
    cue_counts,
    initial_word_counts,
    label_word_counts,
    label_word_score,
    shape_counts,
    top_initial_words,
    word_balance,
)
from .lexical import LexicalBaseline
from .matching import DUP_COSINE, broken_lines, near_duplicates, pairing, within_split_duplicates
from .neutral_check import check_neutral
from .pairs import UNMATCHED_SPLITS, load_pairs

__all__ = [
    "check_dataset",
    "check_emotions",
    "markdown",
    "family_max",
    "WARN_AUROC",
    "WARN_AUROC_SPACE",
    "WORD_P",
    "CONTRAST_MAX_BA",
    "DUP_COSINE",
    "INITIAL_WORDS",
]

#: A cue whose AUROC exceeds this is a warning (the bundled data keeps every cue at or under it).
WARN_AUROC = 0.60
#: The emotion-space check (each emotion against all the others) warns from this AUROC on.
WARN_AUROC_SPACE = 0.65
#: A single word of :data:`emofast.data.cues.WORDS` is flagged when its Fisher exact p is below this.
WORD_P = 0.01
#: The lexical baseline (fitted on train) must not exceed this balanced accuracy on a ``contrast`` split.
CONTRAST_MAX_BA = 0.55
#: How many of each side's most frequent sentence-initial words are checked as cues.
INITIAL_WORDS = 8


def _split_check(texts: dict, left: str, right: str, split: str) -> dict:
    L, R = texts[left], texts[right]
    counts = {left: cue_counts(L), right: cue_counts(R)}
    shapes = {left: shape_counts(L), right: shape_counts(R)}
    starts = top_initial_words(L, R, k=INITIAL_WORDS)
    init = {left: initial_word_counts(L, starts), right: initial_word_counts(R, starts)}
    lens = {side: np.array([len(t.split()) for t in ts]) for side, ts in texts.items()}
    s = {
        "texts": {side: len(ts) for side, ts in texts.items()},
        "mean_words": {side: float(np.mean(lens[side])) for side in texts},
        "rates": {c: {side: float(np.mean(counts[side][c] > 0)) for side in texts} for c in CUES},
        "auroc": {c: cue_auroc(counts[left][c], counts[right][c]) for c in CUES},
        "label_word_rate": {side: float(np.mean(label_word_counts(ts, side) > 0)) for side, ts in texts.items()},
        "shape_rates": {c: {side: float(np.mean(shapes[side][c] > 0)) for side in texts} for c in shapes[left]},
        "shape_auroc": {c: cue_auroc(shapes[left][c], shapes[right][c]) for c in shapes[left]},
        "mean_sentences": {side: float(np.mean(shapes[side]["sentences"])) for side in texts},
        "initial_words": {
            w: {"rate": {side: float(np.mean(init[side][w] > 0)) for side in texts}, "auroc": 0.5} for w in starts
        },
        "words": word_balance(L, R),
    }
    for w in starts:
        a = cue_auroc(init[left][w], init[right][w])
        s["initial_words"][w]["auroc"] = a
        s["shape_auroc"][f"starts:{w}"] = a
    # both sides scored the same way: left's label words minus right's (positive = points to left)
    s["auroc"]["label_words"] = cue_auroc(label_word_score(L, left, right), label_word_score(R, left, right))
    s["auroc"]["length"] = cue_auroc(lens[left], lens[right])
    if split in UNMATCHED_SPLITS:
        # contrast texts name the other side's feelings by design: not a cue to balance (checked by rules below)
        s["label_words_by_design"] = True
    return s


def _split_warnings(name: str, split: str, s: dict, left: str, right: str) -> list[str]:
    out = []
    for cue, v in s["auroc"].items():
        if cue == "label_words" and s.get("label_words_by_design"):
            continue
        if v > WARN_AUROC:
            out.append(f"{name} {split}: the cue '{cue}' alone separates the sides (AUROC {v:.3f} > {WARN_AUROC})")
    for cue, v in s["shape_auroc"].items():
        if v > WARN_AUROC:
            if cue.startswith("starts:"):
                r = s["initial_words"][cue[7:]]["rate"]
                what = f"the sentence start '{cue[7:]}'"
                where = f"starting a sentence in {r[left]:.0%} of {left} and {r[right]:.0%} of {right} texts"
            elif cue == "sentences":
                m = s["mean_sentences"]
                what = "the number of sentences"
                where = f"{m[left]:.1f} per {left} text, {m[right]:.1f} per {right} text"
            else:
                r = s["shape_rates"][cue]
                what = f"the sentence shape '{cue}'"
                where = f"in {r[left]:.0%} of {left} and {r[right]:.0%} of {right} texts"
            out.append(f"{name} {split}: {what} alone separates the sides (AUROC {v:.3f} > {WARN_AUROC}; {where})")
    for w, d in s["words"].items():
        if d["p"] < WORD_P or d["auroc"] > WARN_AUROC:
            out.append(
                f"{name} {split}: the word '{w}' sits on one side ({left} {d['n_left']}/{s['texts'][left]} texts, "
                f"{right} {d['n_right']}/{s['texts'][right]}; Fisher p {d['p']:.4f}, AUROC {d['auroc']:.2f})"
            )
    return out


def _lexical(pair, seed: int) -> dict:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    tr_l, tr_r = pair.split("train")
    va_l, va_r = pair.split("val")
    lex = LexicalBaseline.fit(
        tr_l + tr_r, [1] * len(tr_l) + [0] * len(tr_r), va_l + va_r, [1] * len(va_l) + [0] * len(va_r), seed=seed
    )
    out = {"C": lex.C}
    for split in ("test", "ood", *UNMATCHED_SPLITS):
        if not pair.has(split):
            continue
        left, right = pair.split(split)
        y = np.r_[np.ones(len(left)), np.zeros(len(right))]
        sc = lex.scores(left + right)
        out[f"{split}_balanced_accuracy"] = float(balanced_accuracy_score(y, sc > 0))
        out[f"{split}_auroc"] = float(roc_auc_score(y, sc))
    return out


def _contrast_rules(pair) -> dict:
    """Label-word rules of the contrast parts: no label word of a text's own side; the other side's words are
    allowed (for other people, or negated) and counted."""
    out = {"own_label_word_texts": [], "other_label_word_rate": {}}
    for split in UNMATCHED_SPLITS:
        if not pair.has(split):
            continue
        for side, other in ((pair.left, pair.right), (pair.right, pair.left)):
            rows = pair.texts[split][side]
            texts = [t for _, t in rows]
            own = label_word_counts(texts, side)
            for (tid, text), n in zip(rows, own):
                if n:
                    out["own_label_word_texts"].append({"split": split, "side": side, "id": tid, "text": text})
            out["other_label_word_rate"].setdefault(split, {})[side] = float(
                np.mean(label_word_counts(texts, other) > 0)
            )
    return out


def check_dataset(root=None, pairs=None, *, seed: int = 0) -> dict:
    """Check a paired dataset (default: the bundled one); see the module docstring. Returns a JSON-able dict:
    ``{"root", "pairs": {name: {"splits", "pairing", "lexical", "contrast"}}, "near_duplicates",
    "within_split_duplicates", "neutral", "neutral_ood", "warnings"}``."""
    data = load_pairs(root, pairs)
    report = {"root": data.source, "pairs": {}, "near_duplicates": [], "within_split_duplicates": [], "warnings": []}
    warn = report["warnings"]
    items = []
    for pair in data.pairs:
        L, R = pair.left, pair.right
        entry = {"splits": {}, "pairing": {}}
        for split, sides in pair.texts.items():
            texts = {side: [t for _, t in rows] for side, rows in sides.items()}
            s = _split_check(texts, L, R, split)
            entry["splits"][split] = s
            warn += _split_warnings(pair.name, split, s, L, R)
            matched = split not in UNMATCHED_SPLITS
            if matched:
                pr = pairing(texts[L], texts[R], seed)
                pr["broken_lines"] = broken_lines(texts[L], texts[R], pair.ids(split, L), pair.ids(split, R))
                entry["pairing"][split] = pr
                for b in pr["broken_lines"]:
                    if b["partner_cosine"] is None:
                        warn.append(f"{pair.name} {split}: line {b['line']} has no partner (sides of different length)")
                    else:
                        warn.append(
                            f"{pair.name} {split}: line {b['line']} does not pair ({b['left_id']} ~ {b['right_id']} "
                            f"cosine {b['partner_cosine']:.2f}, but {b['better_id']} {b['better_cosine']:.2f})"
                        )
            dups = within_split_duplicates(
                [(split, side, f"{pair.name}/{i}", t) for side, rows in sides.items() for i, t in rows],
                matched=matched,
            )
            report["within_split_duplicates"] += dups
            warn += [
                f"near-duplicate within {pair.name} {split} (cosine {d['cosine']:.2f}): {d['id_a']} ~ {d['id_b']}"
                for d in dups
            ]
            for rows in sides.values():
                items += [(split, f"{pair.name}/{i}", t) for i, t in rows]
        entry["lexical"] = lx = _lexical(pair, seed)
        if "contrast_balanced_accuracy" in lx and lx["contrast_balanced_accuracy"] > CONTRAST_MAX_BA:
            warn.append(
                f"{pair.name} contrast: the lexical baseline (fitted on train) is not fooled (balanced accuracy "
                f"{lx['contrast_balanced_accuracy']:.3f} > {CONTRAST_MAX_BA})"
            )
        if any(pair.has(s) for s in UNMATCHED_SPLITS):
            entry["contrast"] = rules = _contrast_rules(pair)
            for o in rules["own_label_word_texts"]:
                warn.append(f"{pair.name} {o['split']}: {o['id']} uses a label word of its own side ({o['side']})")
        report["pairs"][pair.name] = entry
    dups = near_duplicates(items)
    report["near_duplicates"] = dups
    for d in dups:
        warn.append(
            f"near-duplicate across splits (cosine {d['cosine']:.2f}): "
            f"{d['split_a']} {d['id_a']} ~ {d['split_b']} {d['id_b']}"
        )
    pair_texts = [t for p in data.pairs for s in ("train", "val", "test") for t in p.split(s)[0] + p.split(s)[1]]
    for key, rows in (("neutral", data.neutral), ("neutral_ood", data.neutral_ood)):
        if rows:
            report[key] = n = check_neutral([t for _, t in rows], pair_texts, seed=seed)
            if n["length_auroc"] > WARN_AUROC:
                warn.append(
                    f"{key}: length alone separates the neutral texts from the pair texts (AUROC "
                    f"{n['length_auroc']:.3f} > {WARN_AUROC}; {n['mean_words']:.1f} against "
                    f"{n['pair_mean_words']:.1f} words)"
                )
    report["style_cues"] = list(STYLE_CUES)
    return report


def check_emotions(root=None, *, seed: int = 0) -> dict:
    """The check of an emotion dataset (:func:`emofast.data.emotions.load_emotions`): per split, each emotion
    against all the others, every cue's AUROC and the label words'; cross-split near-duplicates; the neutral set's
    cue rates. Warns from :data:`WARN_AUROC_SPACE` on."""
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
                if v >= WARN_AUROC_SPACE:
                    report["warnings"].append(
                        f"{e} {split}: the cue '{cue}' alone separates it from the other "
                        f"emotions (AUROC {v:.2f} >= {WARN_AUROC_SPACE})"
                    )
            items += [(split, f"{e}/{i}", t) for i, t in data.texts[e][split]]
    dups = near_duplicates(items)
    report["near_duplicates"] = dups
    report["warnings"] += [
        f"near-duplicate across splits (cosine {d['cosine']:.2f}): {d['split_a']} {d['id_a']} ~ "
        f"{d['split_b']} {d['id_b']}"
        for d in dups
    ]
    nt = [t for rows in data.neutral.values() for _, t in rows]
    report["neutral"] = {"texts": len(nt), "rates": {k: float(np.mean(v > 0)) for k, v in cue_counts(nt).items()}}
    return report
