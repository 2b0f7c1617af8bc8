"""Duplicates and line matching in a paired dataset: near-duplicate texts (across splits, and within a split),
and whether line ``k`` of a matched split's left file still pairs with line ``k`` of its right file.

All similarities are TF-IDF cosines (scikit-learn). A matched split is written scene by scene: line ``k`` of
both sides tells the same scene with the other feeling, so a line that resembles another line of the other side
much more than its own partner (a repeated text, an inserted or dropped line) shifts every later pairing.

Example:
    >>> left = ["the bus was late and I missed the class", "we painted the fence in the rain"]
    >>> right = ["we painted the fence in the sun", "the bus was late and I caught the next one"]
    >>> [b["line"] for b in broken_lines(left, right, ["l1", "l2"], ["r1", "r2"])]
    [1, 2]
"""

from __future__ import annotations

import numpy as np

__all__ = ["DUP_COSINE", "SHIFT_MARGIN", "near_duplicates", "within_split_duplicates", "broken_lines", "pairing"]

#: Cosine (TF-IDF of word 1-2-grams) at or above which two texts count as near-duplicates.
DUP_COSINE = 0.5
#: A matched line is broken when another line of the other side is this much more similar than its partner.
SHIFT_MARGIN = 0.2


def _tfidf(texts, ngram_range=(1, 2)):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=ngram_range, sublinear_tf=True).fit_transform(list(texts))


def near_duplicates(items: list[tuple[str, str, str]], *, same_split: bool = False, group=None) -> list[dict]:
    """Pairs of near-duplicate texts (cosine >= :data:`DUP_COSINE`), most similar first.

    Args:
        items: ``(split, id, text)`` triples.
        same_split: False: only pairs from different splits; True: only pairs within one split.
        group: for ``same_split``, an optional function of an id; pairs are kept only when it gives the same
            value for both (e.g. the side, so that matched partners across sides are not reported).

    Returns:
        ``[{"split_a", "id_a", "split_b", "id_b", "cosine", "text_a", "text_b"}]``.
    """
    if len(items) < 2:
        return []
    try:
        m = _tfidf([t for _, _, t in items])
    except ValueError:  # no word of two letters or more anywhere
        return []
    sim = (m @ m.T).tocoo()
    out = []
    for i, j, v in zip(sim.row, sim.col, sim.data):
        if i >= j or v < DUP_COSINE or (items[i][0] == items[j][0]) != same_split:
            continue
        if same_split and group is not None and group(items[i][1]) != group(items[j][1]):
            continue
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


def within_split_duplicates(items: list[tuple[str, str, str, str]], *, matched: bool = True) -> list[dict]:
    """Near-duplicates inside one split. ``items``: ``(split, side, id, text)``. In a matched split the two
    sides' line partners are similar by design, so only texts of the same side are compared there; in an
    unmatched split (``matched=False``), every two texts."""
    side_of = {i: side for _, side, i, _ in items}
    tri = [(split, i, t) for split, _, i, t in items]
    return near_duplicates(tri, same_split=True, group=side_of.get if matched else None)


def broken_lines(left: list[str], right: list[str], left_ids: list[str], right_ids: list[str]) -> list[dict]:
    """Lines of a matched split that no longer pair: line ``k`` (1-based) is broken when some other line of the
    other side is at least :data:`SHIFT_MARGIN` more similar (TF-IDF cosine of words) to it than its partner,
    or when it has no partner at all (sides of different lengths).

    Returns:
        ``[{"line", "left_id", "right_id", "partner_cosine", "better_id", "better_cosine"}]`` (ids are None past
        the end of the shorter side).
    """
    n = min(len(left), len(right))
    out = []
    if n >= 2:
        try:
            m = _tfidf(left[:n] + right[:n], ngram_range=(1, 1))
            s = (m[:n] @ m[n:].T).toarray()
        except ValueError:  # no word of two letters or more in any line: nothing to compare
            s = np.zeros((n, n))
        for k in range(n):
            row, col = s[k].copy(), s[:, k].copy()
            row[k] = col[k] = -1.0
            j_row, j_col = int(row.argmax()), int(col.argmax())
            if row[j_row] >= col[j_col]:
                better_id, better = right_ids[j_row], row[j_row]
            else:
                better_id, better = left_ids[j_col], col[j_col]
            if better - s[k, k] >= SHIFT_MARGIN:
                out.append(
                    {
                        "line": k + 1,
                        "left_id": left_ids[k],
                        "right_id": right_ids[k],
                        "partner_cosine": round(float(s[k, k]), 3),
                        "better_id": better_id,
                        "better_cosine": round(float(better), 3),
                    }
                )
    for k in range(n, max(len(left), len(right))):
        out.append(
            {
                "line": k + 1,
                "left_id": left_ids[k] if k < len(left) else None,
                "right_id": right_ids[k] if k < len(right) else None,
                "partner_cosine": None,
                "better_id": None,
                "better_cosine": None,
            }
        )
    return out


def _jaccard(a: str, b: str) -> float:
    x, y = set(a.lower().split()), set(b.lower().split())
    return len(x & y) / max(1, len(x | y))


def pairing(left: list[str], right: list[str], seed: int = 0) -> dict:
    """How strongly line ``k`` of the left file matches line ``k`` of the right (mean word Jaccard), against
    random line pairs: ``{"matched_jaccard", "random_jaccard"}``."""
    n = min(len(left), len(right))
    if not n:
        return {"matched_jaccard": float("nan"), "random_jaccard": float("nan")}
    matched = float(np.mean([_jaccard(left[k], right[k]) for k in range(n)]))
    perm = np.random.default_rng(seed).permutation(n)
    rand = float(np.mean([_jaccard(left[k], right[perm[k]]) for k in range(n)]))
    return {"matched_jaccard": matched, "random_jaccard": rand}
