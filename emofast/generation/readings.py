"""Per-token readings a person can read: a reference of their own, sink positions marked, percentages only where
they are calibrated.

A probe is fitted and calibrated at one position (the last prompt token). Read at every token while a model
writes, its raw score lives on another scale: on SmolLM2 the first token (``<|im_start|>``, a position with
massive activations, an "attention sink") reads −5,300 on love/hate against ±40 elsewhere, and the calibrated
``p_`` columns swing between 1e-280 and 1. Three things make a trace readable:

* :func:`~emofast.generation.trace.token_reference`: the same model's per-token readings on neutral text (the
  bundled neutral set by default, each text as a user turn through the probe's template), their mean and spread
  per reading column, sink positions left out. ``tz_<name> = (reading − mean) / sd``: a token reads 0 where
  neutral text does, in units of neutral per-token spread.
* :func:`sink_positions`: a position whose residual norm is more than :data:`SINK_RATIO` times the sequence's
  median norm, at most of the scoring layers. Sinks are kept in the table (``is_sink``) and out of plot axes and
  colour ranges.
* ``p_`` columns are kept only at the position the probe was calibrated at (``calibrated = True``: the last
  prompt token, where a probe fitted at ``position="last"`` or ``"last-K"`` reads the prompt); elsewhere NaN.

What one reading is (:func:`reading_window`, :func:`window_readings`): a probe fitted at ``position="last"``
reads the residual at token ``j``; a probe fitted at ``"last-K"`` (the mean of the prompt's last ``K`` residuals)
reads the mean of the residuals at ``max(0, j-K+1)..j``, a trailing window, so that at the last prompt token the
reading is exactly the prompt's vector the probe was fitted and calibrated on. Projections are linear, so the
window is a moving mean of the per-token projections (no second model pass). The norm of a window's mean is not
known from the tokens' norms: the windowed norms are NaN (beyond single-token windows), and a probe whose score
divides by the norm (``score_kind="cosine"``) fitted at ``"last-K"`` is refused. A probe fitted at ``"mean"`` or
an int index still reads single tokens, which it was not calibrated on (a warning, no ``p_`` numbers).

Sinks and windows: a window that contains a sink position is a sink (``is_sink`` of its reading), since one
sink's projection (thousands against tens) dominates the mean of its window. With ``"last-K"`` the first ``K``
readings of a sequence, which all hold its first token, are sinks wherever that token is; they stay in the
table but out of the neutral reference, plot axes, colour ranges and summaries. The window is not cut at the
sink: the reading at the last prompt token must stay the probe's own score (if a prompt shorter than ``K``
tokens has a sink inside, that reading is both ``calibrated`` and ``is_sink``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "SINK_RATIO",
    "REFERENCE_TEXTS",
    "reading_columns",
    "probability_columns",
    "sink_positions",
    "reading_window",
    "window_readings",
    "finish_columns",
]

#: a position is a sink when its norm exceeds this many times the sequence's median norm (most scoring layers)
SINK_RATIO = 8.0
#: neutral texts used for the per-token reference by default
REFERENCE_TEXTS = 64


def reading_columns(names) -> list[str]:
    """The raw reading columns among a probe's column names: a pair's own name or an emotion's ``z_`` column.

    >>> reading_columns(["sad_vs_happy", "p_sad", "p_happy", "z_joy", "p_joy", "top", "tz_z_joy"])
    ['sad_vs_happy', 'z_joy']
    """
    out = []
    for c in names:
        if c.startswith("tz_"):
            continue
        if c.startswith("z_") or ("_vs_" in c and ":" not in c and not c.startswith("p_")):
            out.append(c)
    return out


def probability_columns(names) -> list[str]:
    """The calibrated percentage columns (``p_<side>`` or ``<pair>:p_<side>``)."""
    return [c for c in names if c.startswith("p_") or ":p_" in c]


def sink_positions(norms: torch.Tensor, ratio: float = SINK_RATIO) -> torch.Tensor:
    """``[T]`` bool from one sequence's norms ``[T, nL]`` (real positions only): norm above ``ratio`` times the
    sequence's median norm at more than half of the layers.

    >>> n = torch.tensor([[900.0, 800.0], [10.0, 12.0], [11.0, 9.0], [10.5, 10.0]])
    >>> sink_positions(n).tolist()
    [True, False, False, False]
    """
    if norms.numel() == 0:
        return torch.zeros(norms.shape[0], dtype=torch.bool)
    med = norms.float().median(dim=0).values.clamp_min(1e-12)  # [nL]
    big = norms.float() > ratio * med[None]
    return big.float().mean(dim=1) > 0.5


def reading_window(probe) -> int | None:
    """How many trailing tokens one reading of ``probe`` averages: 1 for a probe fitted at ``position="last"``,
    ``K`` for ``"last-K"``; None for ``"mean"`` or an int index (its readings are single tokens, on which it was
    not calibrated). A ``"last-K"`` probe whose score needs the state's norm (``score_kind="cosine"``) is refused.

    Example:
        >>> reading_window(probe)   # a probe fitted at position="last-8"                  # doctest: +SKIP
        8
    """
    from ..capture.plan import position_window, resolve_position

    position = probe.extraction().get("position", "last")
    k = position_window(resolve_position(position))
    if k is not None and k > 1 and getattr(probe, "score_kind", "centered") == "cosine":
        raise ValueError(
            f"this probe scores by cosine (x . d / |x|) and was fitted at position={position!r}: a trailing "
            f"window's reading needs the norm of the mean of {k} residuals, which the per-token norms do not give; "
            "trace a probe fitted with score='centered' (the default) or at position='last'"
        )
    return k


def window_readings(proj: torch.Tensor, norms: torch.Tensor, window: int):
    """One sequence's readings over trailing windows of ``window`` tokens: ``(proj [R, nL, K] float64, norms
    [R, nL], sink [R] bool)`` from its per-token ``proj [R, nL, K]`` and ``norms [R, nL]`` (positions ``0..R-1``,
    real tokens only).

    Row ``j`` is the mean over positions ``max(0, j-window+1)..j``; its norm is NaN where that holds more than one
    token (the norm of a mean is not the mean of the norms), and it is a sink where any of those positions is
    (:func:`sink_positions` of the per-token norms). ``window=1`` gives the per-token readings back.

    >>> p = torch.arange(4.0).reshape(4, 1, 1); n = torch.tensor([[900.0], [10.0], [12.0], [11.0]])
    >>> pw, nw, s = window_readings(p, n, 2)
    >>> pw.flatten().tolist(), nw.flatten().tolist()[:2], s.tolist()
    ([0.0, 0.5, 1.5, 2.5], [900.0, nan], [True, True, False, False])
    """
    if int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    sink = sink_positions(norms)
    if window == 1 or proj.shape[0] == 0:
        return proj.double(), norms.double(), sink
    R, k = proj.shape[0], int(window)
    csum = torch.cat([torch.zeros_like(proj[:1], dtype=torch.float64), proj.double().cumsum(0)])  # [R+1, nL, K]
    lo = (torch.arange(R) - k + 1).clamp(min=0)  # first position of each window
    hi = torch.arange(R) + 1
    count = (hi - lo).double()
    mean = (csum[hi] - csum[lo]) / count[:, None, None]
    out_norms = norms.double().clone()
    out_norms[count > 1] = float("nan")
    scount = torch.cat([torch.zeros(1, dtype=torch.int64), sink.long().cumsum(0)])
    return mean, out_norms, (scount[hi] - scount[lo]) > 0


def finish_columns(cols: dict, reference: dict | None, calibrated, sink) -> dict:
    """Add ``is_sink``, ``calibrated`` and the ``tz_`` columns to a trace's columns, and blank the ``p_`` columns
    where they are not calibrated (in place; returns ``cols``). ``calibrated`` and ``sink``: ``[N]`` bool."""
    calibrated = np.asarray(calibrated, dtype=bool)
    cols["is_sink"] = np.asarray(sink, dtype=bool)
    cols["calibrated"] = calibrated
    for c in probability_columns(list(cols)):
        v = np.asarray(cols[c], dtype=np.float32).copy()
        v[~calibrated] = np.nan
        cols[c] = v
    if reference:
        for c in reading_columns(list(cols)):
            if c in reference:
                mu, sd = reference[c]
                cols[f"tz_{c}"] = ((np.asarray(cols[c], dtype=np.float64) - mu) / sd).astype(np.float32)
    return cols
