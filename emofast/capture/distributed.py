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
distributed one, with the same signatures. :func:`distributed_session` is the one place where a command sets up
the process group (backend from the device: gloo on CPU, NCCL with one GPU per rank) and destroys it again.
"""

from __future__ import annotations

import itertools
import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Runner",
    "ShardedRunner",
    "ReplicatedRunner",
    "Session",
    "distributed_session",
    "resolve_device",
    "torchrun_env",
]


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


def torchrun_env() -> tuple[int, int, int, int]:
    """``(rank, world_size, local_rank, local_world_size)`` from torchrun's variables (``(0, 1, 0, 1)`` without).

    ``local_world_size`` is the number of processes torchrun started on this machine (``--nproc-per-node``).
    """
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    return int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")), local_world


def resolve_device(device=None, *, device_map=None) -> torch.device | None:
    """The device a command's model runs on, from ``--device``, ``--device-map`` and torchrun's variables.

    Outside torchrun (``WORLD_SIZE`` 1): ``device`` as given (``None``: :func:`emofast.load_model`'s default).
    Under torchrun, one GPU per rank: ``None`` or ``"cuda"`` give ``cuda:LOCAL_RANK`` when CUDA is available
    (``None`` gives ``cpu`` otherwise); ``"cpu"`` stays on the CPU even on a GPU machine; an explicit ``"cuda:N"``
    is accepted only with one process per machine. With ``device_map`` (e.g. ``"auto"``: the model spread over
    every GPU of the machine) torchrun must start one process per machine (``--nproc-per-node 1``, with
    ``--nnodes`` for several machines): several ranks would each spread their copy over the same GPUs. The
    device returned is then ``cuda:0`` (where the map starts, and the rank's NCCL device).

    Raises:
        ValueError: a request the machine cannot serve (CUDA absent, more processes than GPUs, a device map
            with several processes per machine), naming the numbers and what to do instead.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    _, world, local_rank, local_world = torchrun_env()
    if world <= 1:
        return None if device is None else torch.device(device)
    cuda = torch.cuda.is_available()
    want = torch.device(device) if device is not None else torch.device("cuda" if cuda else "cpu")
    if device_map is not None and cuda:
        if local_world > 1:
            raise ValueError(
                f"--device-map {device_map} under torchrun with {local_world} processes on this machine: every "
                "rank would spread its own copy of the model over the same GPUs. Start one process per machine "
                "(torchrun --nproc-per-node 1, --nnodes for more machines) to keep the map, or drop --device-map "
                "for one GPU per rank (data parallel), or use --tp-plan auto (tensor parallel)"
            )
        want = torch.device("cuda", 0)
    if want.type != "cuda":
        return want
    if not cuda:
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    gpus = torch.cuda.device_count()
    if local_world > gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ValueError(
            f"torchrun started {local_world} processes on this machine but {gpus} GPU"
            f"{'s are' if gpus != 1 else ' is'} visible"
            + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
            + f": one GPU per rank needs --nproc-per-node {gpus} or fewer (or --device cpu for gloo on the CPU)"
        )
    if want.index is None:
        return torch.device("cuda", local_rank)
    if local_world > 1 and device_map is None:
        raise ValueError(
            f"--device {device} under torchrun with {local_world} processes on this machine would put every rank "
            "on the same GPU: use --device cuda (rank i takes GPU LOCAL_RANK = i)"
        )
    return want


@dataclass
class Session:
    """What :func:`distributed_session` yields: the ``runner`` for the workflow calls, the ``device`` the model
    goes to (``None``: :func:`emofast.load_model`'s default), and ``backend`` (``"gloo"``, ``"nccl"``, or
    ``None`` for one process)."""

    runner: Runner
    device: torch.device | None
    backend: str | None = None


_SESSIONS = itertools.count()


@contextmanager
def distributed_session(device=None, *, device_map=None, tensor_parallel: bool = False):
    """Set up the process group for one command, and tear it down at the end; a :class:`Session`.

    Outside torchrun it yields a plain :class:`Runner`. Under torchrun (``WORLD_SIZE > 1``) it resolves the
    device (:func:`resolve_device`), initialises the default process group from torchrun's variables with the
    backend the device needs (gloo for ``cpu``, NCCL for ``cuda`` with ``device_id`` set to the rank's GPU), and
    yields a :class:`ShardedRunner` (data parallel) or, with ``tensor_parallel``, a :class:`ReplicatedRunner`.

    On leaving, a group this call created is destroyed: after a barrier when the body succeeded (no rank closes
    its connections while another still talks to it), at once when it raised (the exception goes on; torchrun
    then stops the other ranks). A process that exits with a live gloo group can die in SIGABRT ("terminate
    called without an active exception") after its work is done. A group that already existed (a script that
    runs several commands in one session) is used as is and left to its owner.

    Example:
        >>> with distributed_session("cpu") as s:
        ...     s.runner.world_size
        1
    """
    _, world, _, _ = torchrun_env()
    dev = resolve_device(device, device_map=device_map)
    if world <= 1:
        yield Session(Runner(), dev)
        return
    import torch.distributed as dist

    backend = "nccl" if dev.type == "cuda" else "gloo"
    owned = not dist.is_initialized()
    if owned:
        # torchrun's store, under a prefix of its own for each session of this process: a second command in the
        # same process (every rank runs the same commands, so the counters agree) meets no stale keys of the
        # first group, which would make its initialisation hang.
        store, rank, world = next(dist.rendezvous("env://"))
        kw = {"store": dist.PrefixStore(f"emofast/{next(_SESSIONS)}", store), "rank": rank, "world_size": world}
        if backend == "nccl":
            torch.cuda.set_device(dev)
            kw["device_id"] = dev
        dist.init_process_group(backend, **kw)
    else:
        backend = dist.get_backend()
    ok = False
    try:
        yield Session(ReplicatedRunner() if tensor_parallel else ShardedRunner(), dev, backend)
        ok = True
    finally:
        if owned:
            try:
                if ok:
                    dist.barrier()
            finally:
                dist.destroy_process_group()
