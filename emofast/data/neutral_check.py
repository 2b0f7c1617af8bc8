"""How a neutral set compares with the pair texts it is a control for: length (AUROC of words per text), how well a
bag of words tells the two apart (cross-validated TF-IDF + logistic regression AUROC), and the style-cue rates.

A neutral set much shorter than the pair texts, or in other registers, lets length or topic stand in for
"neutral". Separability by words cannot reach 0.5 (the pair texts carry feelings and their words by design); it is
reported so that neutral sets can be compared and made no more distinct than they must be.

Example:
    >>> r = check_neutral(["the bus leaves at nine"] * 6, ["I cried when the bus left without me"] * 6)
    >>> r["length_auroc"], r["texts"]
    (1.0, 6)
"""

from __future__ import annotations

import numpy as np

from .cues import cue_auroc, cue_counts

__all__ = ["check_neutral", "separability"]


def separability(a_texts, b_texts, *, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """``(AUROC, balanced accuracy)``, out of fold, with which TF-IDF (word 1-2-grams) + L2 logistic regression
    (balanced class weights) tells ``a_texts`` from ``b_texts``; 0.5 = not at all. NaN with fewer than 2 texts
    on a side."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline

    texts = list(a_texts) + list(b_texts)
    y = np.r_[np.ones(len(a_texts)), np.zeros(len(b_texts))]
    k = min(folds, len(a_texts), len(b_texts))
    if k < 2:
        return float("nan"), float("nan")
    scores = np.zeros(len(texts))
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(texts, y):
        model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
            LogisticRegression(C=1.0, class_weight="balanced", solver="liblinear"),
        )
        model.fit([texts[i] for i in tr], y[tr])
        scores[te] = model.decision_function([texts[i] for i in te])
    return float(roc_auc_score(y, scores)), float(balanced_accuracy_score(y, scores > 0))


def check_neutral(neutral_texts, pair_texts, *, seed: int = 0) -> dict:
    """``{"texts", "mean_words", "pair_mean_words", "length_auroc", "tfidf_auroc", "tfidf_balanced_accuracy",
    "rates"}`` of a neutral set against the pair texts (``length_auroc`` direction-free; ``rates``: share of texts
    with each style cue)."""
    auroc, ba = separability(neutral_texts, pair_texts, seed=seed)
    nl = np.array([len(t.split()) for t in neutral_texts])
    pl = np.array([len(t.split()) for t in pair_texts])
    return {
        "texts": len(neutral_texts),
        "mean_words": float(nl.mean()) if len(nl) else float("nan"),
        "pair_mean_words": float(pl.mean()) if len(pl) else float("nan"),
        "length_auroc": cue_auroc(nl, pl),
        "tfidf_auroc": auroc,
        "tfidf_balanced_accuracy": ba,
        "rates": {k: float(np.mean(v > 0)) for k, v in cue_counts(neutral_texts).items()},
    }
