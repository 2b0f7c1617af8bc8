"""Data parallelism over ``torch.distributed`` (one process per GPU, or several CPU processes on gloo).

``torchrun --nproc_per_node=N -m emofast run ...`` and ``... score ...``: every rank loads the model, plans the
same length-sorted batches as a single process would, runs every ``N``-th of them, and

* fitting all-reduces the per-label accumulators (``mean-diff``) or all-gathers the rows (``lda``/``logreg``),
  so every rank holds the same directions;
* projections are all-gathered and put back in input order, so the statistics equal a single-process run;
* ``emofast score`` splits every chunk of the corpus the same way (every ``N``-th batch of the chunk's plan),
  gathers the chunk's projections, and rank 0 alone writes shards and checkpoints (see
  :mod:`emofast.commands.score`); a rank whose share of a chunk is empty still joins the gather.

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

    def project(self, model, tokenizer, texts, directions, stats: dict | None = None, **kw):
        """``(proj [N, nL, K], norms [N, nL])`` as :func:`emofast.project`; ``stats`` also receives
        ``rank_texts``, the texts each rank computed (here one rank)."""
        from .api import project

        out = project(model, tokenizer, texts, directions, stats=stats, **kw)
        if stats is not None:
            stats["rank_texts"] = [int(stats.get("texts", 0))]
        return out

    def barrier(self) -> None:
        pass

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (a picklable object).

        Example:
            >>> state = runner.broadcast(state if runner.rank == 0 else None)   # doctest: +SKIP
        """
        if self.world_size == 1:
            return obj
        box = [obj]
        src = 0 if self.group is None else self.dist.get_global_rank(self.group, 0)
        self.dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]


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

    def _gather(self, n: int, index: np.ndarray, local: tuple, extra=None) -> tuple:
        """All-gather each rank's rows (at its input positions ``index``) and assemble them in input order.

        Returns ``(tensors, [(index, extra) of each rank])``; a rank with no rows sends an empty ``index``.
        """
        parts = [None] * self.world_size
        self.dist.all_gather_object(parts, (index, tuple(t[index] for t in local), extra), group=self.group)
        out = []
        for j, first in enumerate(local):
            full = torch.empty((n, *first.shape[1:]), dtype=first.dtype)
            seen = 0
            for idx, tensors, _ in parts:
                full[torch.as_tensor(idx, dtype=torch.int64)] = tensors[j]
                seen += len(idx)
            if seen != n:
                raise RuntimeError(f"ranks returned {seen} rows for {n} texts")
            out.append(full)
        return tuple(out), [(idx, ex) for idx, _, ex in parts]

    def extract(self, model, tokenizer, texts, **kw):
        texts, stats = list(texts), {}
        rows = super().extract(model, tokenizer, texts, shard=self._shard, stats=stats, **kw)
        return self._gather(len(texts), stats.get("index", np.zeros(0, dtype=np.int64)), (rows,))[0][0]

    def accumulate_sets(self, model, tokenizer, texts, label_sets, **kw):
        if kw.get("label_names") is None:
            raise ValueError("a sharded accumulate needs label_names, so that every rank has the same labels")
        accs = super().accumulate_sets(model, tokenizer, texts, label_sets, shard=self._shard, **kw)
        return [acc.all_reduce(self.group) for acc in accs]

    def project(self, model, tokenizer, texts, directions, stats: dict | None = None, **kw):
        """This rank's batches, gathered: ``(proj [N, nL, K], norms [N, nL])`` of every text on every rank.

        ``stats`` receives the whole job's ``texts``, ``tokens``, ``padded_tokens``, ``seconds`` (the slowest
        rank) and ``index``, and ``rank_texts`` / ``rank_tokens``: what each rank computed.
        """
        texts, local = list(texts), {}
        proj, norms = super().project(model, tokenizer, texts, directions, shard=self._shard, stats=local, **kw)
        index = local.get("index", np.zeros(0, dtype=np.int64))
        extra = (int(local.get("tokens", 0)), int(local.get("padded_tokens", 0)), float(local.get("seconds", 0.0)))
        out, parts = self._gather(len(texts), index, (proj, norms), extra)
        if stats is not None:
            stats.update(
                texts=len(texts),
                tokens=sum(ex[0] for _, ex in parts),
                padded_tokens=sum(ex[1] for _, ex in parts),
                seconds=max(ex[2] for _, ex in parts),
                index=np.concatenate([np.asarray(idx, dtype=np.int64) for idx, _ in parts]),
                rank_texts=[len(idx) for idx, _ in parts],
                rank_tokens=[ex[0] for _, ex in parts],
            )
        return out

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
