"""Reducers: what a pass keeps of each layer's selected rows (per-text rows, per-label sums, projections).

Every reducer first forms each text's vector at each requested layer, ``[nL, B, D]`` fp32, in one buffer
allocated once per batch on the device where the layers run (:class:`TextVectors`):

* one row per text (position ``"last"`` or an int): a gather, ``x[b, t]``, written into the layer's slice;
* many rows per text (``"mean"``, or weighted rows): a segment sum by the fused kernel
  (:func:`emofast.kernels.select_reduce`), written straight into the layer's slice;
* then, once per batch, the rows every text shares (the shared prefix's sum) are added and the per-text scale
  (``1 / length`` for a mean) applied.

What leaves the device is small and leaves once per batch: :class:`RowsReducer` copies the vectors with one
non-blocking copy into pinned host memory, :class:`ProjectionReducer` computes ``vectors @ directions.T`` and
the norms in fp32 (one batched matmul) and copies only those, and :class:`ClassSumReducer` adds the batch into
per-label sums kept on the device (one matmul with a one-hot matrix, fp64) and copies nothing until the pass
ends. Finiteness is checked once per batch (for the sums: once, when they are read).

Example:
    >>> reducer = RowsReducer()                                     # doctest: +SKIP
    >>> emofast.capture.engine.run_pass(model, tok, texts, reducer, opts)   # doctest: +SKIP
    >>> reducer.out.shape                                           # [N, nL, D]  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch

from .. import kernels
from .plan import NonFiniteError, non_finite_message, to_device

__all__ = ["TextVectors", "RowsReducer", "ClassSumReducer", "ProjectionReducer"]


class TextVectors:
    """Per-text vectors of one batch at every requested layer: ``[nL, B, D]`` fp32 on one device.

    ``begin(batch)``, then ``layer(slot, batch, sources)`` for each slot, then ``finish(batch)`` returns the
    buffer. The buffer is a view into a flat allocation with ``extra`` spare elements at its end (a reducer packs
    its small results and a finiteness flag there, to move everything to the host in one copy).

    Row sources of :class:`~emofast.capture.plan.Batch` are read as follows: an unweighted source with one row per
    text of the batch (``R == B``, segments ``0..B-1`` in order) is gathered into the layer's slice; an unweighted
    source with fewer rows assigns those texts' rows (``index_copy_``); any other source (weights, or several rows
    per text) is a segment sum added by the fused kernel. ``batch.add`` names sources that hold one ``[D]`` row
    added to every text, ``batch.scale`` (``[B]``) multiplies each text's vector at the end.

    Example:
        >>> tv = TextVectors(n_slots=2)                         # doctest: +SKIP
        >>> tv.begin(batch); tv.layer(0, batch, {"live": h0}); tv.layer(1, batch, {"live": h1})  # doctest: +SKIP
        >>> tv.finish(batch).shape                               # [2, B, D]  # doctest: +SKIP
    """

    def __init__(self, n_slots: int, deterministic: bool = False):
        self.n_slots = n_slots
        self.deterministic = deterministic
        self.flat = self.buf = self.numpy = None
        self.dtype = None  # dtype of the hidden states seen last (for error messages)
        self._cache: dict = {}

    def begin(self, batch) -> None:
        self.flat = self.buf = self.numpy = self._slots = None
        self._plans: dict = {}

    def _allocate(self, batch, device, d: int, extra: int, zero: bool) -> None:
        """Take the buffer of this batch shape (allocated once, reused while the shape repeats: the previous
        batch's results have left it by then); zero it if a segment sum adds into it."""
        shape = (self.n_slots, len(batch.index), d)
        key = (device, shape, extra)
        if key not in self._cache:
            n = shape[0] * shape[1] * shape[2]
            flat = torch.empty(n + extra, dtype=torch.float32, device=device)
            buf = flat[:n].view(shape) if extra else flat.view(shape)
            self._cache = {key: (flat, buf, buf.unbind(0), buf.numpy() if device.type == "cpu" else None)}
        self.flat, self.buf, self._slots, self.numpy = self._cache[key]
        if zero:
            self.buf.zero_()

    def _plan(self, batch, device):
        """``[(mode, source, b, t, w, seg)]`` for the batch's rows on ``device``; mode gather / copy / sum."""
        if device not in self._plans:
            n = len(batch.index)
            plan = []
            for src, b, t, w, seg in batch.rows_on(device):
                mode = "sum" if w is not None or b.shape[0] > n else ("gather" if b.shape[0] == n else "copy")
                plan.append((mode, src, b, t, w, seg))
            self._plans[device] = plan
        return self._plans[device]

    def layer(self, slot: int, batch, sources: dict, extra: int = 0) -> None:
        """Write the batch's vectors of one layer into slice ``slot`` (``sources["live"]`` is ``[B, T, D]``)."""
        live = sources["live"]
        plan = self._plan(batch, live.device)
        if self.flat is None:
            self._allocate(batch, live.device, live.shape[-1], extra, zero=any(p[0] == "sum" for p in plan))
        self.dtype = live.dtype
        out = self._slots[slot]
        n = len(batch.index)
        for mode, src, b, t, w, seg in plan:
            x = sources[src]
            if mode == "sum":
                target = out if x.device == out.device else torch.zeros_like(out, device=x.device)
                kernels.select_reduce(
                    x, b, t, seg, n, weights=w, out=target, accumulate=True, deterministic=self.deterministic
                )
                if target is not out:
                    out.add_(target.to(out.device))
            elif mode == "gather":
                out.copy_(x[b, t])
            else:
                out.index_copy_(0, seg.to(out.device), x[b, t].to(out.device, torch.float32))
        for name in batch.add:
            row = sources[name]
            out.add_(row if row.device == out.device else row.to(out.device))

    def finish(self, batch) -> torch.Tensor:
        """The batch's ``[nL, B, D]`` vectors, with the per-text scale applied."""
        if batch.scale is not None:
            self.buf.mul_(to_device(np.reshape(batch.scale, (1, -1, 1)), self.buf.device, np.float32))
        return self.buf


class _HostCopy:
    """One non-blocking device-to-host copy per batch into a reused pinned buffer; on the CPU, no copy at all."""

    def __init__(self):
        self.host = None

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        if flat.device.type == "cpu":
            return flat
        if self.host is None or self.host.numel() < flat.numel():
            pin = flat.device.type == "cuda"
            self.host = torch.empty(flat.numel(), dtype=flat.dtype, pin_memory=pin)
        host = self.host[: flat.numel()]
        cuda = flat.device.type == "cuda"
        host.copy_(flat, non_blocking=cuda)  # elsewhere (mps...) a blocking copy
        if cuda:
            torch.cuda.current_stream(flat.device).synchronize()
        return host


def _flag_finite(buf: torch.Tensor, cell: torch.Tensor) -> None:
    """Write 1 into the one-element ``cell`` if every value of ``buf`` is finite, else 0 (no host sync)."""
    cell.copy_(torch.isfinite(buf).all())


def _raise_non_finite(vectors: torch.Tensor, layers, dtype, model: str | None = None) -> None:
    """``vectors [nL, ...]`` hold an inf/NaN: raise naming the first such layer (and the model, when known)."""
    bad = (~torch.isfinite(vectors.reshape(vectors.shape[0], -1))).any(dim=1)
    raise NonFiniteError(non_finite_message(layers[int(bad.nonzero()[0, 0])], dtype, model))


class _Reducer:
    """Pickles (to and from vLLM worker processes) without its per-batch buffers, which unpickling rebuilds."""

    _TRANSIENT = ("_vec", "_copy", "_on", "_out", "_proj", "_norms", "_res")
    model_name: str | None = None  # named in a NonFiniteError; set by emofast.api before a pass

    def __getstate__(self):
        state = {k: v for k, v in vars(self).items() if k not in self._TRANSIENT}
        if state.get("_acc") is not None:
            state["_acc"] = state["_acc"].cpu()
        return state

    def __setstate__(self, state):
        vars(self).update(state)
        if "layers" in state:  # started: the pass may go on in this process
            self._vec = TextVectors(len(self.layers), self.deterministic)
            self._copy = _HostCopy()
        self._on, self._res = {}, None
        for src, dst in (("out", "_out"), ("proj", "_proj"), ("norms", "_norms")):
            if getattr(self, src, None) is not None:
                setattr(self, dst, getattr(self, src).numpy())


class RowsReducer(_Reducer):
    """Per-text vectors ``[N, len(layers), D]`` fp32 on the CPU, in input order (``extract``)."""

    def __init__(self, deterministic: bool = False):
        self.deterministic = deterministic
        self.out = None

    def start(self, n, layers):
        self.layers = layers
        self.n = n
        self.out = None
        self._vec = TextVectors(len(layers), self.deterministic)
        self._copy = _HostCopy()

    def begin(self, batch):
        self._vec.begin(batch)

    def layer(self, slot, batch, sources):
        # On a GPU one spare element carries the finiteness flag home with the rows.
        self._vec.layer(slot, batch, sources, extra=int(sources["live"].device.type != "cpu"))

    def end(self, batch):
        """Check finiteness and store the batch's rows; returns no tensors for the engine to check."""
        vec = self._vec
        buf = vec.finish(batch)
        # Host-side work is numpy on host memory: the rows already are on the host (or, on the CPU, nowhere else).
        if buf.device.type == "cpu":
            rows = vec.numpy
            finite = np.isfinite(rows).all()
        else:
            _flag_finite(buf, vec.flat[-1:])
            flat = self._copy(vec.flat).numpy()
            rows, finite = flat[: buf.numel()].reshape(buf.shape), flat[-1] == 1.0
        if not finite:
            _raise_non_finite(torch.from_numpy(rows), self.layers, vec.dtype, self.model_name)
        if self.out is None:
            self.out = torch.empty(self.n, len(self.layers), buf.shape[-1], dtype=torch.float32)
            self._out = self.out.numpy()
        self._out[np.asarray(batch.index)] = rows.transpose(1, 0, 2)
        return []


class ClassSumReducer(_Reducer):
    """Per-label sums ``[S * C, len(layers), D]`` (fp64, CPU) for ``S`` label sets of ``C`` labels (``accumulate``).

    ``label_ids`` is ``[N]`` (one label set) or ``[S, N]``: several labelings of the same texts (e.g. the real
    sides and shuffled ones) accumulated in one pass; set ``s`` fills rows ``s * C .. s * C + C - 1``.

    The sums stay on the device during the pass (``[nL, S * C, D]`` fp64, one ``baddbmm`` with a one-hot matrix
    per batch: fixed order, deterministic); reading :attr:`sums` copies them to the CPU once and checks them
    (an inf/NaN in any text's vector reaches the sums of its layer).
    """

    def __init__(self, label_ids: np.ndarray, num_classes: int, deterministic: bool = False):
        ids = np.asarray(label_ids, dtype=np.int64)
        self.label_ids = np.atleast_2d(ids)  # [S, N]
        self.num_classes = num_classes
        self.deterministic = deterministic
        self._acc = None
        self._sums = None

    def start(self, n, layers):
        self.layers = layers
        self._acc = self._sums = None
        self._vec = TextVectors(len(layers), self.deterministic)

    def begin(self, batch):
        self._vec.begin(batch)

    def layer(self, slot, batch, sources):
        self._vec.layer(slot, batch, sources)

    def end(self, batch):
        buf = self._vec.finish(batch)  # [nL, B, D]
        self._dtype = self._vec.dtype
        s, c = self.label_ids.shape[0], self.num_classes
        cols = np.arange(len(batch.index))
        onehot = np.zeros((s * c, len(cols)), dtype=np.float64)
        for k in range(s):
            onehot[k * c + self.label_ids[k, batch.index], cols] = 1.0
        onehot = torch.from_numpy(onehot).to(buf.device, non_blocking=True)
        if self._acc is None:
            self._acc = torch.zeros(buf.shape[0], s * c, buf.shape[2], dtype=torch.float64, device=buf.device)
        self._acc.baddbmm_(onehot.expand(buf.shape[0], -1, -1), buf.double())
        self._sums = None
        return []

    @property
    def sums(self) -> torch.Tensor | None:
        """``[S * C, nL, D]`` fp64 on the CPU (None before any batch); raises :class:`NonFiniteError`."""
        if self._sums is None and self._acc is not None:
            acc = self._acc.cpu()
            if not bool(torch.isfinite(acc).all()):
                _raise_non_finite(acc, self.layers, self._dtype, self.model_name)
            self._sums = acc.transpose(0, 1).contiguous()
        return self._sums


class ProjectionReducer(_Reducer):
    """Per text and layer: projections on that layer's directions ``[N, nL, K]`` and vector norms ``[N, nL]``.

    ``directions`` is ``[nL, K, D]`` (one set per requested layer, in the order of ``layers``). The per-text
    vectors are formed on the device and never leave it: one fp32 ``bmm`` per batch gives every layer's
    projections, and only ``K + 1`` numbers per text and layer are copied to the host (one copy per batch).
    """

    def __init__(self, directions: torch.Tensor, deterministic: bool = False):
        self.directions = directions.float()
        self.deterministic = deterministic
        self._on: dict = {}

    def _dirs_t(self, device) -> torch.Tensor:
        """``[nL, D, K]`` fp32 on ``device`` (cached)."""
        if device not in self._on:
            self._on[device] = self.directions.to(device).transpose(1, 2).contiguous()
        return self._on[device]

    def start(self, n, layers):
        if self.directions.shape[0] != len(layers):
            raise ValueError(f"directions has {self.directions.shape[0]} layers, the pass has {len(layers)}")
        self.layers = layers
        k = self.directions.shape[1]
        self.proj = torch.empty(n, len(layers), k, dtype=torch.float32)
        self.norms = torch.empty(n, len(layers), dtype=torch.float32)
        self._proj, self._norms = self.proj.numpy(), self.norms.numpy()
        self._res = None
        self._vec = TextVectors(len(layers), self.deterministic)
        self._copy = _HostCopy()

    def begin(self, batch):
        self._vec.begin(batch)

    def layer(self, slot, batch, sources):
        self._vec.layer(slot, batch, sources)

    def _results(self, buf: torch.Tensor):
        """``(flat, proj [nL, B, K], norms [nL, B], flag [1])``: one device buffer per batch shape, reused."""
        n_l, b, _ = buf.shape
        k = self.directions.shape[1]
        key = (buf.device, n_l, b)
        if self._res is None or self._res[0] != key:
            flat = torch.empty(n_l * b * (k + 1) + 1, dtype=torch.float32, device=buf.device)
            parts = (flat[: n_l * b * k].view(n_l, b, k), flat[n_l * b * k : -1].view(n_l, b), flat[-1:])
            self._res = (key, flat, *parts, flat.numpy() if buf.device.type == "cpu" else None)
        return self._res[1:]

    def end(self, batch):
        buf = self._vec.finish(batch)  # [nL, B, D]
        n_l, b, _ = buf.shape
        k = self.directions.shape[1]
        flat, proj, norms, flag, flat_np = self._results(buf)
        torch.bmm(buf, self._dirs_t(buf.device), out=proj)
        torch.linalg.vector_norm(buf, dim=-1, out=norms)
        _flag_finite(buf, flag)
        host = flat_np if flat_np is not None else self._copy(flat).numpy()  # host work in numpy (RowsReducer.end)
        if host[-1] != 1.0:
            _raise_non_finite(buf.cpu(), self.layers, self._vec.dtype, self.model_name)
        idx = np.asarray(batch.index)
        self._proj[idx] = host[: n_l * b * k].reshape(n_l, b, k).transpose(1, 0, 2)
        self._norms[idx] = host[n_l * b * k : -1].reshape(n_l, b).T
        return []
