"""One trace table for every backend: rows of per-token readings assembled from each sequence's projections.

The Hugging Face path (:func:`emofast.generation.trace.trace`, hooks on ``model.generate``) and the vLLM path
(:func:`emofast.backends.vllm_generate.generate`) both end with, per prompt, its token ids, the generated ids and
the projections and norms of every position read; :class:`TraceTable` turns them into the same columns
(``prompt_id``, ``token_index``, ``token``, ``is_generated``, the probe's columns, then ``is_sink``,
``calibrated`` and the ``tz_`` columns of :func:`~emofast.generation.readings.finish_columns`). Each reading is
taken over the probe's trailing window (:func:`~emofast.generation.readings.window_readings`: one token for a
probe fitted at ``"last"``, the mean of the last ``K`` for ``"last-K"``), here, for both backends.

Example:
    >>> t = TraceTable(tok, probe, probe.scoring_layers(), include_prompt=True, window=1)       # doctest: +SKIP
    >>> t.add("0", [1, 5, 9], [7, 8], proj, norms)   # proj [5, nL, K], norms [5, nL]            # doctest: +SKIP
    >>> cols = t.finish(reference=None)                                                        # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch

from .readings import finish_columns, window_readings

__all__ = ["TraceTable", "cut_at_end", "summarize"]


def cut_at_end(ids: list, end_ids) -> list:
    """``ids`` up to (not including) the first end-of-sequence or pad token."""
    n = next((k for k, t in enumerate(ids) if t in end_ids), len(ids))
    return list(ids[:n])


class TraceTable:
    """Accumulates the rows of a trace, one sequence at a time.

    Args:
        tok: the tokenizer (decodes tokens and texts).
        probe: the probe (its ``columns(proj, norms, layers)`` and ``column_names()``).
        layers: the scoring layers the projections were taken at (``nL``).
        include_prompt: also emit the prompt's tokens.
        window: :func:`~emofast.generation.readings.reading_window` of the probe: 1 (fitted at ``"last"``) or
            ``K`` (``"last-K"``): each reading is the mean over that many trailing tokens, and the last prompt
            token's is calibrated (its ``p_`` columns hold numbers there only); None (``"mean"``, an int): single
            tokens, never calibrated.
    """

    def __init__(self, tok, probe, layers, *, include_prompt: bool, window: int | None):
        self.tok, self.probe, self.layers = tok, probe, list(layers)
        self.include_prompt, self.window = include_prompt, window
        self.cols: dict[str, list] = {"prompt_id": [], "token_index": [], "token": [], "is_generated": []}
        self.readings: list[dict] = []
        self.calibrated: list[bool] = []
        self.sinks: list[bool] = []
        self.texts: list[str] = []

    def add(self, prompt_id, prompt_ids, gen_ids, proj: torch.Tensor, norms: torch.Tensor) -> None:
        """One sequence.

        Args:
            prompt_id: its name.
            prompt_ids: ``[P]`` the prompt's real tokens (no padding).
            gen_ids: ``[n]`` the generated tokens, cut before any end-of-sequence token (:func:`cut_at_end`).
            proj: ``[R, nL, K]`` projections of positions ``0..R-1`` of prompt + generated tokens
                (``R <= P + n``: the last generated token may have none).
            norms: ``[R, nL]`` residual norms at the same positions.
        """
        P, n = len(prompt_ids), len(gen_ids)
        R = min(int(proj.shape[0]), P + n)
        self.texts.append(self.tok.decode(list(gen_ids), skip_special_tokens=True))
        positions = (list(range(P)) if self.include_prompt else []) + list(range(P, R))
        if not positions:
            return
        proj, norms, sink = window_readings(proj[:R], norms[:R], self.window or 1)
        all_ids = list(prompt_ids) + list(gen_ids)
        pos_t = torch.tensor(positions)
        self.sinks += sink[pos_t].tolist()
        self.calibrated += [p == P - 1 and self.window is not None for p in positions]
        self.readings.append(self.probe.columns(proj[pos_t], norms[pos_t], self.layers))
        self.cols["prompt_id"] += [str(prompt_id)] * len(positions)
        self.cols["token_index"] += positions
        self.cols["token"] += [self.tok.decode([all_ids[p]]) for p in positions]
        self.cols["is_generated"] += [p >= P for p in positions]

    def finish(self, reference) -> dict:
        """The table's columns (numpy arrays or lists), ``tz_`` columns against ``reference`` (None: none)."""
        cols = dict(self.cols)
        for name in self.probe.column_names():
            cols[name] = (
                np.concatenate([r[name] for r in self.readings]) if self.readings else np.zeros(0, dtype=np.float32)
            )
        cols["token_index"] = np.asarray(cols["token_index"], dtype=np.int64)
        finish_columns(cols, reference, self.calibrated, self.sinks)
        return cols


def summarize(cols: dict, ids, texts) -> dict:
    """Per generation, the mean, max and min of every reading over its generated tokens (sinks left out):
    ``{"prompt_id", "text", "n_generated", "mean_<col>", "max_<col>", "min_<col>"}``, one row per prompt of
    ``ids`` (in order), ``<col>`` each raw reading (``sad_vs_happy``, ``z_joy``) and its ``tz_`` column. A prompt
    without a generated token reads NaN.

    >>> cols = {"prompt_id": ["a", "a", "a", "b"], "is_generated": [False, True, True, False],
    ...         "is_sink": [False, False, False, False], "sad_vs_happy": np.array([9.0, 1.0, 3.0, 5.0])}
    >>> s = summarize(cols, ["a", "b"], ["x", ""])
    >>> s["mean_sad_vs_happy"].tolist(), s["max_sad_vs_happy"].tolist()[0], s["n_generated"].tolist()
    ([2.0, nan], 3.0, [2, 0])
    """
    from .readings import reading_columns

    names = [c for c in cols if c in reading_columns(list(cols)) or c.startswith("tz_")]
    pid = np.asarray(cols["prompt_id"], dtype=object)
    use = np.asarray(cols["is_generated"], dtype=bool) & ~np.asarray(cols["is_sink"], dtype=bool)
    ids = [str(i) for i in ids]
    where = {i: k for k, i in enumerate(ids)}
    if len(where) != len(ids):
        raise ValueError("summarize: prompt ids must be unique")
    group = np.array([where.get(p, -1) for p in pid], dtype=np.int64)
    keep = use & (group >= 0)
    n = np.bincount(group[keep], minlength=len(ids))
    out: dict = {"prompt_id": ids, "text": list(texts), "n_generated": n.astype(np.int64)}
    for c in names:
        v = np.asarray(cols[c], dtype=np.float64)[keep]
        g = group[keep]
        total = np.bincount(g, weights=v, minlength=len(ids))
        hi = np.full(len(ids), -np.inf)
        lo = np.full(len(ids), np.inf)
        np.maximum.at(hi, g, v)
        np.minimum.at(lo, g, v)
        empty = n == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / n
        for name, arr in (("mean", mean), ("max", hi), ("min", lo)):
            arr = arr.astype(np.float32)
            arr[empty] = np.nan
            out[f"{name}_{c}"] = arr
    return out
