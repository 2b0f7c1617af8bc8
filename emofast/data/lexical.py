"""The lexical baseline: what the words alone say. TF-IDF of word 1-2-grams and an L2 logistic regression
(scikit-learn), fitted on a pair's train split, with ``C`` chosen on its val split; the same texts a probe sees,
without any model.

A probe that does not beat this baseline on held-out texts has not shown that the model represents more than the
words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LexicalBaseline", "C_GRID"]

#: Inverse regularisation strengths tried on val.
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass
class LexicalBaseline:
    """A fitted TF-IDF + logistic-regression classifier of one pair (1 = left side).

    Example:
        >>> lex = LexicalBaseline.fit(["so sad", "so happy"], [1, 0])
        >>> bool(lex.scores(["sad again"])[0] > 0)
        True
    """

    vectorizer: object
    model: object
    C: float
    val_balanced_accuracy: float | None = None

    @classmethod
    def fit(cls, train_texts, train_y, val_texts=None, val_y=None, *, grid=C_GRID, seed: int = 0) -> LexicalBaseline:
        """Fit on train; choose ``C`` by balanced accuracy on val, ties by val log-loss (the vectorizer sees train
        only)."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import balanced_accuracy_score, log_loss

        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)
        x = vec.fit_transform(list(train_texts))
        y = np.asarray(train_y)
        if len(np.unique(y)) < 2:
            raise ValueError("the lexical baseline needs texts of both sides in train")
        best = None
        for C in grid if val_texts is not None else (1.0,):
            m = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(x, y)
            key = (0.0, 0.0)
            if val_texts is not None:
                xv, yv = vec.transform(list(val_texts)), np.asarray(val_y)
                # balanced accuracy first; ties (frequent with few val texts) go to the lower val log-loss, so that
                # the baseline is not made weaker than it can be
                key = (
                    balanced_accuracy_score(yv, m.predict(xv)),
                    -log_loss(yv, m.predict_proba(xv), labels=m.classes_),
                )
            if best is None or key > best[2]:
                best = (C, m, key)
        return cls(vec, best[1], best[0], best[2][0] if val_texts is not None else None)

    def scores(self, texts) -> np.ndarray:
        """``[N]`` signed scores (positive = left side): the logistic regression's decision function."""
        return self.model.decision_function(self.vectorizer.transform(list(texts))).astype(np.float64)
