"""Held-out evaluation of an emotion space: top-1 / top-3 accuracy with bootstrap intervals, one-vs-rest AUROC
per emotion, the confusion matrix, the neutral reference, the pairs recovered from the space, and the geometry
of the emotion vectors (cosines, PCA, and how PC1 / PC2 line up with textbook valence and arousal)."""

from __future__ import annotations

import numpy as np

from .stats import auroc, bootstrap_ci

__all__ = ["topk_accuracy", "evaluate_space", "neutral_reference", "recovered_pairs", "geometry"]


def topk_accuracy(z: np.ndarray, y: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the ``k`` largest ``z``."""
    top = np.argsort(-z, axis=1)[:, :k]
    return float(np.mean((top == np.asarray(y)[:, None]).any(axis=1)))


def _ci(t) -> dict:
    return {"value": t[0], "ci95": [t[1], t[2]]}


def evaluate_space(emotions, z: np.ndarray, y, ids, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Test-split metrics from ``z`` ``[N, E]`` and labels ``y`` ``[N]`` (indices into ``emotions``)."""
    y = np.asarray(y)
    boot = {"n_boot": n_boot, "seed": seed, "keys": list(ids)}
    E = len(emotions)
    conf = np.zeros((E, E), dtype=np.int64)
    for t, p in zip(y, z.argmax(1)):
        conf[t, p] += 1
    return {
        "n": int(len(y)),
        "chance": 1.0 / E,
        "top1": _ci(bootstrap_ci(lambda y, z: topk_accuracy(z, y, 1), y, z, **boot)),
        "top3": _ci(bootstrap_ci(lambda y, z: topk_accuracy(z, y, 3), y, z, **boot)),
        "auroc": {e: auroc((y == k).astype(int), z[:, k]) for k, e in enumerate(emotions)},
        "confusion": {"labels": list(emotions), "counts": conf.tolist()},
    }


def neutral_reference(emotions, z: np.ndarray, level: float = 0.95) -> dict:
    """Mean and spread of ``z_e`` on neutral texts ``[Nn, E]`` (target: 0 ± 0.5 on every emotion), with a
    t interval for each mean (``ci95``) and the largest |mean| (``max_abs_mean``)."""
    from scipy.stats import t as student_t

    n = int(z.shape[0])
    mean, sd = z.mean(0), z.std(0)
    half = student_t.ppf((1 + level) / 2, max(n - 1, 1)) * z.std(0, ddof=1) / np.sqrt(n) if n > 1 else mean * np.nan
    return {
        "n": n,
        "mean": {e: float(mean[k]) for k, e in enumerate(emotions)},
        "sd": {e: float(sd[k]) for k, e in enumerate(emotions)},
        "ci95": {e: [float(mean[k] - half[k]), float(mean[k] + half[k])] for k, e in enumerate(emotions)},
        "max_abs_mean": float(np.abs(mean).max()),
    }


def recovered_pairs(emotions, z: np.ndarray, y, pairs, *, n_boot=1000, seed=0, ids=None) -> dict:
    """For each ``(left, right)`` with both in the space: balanced accuracy of ``z_left > z_right`` on the test
    texts of the two emotions."""
    from .stats import balanced_accuracy

    y = np.asarray(y)
    ids = list(ids) if ids is not None else list(range(len(y)))
    out = {}
    for left, right in pairs:
        if left not in emotions or right not in emotions:
            continue
        a, b = emotions.index(left), emotions.index(right)
        rows = np.flatnonzero((y == a) | (y == b))
        lab = (y[rows] == a).astype(int)
        diff = z[rows, a] - z[rows, b]
        est = bootstrap_ci(
            lambda t, d: balanced_accuracy(t, d > 0), lab, diff, n_boot=n_boot, seed=seed, keys=[ids[i] for i in rows]
        )
        out[f"{left}_vs_{right}"] = _ci(est)
    return out


def geometry(emotions, vectors: np.ndarray, circumplex: dict) -> dict:
    """Cosines of the unit emotion vectors ``[E, D]``, their PCA (PC1 / PC2 coordinates), and the correlation of
    PC1 and PC2 with the emotions' textbook valence and arousal (PC signs are arbitrary: so is each r's sign)."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos = v @ v.T
    c = v - v.mean(0)
    u, s, _ = np.linalg.svd(c, full_matrices=False)
    pcs = u[:, :2] * s[:2]
    var = (s**2) / (s**2).sum()
    out = {
        "cosine": {"labels": list(emotions), "matrix": np.round(cos, 6).tolist()},
        "pca": {e: [float(pcs[k, 0]), float(pcs[k, 1])] for k, e in enumerate(emotions)},
        "pca_variance": [float(var[0]), float(var[1]) if len(var) > 1 else 0.0],
    }
    have = [k for k, e in enumerate(emotions) if e in circumplex]
    if len(have) >= 3:
        val = np.array([circumplex[emotions[k]][0] for k in have], dtype=float)
        aro = np.array([circumplex[emotions[k]][1] for k in have], dtype=float)

        def r(a, b):
            return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else float("nan")

        out["circumplex"] = {
            "n": len(have),
            "pc1_valence": r(pcs[have, 0], val),
            "pc2_arousal": r(pcs[have, 1], aro),
            "pc1_arousal": r(pcs[have, 0], aro),
            "pc2_valence": r(pcs[have, 1], val),
        }
    return out
