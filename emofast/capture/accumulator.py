"""Per-label, per-layer running sums of hidden-state rows: mergeable, serialisable, all-reducible."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["Accumulator"]


class Accumulator:
    """Sums ``[C, nL, D]`` (fp64) and counts ``[C]`` (int64) of the vectors of each label at each layer.

    ``accumulate`` builds one without ever holding the per-text rows. Two accumulators over disjoint texts
    merge into the accumulator of their union (``a + b``, or :meth:`merge`); labels are matched by name.

    Attributes:
        labels: the label names, one per row of ``sums``.
        layers: the layer indices, one per column.
        sums: ``[C, nL, D]`` float64.
        counts: ``[C]`` int64, texts per label.
        meta: how the vectors were taken (position, chat template, system prompt, model id...); merging refuses
            accumulators whose ``meta`` differ.

    Example:
        >>> acc = emofast.accumulate(model, tok, texts, labels=["sad", "happy", ...])   # doctest: +SKIP
        >>> acc.mean("sad").shape                                                     # doctest: +SKIP
        torch.Size([31, 576])
    """

    def __init__(
        self,
        labels: Sequence[str],
        layers: Sequence[int],
        sums: torch.Tensor,
        counts: torch.Tensor,
        meta: dict | None = None,
    ):
        labels = [str(x) for x in labels]
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate labels: {labels}")
        sums = torch.as_tensor(sums, dtype=torch.float64)
        counts = torch.as_tensor(counts, dtype=torch.int64)
        if sums.dim() != 3 or sums.shape[:2] != (len(labels), len(layers)) or counts.shape != (len(labels),):
            raise ValueError(
                f"sums must be [C, nL, D] = [{len(labels)}, {len(layers)}, D] and counts [C]; "
                f"got {tuple(sums.shape)} and {tuple(counts.shape)}"
            )
        self.labels = labels
        self.layers = [int(x) for x in layers]
        self.sums = sums
        self.counts = counts
        self.meta = dict(meta or {})

    # ------------------------------------------------------------------ views
    @property
    def dim(self) -> int:
        return self.sums.shape[-1]

    def index(self, label: str) -> int:
        try:
            return self.labels.index(str(label))
        except ValueError:
            raise KeyError(f"label {label!r} not in {self.labels}") from None

    def count(self, label: str) -> int:
        return int(self.counts[self.index(label)])

    def mean(self, label: str) -> torch.Tensor:
        """Mean vector of ``label`` at every layer, ``[nL, D]`` float64."""
        i = self.index(label)
        n = int(self.counts[i])
        if n == 0:
            raise ValueError(f"label {label!r} has no texts")
        return self.sums[i] / n

    def means(self) -> torch.Tensor:
        """``[C, nL, D]`` float64 means (NaN for labels without texts)."""
        return self.sums / self.counts.clamp(min=0).double()[:, None, None]

    # ------------------------------------------------------------------ merging
    def _aligned(self, other: Accumulator) -> Accumulator:
        if self.layers != other.layers or self.dim != other.dim:
            raise ValueError(
                f"cannot merge accumulators over different layers/dims: {self.layers} x{self.dim} "
                f"vs {other.layers} x{other.dim}"
            )
        if self.meta != other.meta:
            diff = {k for k in set(self.meta) | set(other.meta) if self.meta.get(k) != other.meta.get(k)}
            raise ValueError(f"cannot merge accumulators taken differently (meta differs in {sorted(diff)})")
        return other

    def merge(self, other: Accumulator) -> Accumulator:
        """A new accumulator over both sets of texts (labels are the union, in order of first appearance)."""
        self._aligned(other)
        labels = self.labels + [x for x in other.labels if x not in self.labels]
        sums = torch.zeros(len(labels), len(self.layers), self.dim, dtype=torch.float64)
        counts = torch.zeros(len(labels), dtype=torch.int64)
        for acc in (self, other):
            idx = torch.tensor([labels.index(x) for x in acc.labels], dtype=torch.long)
            sums.index_add_(0, idx, acc.sums)
            counts.index_add_(0, idx, acc.counts)
        return Accumulator(labels, self.layers, sums, counts, self.meta)

    __add__ = merge

    def all_reduce(self, group=None) -> Accumulator:
        """Sum this accumulator over all ranks of a ``torch.distributed`` group (labels must be the same on
        every rank, e.g. passed explicitly to ``accumulate``). Returns the global accumulator on every rank."""
        import torch.distributed as dist

        names = [None] * dist.get_world_size(group)
        dist.all_gather_object(names, [self.labels, self.layers, self.dim, self.meta], group=group)
        if any(n != names[0] for n in names):
            raise ValueError(f"accumulators differ across ranks in labels/layers/dim/meta: {names}")
        backend = dist.get_backend(group)
        dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        sums = self.sums.to(dev)
        counts = self.counts.to(dev)
        dist.all_reduce(sums, group=group)
        dist.all_reduce(counts, group=group)
        return Accumulator(self.labels, self.layers, sums.cpu(), counts.cpu(), self.meta)

    # ------------------------------------------------------------------ serialising
    def state_dict(self) -> dict:
        return {
            "labels": list(self.labels),
            "layers": list(self.layers),
            "sums": self.sums.clone(),
            "counts": self.counts.clone(),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Accumulator:
        return cls(state["labels"], state["layers"], state["sums"], state["counts"], state.get("meta"))

    def save(self, path) -> None:
        """Write to a safetensors file (atomically: a temporary file, then a rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        header = {
            "emofast": "accumulator",
            "labels": json.dumps(self.labels),
            "layers": json.dumps(self.layers),
            "meta": json.dumps(self.meta, sort_keys=True),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file({"sums": self.sums.contiguous(), "counts": self.counts.contiguous()}, str(tmp), metadata=header)
        tmp.replace(path)

    @classmethod
    def load(cls, path) -> Accumulator:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("emofast") != "accumulator":
                raise ValueError(f"{path}: not an emofast accumulator file")
            sums, counts = f.get_tensor("sums"), f.get_tensor("counts")
        return cls(json.loads(header["labels"]), json.loads(header["layers"]), sums, counts, json.loads(header["meta"]))

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Accumulator)
            and self.labels == other.labels
            and self.layers == other.layers
            and self.meta == other.meta
            and torch.equal(self.counts, other.counts)
            and torch.equal(self.sums, other.sums)
        )

    def __repr__(self) -> str:
        counts = dict(zip(self.labels, self.counts.tolist()))
        return f"Accumulator(labels={counts}, layers={len(self.layers)}, dim={self.dim})"
