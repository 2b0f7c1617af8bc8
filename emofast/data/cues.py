"""Surface cues of a text that could give its label away without any understanding: negation, exclamation and
question marks, first person, future tense, repetition words, and the label's own words.

A probe that only tracks these is measuring style, not emotion. ``emofast data check`` reports, for every cue,
how well it alone separates the two sides of a pair (AUROC of its per-text count), and the bundled data is
written so that no style cue exceeds 0.60.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["CUES", "STYLE_CUES", "LABEL_WORDS", "cue_counts", "label_word_counts", "cue_auroc"]

#: Per-text count of each cue (case-insensitive regex over the text).
CUES = {
    "negation": r"\b(?:not|no|never|nothing|nobody|none|nowhere|neither|nor|cannot)\b|n't\b",
    "exclaim": r"!",
    "question": r"\?",
    "first_person": r"\b(?:i|me|my|mine|myself|we|us|our|ours|ourselves)\b",
    "future": r"'ll\b|\bwill\b|\bwon't\b",
    "repetition": r"\b(?:again|every|keep|keeps|kept|keeping|always)\b",
}
#: The cues that say nothing about the emotion and must not separate the sides.
STYLE_CUES = ("negation", "exclaim", "question", "future", "repetition")

#: A side's own words (the label and plain synonyms), for the bundled labels; other labels use the label itself.
LABEL_WORDS = {
    "sad": ["sad", "sadness", "sadly", "unhappy", "sorrow", "grief", "miserable", "depressed"],
    "happy": ["happy", "happiness", "happily", "joy", "joyful", "glad", "delighted", "cheerful"],
    "angry": ["angry", "anger", "angrily", "furious", "fury", "rage", "mad", "livid"],
    "calm": ["calm", "calmly", "calmness", "serene", "composed", "unruffled"],
    "fear": ["fear", "afraid", "scared", "frightened", "terrified", "terror", "fright"],
    "confidence": ["confidence", "confident", "confidently", "sure", "assured", "fearless"],
    "love": ["love", "loved", "loving", "adore", "adored", "affection"],
    "hate": ["hate", "hated", "hatred", "loathe", "loathed", "despise", "despised"],
    "anxious": ["anxious", "anxiety", "anxiously", "worried", "worry", "nervous", "uneasy"],
    "relaxed": ["relaxed", "relax", "relaxing", "at ease", "unworried", "easygoing"],
}

_COMPILED = {k: re.compile(v) for k, v in CUES.items()}


def cue_counts(texts) -> dict[str, np.ndarray]:
    """``{cue: [N] counts}`` for every cue of :data:`CUES`."""
    lowered = [t.lower() for t in texts]
    return {k: np.array([len(p.findall(t)) for t in lowered], dtype=np.int64) for k, p in _COMPILED.items()}


def label_word_counts(texts, label: str) -> np.ndarray:
    """``[N]``: how often each text uses ``label``'s own words."""
    words = LABEL_WORDS.get(label, [label])
    pat = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b")
    return np.array([len(pat.findall(t.lower())) for t in texts], dtype=np.int64)


def cue_auroc(left_counts, right_counts) -> float:
    """How well a count alone separates the sides, direction-free: ``max(AUROC, 1 - AUROC)`` (0.5 = not at all).

    >>> cue_auroc([1, 1, 0, 0], [0, 0, 0, 0])
    0.75
    """
    from sklearn.metrics import roc_auc_score

    a, b = np.asarray(left_counts), np.asarray(right_counts)
    s = np.r_[a, b]
    if len(a) == 0 or len(b) == 0 or np.ptp(s) == 0:
        return 0.5
    v = float(roc_auc_score(np.r_[np.ones(len(a)), np.zeros(len(b))], s))
    return max(v, 1.0 - v)
