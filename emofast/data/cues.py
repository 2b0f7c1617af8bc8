"""Surface cues of a text that could give its label away without any understanding: negation, exclamation and
question marks, first person, future tense, repetition words, the label's own words, and sentence shapes
(connectives such as ", so I", "and then", "but", "because"; punctuation of clauses; sentences per text; the
words sentences start with).

A probe that only tracks these is measuring style, not emotion. ``emofast data check`` reports, for every cue,
how well it alone separates the two sides of a pair (AUROC of its per-text count), and the bundled data is
written so that no cue exceeds 0.60. Single words of a kind (:data:`WORDS`: "always", "again", "every", ...)
are also compared one by one (:func:`word_balance`), so that a category balanced in total but not in kind
("always" on one side, "again" on the other) is caught.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = [
    "CUES",
    "STYLE_CUES",
    "SHAPE_CUES",
    "WORDS",
    "LABEL_WORDS",
    "cue_counts",
    "shape_counts",
    "sentences",
    "initial_words",
    "initial_word_counts",
    "top_initial_words",
    "word_balance",
    "label_word_counts",
    "label_word_score",
    "cue_auroc",
]

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

#: Sentence shapes: per-text count of connectives and clause punctuation (case-insensitive regex). Sentences per
#: text and sentence-initial words are counted by :func:`shape_counts` and :func:`initial_word_counts`.
SHAPE_CUES = {
    "so_i_we": r"\bso,? (?:i|we)\b",
    "so": r"(?:^|[,;:.!?\u2014]\s*|\band )so\b",
    "and_then": r"\band then\b",
    "then": r"\bthen\b",
    "and_i_we": r"\band (?:i|we)\b",
    "but": r"\bbut\b",
    "because": r"\bbecause\b",
    "when": r"\bwhen\b",
    "while": r"\bwhile\b",
    "until": r"\buntil\b|\btill\b",
    "if": r"\bif\b",
    "though": r"\b(?:though|although)\b",
    "comma": r",",
    "semicolon": r";",
    "colon": r":",
    "dash": r"\u2014|\u2013|\s-\s|--",
    "quote": r"[\"\u201c\u201d]",
}

#: Single words compared one by one between the sides (repetition and frequency words, and a few intensifiers):
#: their rates and a Fisher exact test per word (:func:`word_balance`).
WORDS = {
    "always": r"\balways\b",
    "again": r"\bagain\b",
    "every": r"\bevery\b",
    "keep": r"\bkeep(?:s|ing)?\b|\bkept\b",
    "each": r"\beach\b",
    "ever": r"\bever\b",
    "never": r"\bnever\b",
    "forever": r"\bforever\b",
    "constantly": r"\bconstantly\b",
    "usually": r"\busual(?:ly)?\b",
    "still": r"\bstill\b",
    "once": r"\bonce\b",
    "just": r"\bjust\b",
    "really": r"\breally\b",
    "very": r"\bvery\b",
    "too": r"\btoo\b",
    "even": r"\beven\b",
}

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
_SHAPES = {k: re.compile(v) for k, v in SHAPE_CUES.items()}
_WORDS = {k: re.compile(v) for k, v in WORDS.items()}
_SENT_END = re.compile(r"(?<=[.!?\u2026])[\"'\u201d\u2019)]*\s+|\n+")
_ABBREV = re.compile(r"(?:^|\s)(?:mr|mrs|ms|dr|st|prof|mt|vs|etc|e\.g|i\.e)\.$", re.IGNORECASE)
_ELLIPSIS = re.compile(r"(?:\.\.\.|\u2026)[\"'\u201d\u2019)]*$")
_FIRST = re.compile(r"^[^A-Za-z0-9]*([A-Za-z0-9']+)")


def _count(patterns: dict, texts) -> dict[str, np.ndarray]:
    lowered = [t.lower() for t in texts]
    return {k: np.array([len(p.findall(t)) for t in lowered], dtype=np.int64) for k, p in patterns.items()}


def cue_counts(texts) -> dict[str, np.ndarray]:
    """``{cue: [N] counts}`` for every cue of :data:`CUES`."""
    return _count(_COMPILED, texts)


def sentences(text: str) -> list[str]:
    """The sentences of a text: split after ``.``, ``!``, ``?`` or ``…`` followed by space, and at line breaks;
    not after a title such as "Mr." nor after an ellipsis that the next word continues in lower case.

    >>> sentences("We left at six. Why? Because... of Mr. Lee.")
    ['We left at six.', 'Why?', 'Because... of Mr. Lee.']
    """
    out: list[str] = []
    for piece in _SENT_END.split(text.strip()):
        piece = piece.strip() if piece else ""
        if not piece:
            continue
        if out and (_ABBREV.search(out[-1]) or (_ELLIPSIS.search(out[-1]) and piece[0].islower())):
            out[-1] = out[-1] + " " + piece
        else:
            out.append(piece)
    return out


def initial_words(text: str) -> list[str]:
    """The first word of every sentence, lower-cased (``"I'm"`` stays ``"i'm"``).

    >>> initial_words("Then we left. I stayed; nobody asked.")
    ['then', 'i']
    """
    out = []
    for s in sentences(text):
        m = _FIRST.match(s)
        if m:
            out.append(m.group(1).lower())
    return out


def shape_counts(texts) -> dict[str, np.ndarray]:
    """``{shape: [N] counts}`` for every connective and punctuation shape of :data:`SHAPE_CUES`, plus
    ``"sentences"`` (sentences per text)."""
    out = _count(_SHAPES, texts)
    out["sentences"] = np.array([len(sentences(t)) for t in texts], dtype=np.int64)
    return out


def top_initial_words(*text_lists, k: int = 8) -> list[str]:
    """The ``k`` most frequent sentence-initial words of each list of texts, merged (first seen first)."""
    from collections import Counter

    out: list[str] = []
    for texts in text_lists:
        c = Counter(w for t in texts for w in initial_words(t))
        out += [w for w, _ in c.most_common(k) if w not in out]
    return out


def initial_word_counts(texts, words) -> dict[str, np.ndarray]:
    """``{word: [N]}``: how many sentences of each text start with ``word``."""
    firsts = [initial_words(t) for t in texts]
    return {w: np.array([f.count(w) for f in firsts], dtype=np.int64) for w in words}


def word_balance(left_texts, right_texts) -> dict[str, dict]:
    """Each word of :data:`WORDS`, one by one: the share of texts with it on each side, how many, the count
    AUROC and the two-sided Fisher exact p-value of the presence counts (a small p: the word sits on one side).

    >>> wb = word_balance(["always here"] * 10 + ["x"] * 10, ["y"] * 20)
    >>> wb["always"]["left"], wb["always"]["n_right"], wb["always"]["p"] < 0.01
    (0.5, 0, True)
    """
    from scipy.stats import fisher_exact

    a, b = _count(_WORDS, left_texts), _count(_WORDS, right_texts)
    out = {}
    for w in WORDS:
        na, nb = int((a[w] > 0).sum()), int((b[w] > 0).sum())
        p = 1.0
        if na + nb:
            p = float(fisher_exact([[na, len(a[w]) - na], [nb, len(b[w]) - nb]])[1])
        out[w] = {
            "left": na / max(1, len(a[w])),
            "right": nb / max(1, len(b[w])),
            "n_left": na,
            "n_right": nb,
            "auroc": cue_auroc(a[w], b[w]),
            "p": p,
        }
    return out


def label_word_counts(texts, label: str) -> np.ndarray:
    """``[N]``: how often each text uses ``label``'s own words."""
    words = LABEL_WORDS.get(label, [label])
    pat = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b")
    return np.array([len(pat.findall(t.lower())) for t in texts], dtype=np.int64)


