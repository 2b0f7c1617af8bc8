"""Outside judges of generated text: one small interface, a registry, two lexicon judges.

A judge knows nothing of the model or the probe. It scores texts for one pair of concepts, and says which way
steering toward the pair's *left* side should move its score (``expected_sign``; ``None``: it cannot judge this
pair). Any object with these three members plugs in (an NLI or emotion-classifier model the user has)::

    class MyJudge:
        name = "my-nli"
        def expected_sign(self, left: str, right: str) -> int | None: ...   # +1, -1 or None
        def score(self, texts: list[str], left: str, right: str) -> np.ndarray: ...   # [N] float, NaN = no score

    register_judge("my-nli", MyJudge)      # then: emofast steer-check --judges vader,empath,my-nli

Bundled:

- ``vader``: VADER compound valence (vaderSentiment, MIT; a core dependency). All five bundled pairs cross valence,
  so the sign is known: steering toward the left side should *lower* VADER for sad/happy, angry/calm,
  fear/confidence and anxious/relaxed (the left side is the unpleasant one), and *raise* it for love/hate (love,
  the left side, is the pleasant one). Pairs whose sides share a valence sign get no VADER verdict.
- ``empath``: Empath's emotion categories (``pip install empath``, MIT per its repository's LICENSE.txt; the
  package metadata names no license; optional: ``emofast[judges]``). Score = the share of the text's words in the
  left side's categories minus the share in the right side's (a word in both counts for neither); expected sign
  +1 for every mapped pair. Empath has no "calm", "relaxed" or "confidence" category, so the mapping uses the
  nearest ones (:data:`EMPATH_CATEGORIES`). Word-level: a short text often scores 0, so it is informative as a
  mean over many texts.

Example:
    >>> j = get_judge("vader")
    >>> j.expected_sign("sad", "happy"), j.expected_sign("love", "hate")
    (-1, 1)
    >>> [round(float(x), 2) for x in j.score(["What a wonderful day!", "I hate this."], "sad", "happy")]
    [0.61, -0.57]
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .judge import VALENCE, vader_compound

__all__ = [
    "Judge",
    "JudgeUnavailable",
    "register_judge",
    "get_judge",
    "judge_names",
    "load_judges",
    "VaderJudge",
    "EmpathJudge",
    "EMPATH_CATEGORIES",
]


@runtime_checkable
class Judge(Protocol):
    """What ``steer-check`` needs of a judge (see the module docstring)."""

    name: str

    def expected_sign(self, left: str, right: str) -> int | None: ...

    def score(self, texts: list[str], left: str, right: str) -> np.ndarray: ...


class JudgeUnavailable(RuntimeError):
    """A judge whose optional dependency is not installed (the message says what to install)."""


class VaderJudge:
    """VADER compound valence in [-1, 1]; NaN for an empty text (it has no valence)."""

    name = "vader"

    def expected_sign(self, left: str, right: str) -> int | None:
        lv, rv = VALENCE.get(left), VALENCE.get(right)
        if lv is None or rv is None or lv == rv:
            return None
        return int(np.sign(lv - rv))

    def score(self, texts, left, right) -> np.ndarray:
        v = vader_compound(texts)
        return np.where([bool(t.strip()) for t in texts], v, np.nan)


#: Empath categories standing for each bundled label (Empath 0.89 has no calm, relaxed or confidence: the nearest
#: categories by their word lists: contentment holds relaxation and gentleness, pride holds confidence and
#: determination, optimism hope and eagerness).
EMPATH_CATEGORIES = {
    "sad": ("sadness",),
    "happy": ("joy", "cheerfulness"),
    "angry": ("anger", "rage"),
    "calm": ("contentment",),
    "fear": ("fear",),
    "confidence": ("pride", "optimism"),
    "love": ("love", "affection"),
    "hate": ("hate",),
    "anxious": ("nervousness",),
    "relaxed": ("contentment",),
}


class EmpathJudge:
    """Left-side category rate minus right-side category rate (Empath's lexicon, its tokenizer).

    Args:
        lexicon: ``{category: words}`` to use instead of Empath's (tests, or a user's own lexicon); default: the
            installed ``empath`` package's (raises :class:`JudgeUnavailable` if it is not installed).
        categories: ``{label: category names}`` (default :data:`EMPATH_CATEGORIES`).
    """

    name = "empath"

    def __init__(self, lexicon: dict | None = None, categories: dict | None = None):
        self.categories = dict(EMPATH_CATEGORIES if categories is None else categories)
        if lexicon is None:
            try:
                from empath import Empath
                from empath.helpers import default_tokenizer
            except ModuleNotFoundError as exc:
                raise JudgeUnavailable(
                    "the empath judge needs the optional package empath (pip install 'emofast[judges]' or "
                    "pip install empath)"
                ) from exc
            lexicon = {k: list(v) for k, v in Empath().cats.items()}
            self.tokenize = default_tokenizer
        else:
            self.tokenize = lambda text: [w for w in "".join(c if c.isalnum() else " " for c in text.lower()).split()]
        self.words = {k: frozenset(v) for k, v in lexicon.items()}
        missing = sorted({c for cats in self.categories.values() for c in cats} - set(self.words))
        if missing:
            raise ValueError(f"empath judge: the lexicon has no categories {missing}")

    def _side(self, label: str) -> frozenset:
        return frozenset().union(*(self.words[c] for c in self.categories[label]))

    def expected_sign(self, left: str, right: str) -> int | None:
        return 1 if left in self.categories and right in self.categories else None

    def score(self, texts, left, right) -> np.ndarray:
        if self.expected_sign(left, right) is None:
            return np.full(len(texts), np.nan)
        lw, rw = self._side(left), self._side(right)
        both = lw & rw
        out = np.full(len(texts), np.nan)
        for i, t in enumerate(texts):
            tokens = list(self.tokenize(t))
            if tokens:
                n_left = sum(w in lw and w not in both for w in tokens)
                n_right = sum(w in rw and w not in both for w in tokens)
                out[i] = (n_left - n_right) / len(tokens)
        return out


_REGISTRY = {"vader": VaderJudge, "empath": EmpathJudge}


def register_judge(name: str, factory) -> None:
    """Make ``factory()`` (returning a :class:`Judge`) available as ``name`` (e.g. in ``--judges``)."""
    if not name or "," in name:
        raise ValueError(f"judge name {name!r}: expected a non-empty name without commas")
    _REGISTRY[name] = factory


def judge_names() -> list[str]:
    """The registered judges' names."""
    return list(_REGISTRY)


def get_judge(name: str) -> Judge:
    """An instance of the registered judge ``name`` (:class:`JudgeUnavailable` if its package is missing)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown judge {name!r}; registered: {', '.join(_REGISTRY)}")
    judge = _REGISTRY[name]()
    if not isinstance(judge, Judge):
        raise TypeError(f"judge {name!r} lacks name, expected_sign or score")
    return judge


def load_judges(names) -> tuple[list[Judge], dict[str, str]]:
    """The judges that can run, and ``{name: why not}`` for those that cannot (a missing optional package)."""
    judges, skipped = [], {}
    for name in names:
        try:
            judges.append(get_judge(name))
        except JudgeUnavailable as exc:
            skipped[name] = str(exc)
    return judges, skipped
