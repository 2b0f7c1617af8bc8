"""Label shuffles and train resamples for the run's chance-level and refit controls.

* :func:`shuffled_labelings`: the shuffled-label baselines' sides. For matched data (line ``k`` of both sides is
  one scene, :func:`~emofast.probe.stats.scene_keys`) the two texts of each scene swap sides with probability
  1/2, so that a baseline keeps the scenes' pairing and cannot learn a scene from its topic; otherwise the sides
  are permuted within the pair.
* :func:`train_resamples`: bootstrap resamples of the train split (by scene for matched data, by side
  otherwise), from which the refit control fits the probe and the lexical baseline again.
"""

from __future__ import annotations

import numpy as np

from .stats import resample_indices, scene_keys

__all__ = ["shuffled_labelings", "train_resamples"]


def shuffled_labelings(train, n: int, seed: int) -> list[np.ndarray]:
    """``n`` label vectors ``[N_train]`` (1 = left) for the shuffled-label baselines, seeds ``seed``, ``seed + 1``...

    ``train`` is a :class:`~emofast.probe.paired.SplitIndex` (``pair``, ``y``, ``ids``).

    >>> from types import SimpleNamespace
    >>> ix = SimpleNamespace(pair=np.zeros(4, int), y=np.array([1, 1, 0, 0]),
    ...                      ids=["a-tr-1", "a-tr-2", "b-tr-1", "b-tr-2"])
    >>> [int(v.sum()) for v in shuffled_labelings(ix, 3, 0)]   # each scene keeps one left text
    [2, 2, 2]
    """
    out = []
    for k in range(n):
        rng = np.random.default_rng(seed + k)
        y = np.asarray(train.y).copy()
        for p in np.unique(train.pair):
            idx = np.flatnonzero(train.pair == p)
            scenes = scene_keys([train.ids[i] for i in idx], y[idx])
            if scenes is None:
                y[idx] = rng.permutation(y[idx])
                continue
            for key in sorted(set(scenes.tolist())):
                both = idx[scenes == key]
                if rng.random() < 0.5:
                    y[both] = 1 - y[both]
        out.append(y)
    return out


def train_resamples(train, n: int, seed: int) -> list[np.ndarray]:
    """``n`` bootstrap resamples of the train split: each an index array into ``train`` (with repeats) holding,
    pair by pair, as many texts of each side as the split has. Matched pairs are resampled by scene (both texts of
    a drawn scene together), the others by side.

    >>> from types import SimpleNamespace
    >>> ix = SimpleNamespace(pair=np.zeros(4, int), y=np.array([1, 1, 0, 0]), ids=list("abcd"))
    >>> [len(r) for r in train_resamples(ix, 2, 0)]
    [4, 4]
    """
    per_pair = []
    for p in np.unique(train.pair):
        idx = np.flatnonzero(train.pair == p)
        ids = [train.ids[i] for i in idx]
        y = np.asarray(train.y)[idx]
        draws = resample_indices(y, n, seed + int(p), keys=ids, scenes=scene_keys(ids, y))  # [n, N_pair]
        per_pair.append(idx[draws])
    return [np.concatenate([d[b] for d in per_pair]) for b in range(n)]
