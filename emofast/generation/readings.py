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
  prompt token, where a probe fitted at ``position="last"`` reads the prompt); elsewhere they are NaN.
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
