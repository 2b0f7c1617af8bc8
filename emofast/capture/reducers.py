"""Reducers: what a pass keeps of each layer's selected rows (per-text rows, per-label sums, projections).

Each reducer feeds the rows of :class:`emofast.engine.Batch` through :func:`emofast.kernels.select_reduce`
on the device where the layer ran, and moves only its small results to the CPU once per batch.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import kernels

__all__ = ["RowsReducer", "ClassSumReducer", "ProjectionReducer", "reduce_batch"]


def reduce_batch(batch, sources, num_classes, seg_labels=None, directions=None, deterministic=False):
    """Run the kernel on every row source of ``batch``.

    Args:
        batch: the :class:`~emofast.engine.Batch`.
        sources: ``{"live": [B, T, D], "prefix": [1, P + 1, D]}`` tensors.
        num_classes: ``C`` of the sums.
        seg_labels: ``[B]`` int64 class of each text of the batch; None: each text is its own class (``C = B``),
            so the sums are the per-text vectors ``[B, D]``.
        directions: ``[K, D]`` tensor (any device) or None.

    Returns:
        ``(sums [C, D] fp32, proj [B, K] fp32 or None)`` on the live tensor's device.
    """
    sums = proj = None
    dev = sources["live"].device
    for name, b, t, w, seg in batch.rows_on(dev):
        x = sources[name]
        if x.device != dev:
            x = x.to(dev)
        labels = seg if seg_labels is None else seg_labels[seg]
        d = None
        if directions is not None:
            d = directions if directions.device == dev else directions.to(dev)
        s, p = kernels.select_reduce(x, b, t, labels, num_classes, weights=w, directions=d, deterministic=deterministic)
        sums = s if sums is None else sums.add_(s)
        if p is not None:
            per = torch.zeros(len(batch.index), p.shape[1], dtype=p.dtype, device=dev).index_add_(0, seg, p)
            proj = per if proj is None else proj.add_(per)
    return sums, proj


class RowsReducer:
    """Per-text vectors ``[N, len(layers), D]`` fp32 on the CPU, in input order (``extract``)."""

    def __init__(self, deterministic: bool = False):
        self.deterministic = deterministic
        self.out = None

    def start(self, n, layers):
        self.layers = layers
        self.n = n
        self.out = None
        self._cur = {}

    def begin(self, batch):
        self._cur = {}

    def layer(self, slot, batch, sources):
        sums, _ = reduce_batch(batch, sources, len(batch.index), deterministic=self.deterministic)
        self._cur[slot] = sums

    def end(self, batch):
        checks = sorted(self._cur.items())
        rows = torch.stack([t.cpu() for _, t in checks], dim=1)  # [B, nL, D]
        if self.out is None:
            self.out = torch.empty(self.n, len(self.layers), rows.shape[-1], dtype=torch.float32)
        self.out[torch.as_tensor(batch.index)] = rows
        return checks


class ClassSumReducer:
    """Per-label sums ``[S * C, len(layers), D]`` (fp64, CPU) for ``S`` label sets of ``C`` labels (``accumulate``).

    ``label_ids`` is ``[N]`` (one label set) or ``[S, N]``: several labelings of the same texts (e.g. the real
    sides and shuffled ones) accumulated in one pass; set ``s`` fills rows ``s * C .. s * C + C - 1``.
    """

    def __init__(self, label_ids: np.ndarray, num_classes: int, deterministic: bool = False):
        ids = np.asarray(label_ids, dtype=np.int64)
        self.label_ids = torch.as_tensor(np.atleast_2d(ids))  # [S, N]
        self.num_classes = num_classes
        self.deterministic = deterministic
        self.sums = None

    def start(self, n, layers):
        self.layers = layers
        self.sums = None
        self._cur = {}

    def begin(self, batch):
        self._cur = {}
        self._seg_labels = {}

    def layer(self, slot, batch, sources):
        dev = sources["live"].device
        if dev not in self._seg_labels:
            self._seg_labels[dev] = self.label_ids[:, torch.as_tensor(batch.index)].to(dev)
        parts = [
            reduce_batch(batch, sources, self.num_classes, seg_labels=labels, deterministic=self.deterministic)[0]
            for labels in self._seg_labels[dev]
        ]
        self._cur[slot] = parts[0] if len(parts) == 1 else torch.cat(parts)

    def end(self, batch):
        checks = sorted(self._cur.items())
        part = torch.stack([t.cpu() for _, t in checks], dim=1).double()  # [S * C, nL, D]
        self.sums = part if self.sums is None else self.sums.add_(part)
        return checks


class ProjectionReducer:
    """Per text and layer: projections on that layer's directions ``[N, nL, K]`` and vector norms ``[N, nL]``.

    ``directions`` is ``[nL, K, D]`` (one set per requested layer, in the order of ``layers``). The per-text
    vectors are formed on the device and never leave it; only ``K + 1`` numbers per text and layer do.
    """

    def __init__(self, directions: torch.Tensor, deterministic: bool = False):
        self.directions = directions.float()
        self.deterministic = deterministic
        self._on: dict = {}

    def _dirs(self, slot, device):
        key = (slot, device)
        if key not in self._on:
            self._on[key] = self.directions[slot].to(device).contiguous()
        return self._on[key]

    def start(self, n, layers):
        if self.directions.shape[0] != len(layers):
            raise ValueError(f"directions has {self.directions.shape[0]} layers, the pass has {len(layers)}")
        self.layers = layers
        k = self.directions.shape[1]
        self.proj = torch.empty(n, len(layers), k, dtype=torch.float32)
        self.norms = torch.empty(n, len(layers), dtype=torch.float32)
        self._cur = {}

    def begin(self, batch):
        self._cur = {}

    def layer(self, slot, batch, sources):
        dev = sources["live"].device
        rows, proj = reduce_batch(
            batch, sources, len(batch.index), directions=self._dirs(slot, dev), deterministic=self.deterministic
        )
        self._cur[slot] = (proj, rows.norm(dim=1))

    def end(self, batch):
        slots = sorted(self._cur)
        proj = torch.stack([self._cur[s][0].cpu() for s in slots], dim=1)
        norms = torch.stack([self._cur[s][1].cpu() for s in slots], dim=1)
        idx = torch.as_tensor(batch.index)
        self.proj[idx] = proj
        self.norms[idx] = norms
        return [(s, self._cur[s][0]) for s in slots] + [(s, self._cur[s][1]) for s in slots]