def label_word_score(texts, left: str, right: str) -> np.ndarray:
    """``[N]``: left's label words minus right's, for every text alike (so that equal self-naming on both sides
    does not cancel: a left text naming "sad" and a right text naming "happy" score +1 and -1).

    >>> label_word_score(["so sad", "so happy", "fine"], "sad", "happy").tolist()
    [1, -1, 0]
    """
    return label_word_counts(texts, left) - label_word_counts(texts, right)


def cue_auroc(left_counts, right_counts) -> float:
    """How well a count alone separates the sides, direction-free: ``max(AUROC, 1 - AUROC)`` (0.5 = not at all).

    >>> cue_auroc([1, 1, 0, 0], [0, 0, 0, 0])
    0.75
    """
    from scipy.stats import rankdata

    a, b = np.asarray(left_counts, dtype=np.float64), np.asarray(right_counts, dtype=np.float64)
    s = np.r_[a, b]
    if len(a) == 0 or len(b) == 0 or np.ptp(s) == 0:
        return 0.5
    # Mann-Whitney: the AUROC of the count as a score for "left", ties counted half
    ranks = rankdata(s)
    v = float((ranks[: len(a)].sum() - len(a) * (len(a) + 1) / 2) / (len(a) * len(b)))
    return max(v, 1.0 - v)
