"""Data parallelism over ``torch.distributed`` (one process per GPU, or several CPU processes on gloo).

``torchrun --nproc_per_node=N -m emofast run ...`` and ``... score ...``: every rank loads the model, plans the
same length-sorted batches as a single process would, runs every ``N``-th of them, and

* fitting all-reduces the per-label accumulators (``mean-diff``) or all-gathers the rows (``lda``/``logreg``),
  so every rank holds the same directions;
* projections are all-gathered and put back in input order, so the statistics equal a single-process run;
* ``emofast score`` gives each rank every ``N``-th chunk and writes per-rank shards into one manifest.

With ``--tp-plan auto`` (transformers' tensor parallelism, for models too big for one GPU) the ranks instead
split each layer and run every batch together; nothing is sharded and rank 0 alone writes.

:class:`Runner` is the single-process implementation of the three engine calls; :class:`ShardedRunner` the
distributed one, with the same signatures.
"""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["Runner", "ShardedRunner", "ReplicatedRunner", "runner_from_env", "init_from_env"]


class Runner:
    """The engine calls the workflow makes: plain :func:`emofast.extract` / ``accumulate`` / ``project``."""

    rank = 0
    world_size = 1

    def extract(self, model, tokenizer, texts, **kw):
        from .api import extract

        return extract(model, tokenizer, texts, **kw)

    def accumulate_sets(self, model, tokenizer, texts, label_sets, **kw):
        from .api import accumulate_sets

        return accumulate_sets(model, tokenizer, texts, label_sets, **kw)

    def project(self, model, tokenizer, texts, directions, **kw):
        from .api import project

        return project(model, tokenizer, texts, directions, **kw)

    def barrier(self) -> None:
        pass


class ShardedRunner(Runner):
    """Each rank runs every ``N``-th batch of the full length-sorted batch plan, and the results are combined.

    Sharding whole batches of the single-process plan (rather than texts) computes every text with the same
    companions and padding as one process would: the rows are bit-identical, so sums, directions and scores
    equal a single-process run up to the order of the fp64 all-reduce.
    """

    def __init__(self, group=None):
        import torch.distributed as dist

        self.dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    @property
    def _shard(self) -> tuple[int, int]:
        return (self.rank, self.world_size)

    def _gather(self, n: int, index: np.ndarray, local: tuple) -> tuple:
        """All-gather each rank's rows (at its input positions ``index``) and assemble them in input order."""
        parts = [None] * self.world_size
        self.dist.all_gather_object(parts, (index, tuple(t[index] for t in local)), group=self.group)
        out = []
        for j, first in enumerate(local):
            full = torch.empty((n, *first.shape[1:]), dtype=first.dtype)
            seen = 0
            for idx, tensors in parts:
                full[torch.as_tensor(idx)] = tensors[j]
                seen += len(idx)
            if seen != n:
                raise RuntimeError(f"ranks returned {seen} rows for {n} texts")
            out.append(full)
        return tuple(out)

    def extract(self, model, tokenizer, texts, **kw):
        texts, stats = list(texts), {}
        rows = super().extract(model, tokenizer, texts, shard=self._shard, stats=stats, **kw)
        return self._gather(len(texts), stats.get("index", np.zeros(0, dtype=np.int64)), (rows,))[0]

    def accumulate_sets(self, model, tokenizer, texts, label_sets, **kw):
        if kw.get("label_names") is None:
            raise ValueError("a sharded accumulate needs label_names, so that every rank has the same labels")
        accs = super().accumulate_sets(model, tokenizer, texts, label_sets, shard=self._shard, **kw)
        return [acc.all_reduce(self.group) for acc in accs]

    def project(self, model, tokenizer, texts, directions, **kw):
        texts, stats = list(texts), {}
        proj, norms = super().project(model, tokenizer, texts, directions, shard=self._shard, stats=stats, **kw)
        return self._gather(len(texts), stats.get("index", np.zeros(0, dtype=np.int64)), (proj, norms))

    def barrier(self) -> None:
        self.dist.barrier(group=self.group)


def init_from_env():
    """Initialise the default process group from torchrun's variables; ``(rank, world_size)``.

    NCCL with one GPU per process when CUDA is available (``LOCAL_RANK`` picks it), gloo otherwise.
    Without ``WORLD_SIZE > 1`` nothing is initialised and ``(0, 1)`` is returned.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


class ReplicatedRunner(Runner):
    """Tensor parallelism (``tp_plan="auto"``): every rank runs every batch in lockstep (the model's own
    collectives split each layer), so nothing is sharded; only rank 0 writes."""

    def __init__(self, group=None):
        import torch.distributed as dist

        self.dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def barrier(self) -> None:
        self.dist.barrier(group=self.group)


def runner_from_env(tensor_parallel: bool = False) -> Runner:
    """Under torchrun: a :class:`ShardedRunner` (data parallel) or, with ``tensor_parallel``, a
    :class:`ReplicatedRunner`; otherwise a plain :class:`Runner`."""
    _, world = init_from_env()
    if world <= 1:
        return Runner()
    return ReplicatedRunner() if tensor_parallel else ShardedRunner()
