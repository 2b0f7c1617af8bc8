"""``emofast trace --input FILE --out OUT``: trace a file of prompts into Parquet shards, resumably.

The prompts are read in chunks of ``chunk_size`` records; each chunk is generated and read
(:func:`emofast.generation.trace.trace_rows`, on either backend: with ``--backend vllm`` one vLLM call per chunk,
its scheduler batching the chunk), written as two shards, and recorded in a checkpoint, exactly as
:mod:`emofast.commands.score` does (its checkpoint, chunking and assembly are used here): a killed run resumes
after its last recorded chunk and ends with the same files as an uninterrupted one (greedy decoding, or sampling
with the same seed: chunk ``k`` is seeded with ``seed + k * chunk_size``).

Layout (``OUT`` a ``.parquet`` or ``.csv`` file; the work folder is ``OUT.parts/``)::

    OUT                     the per-token table of :func:`emofast.trace` (all chunks, input order)
    OUT.summary.parquet     one row per prompt: prompt_id, source, line, text, n_generated and per reading
                            (raw and tz_) its mean, max and min over the generated tokens (sinks left out)
    OUT.parts/part-*.parquet, summary-*.parquet, errors-*.jsonl, checkpoint.json, manifest.json

Example:
    >>> trace_corpus(vm, tok, probe, "prompts.jsonl", "traces.parquet", max_new_tokens=64)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.textio import sha256_file
from ..fileio import atomic_write_bytes
from .score import (
    Checkpoint,
    CheckpointError,
    assemble,
    count_records,
    errors_name,
    fingerprint_inputs,
    finish_shards,
    part_name,
    probe_identity,
    record_chunks,
)

__all__ = ["trace_corpus", "TraceSummary", "summary_path", "arrow_table"]

FORMAT = 1


@dataclass
class TraceSummary:
    prompts: int
    tokens: int
    errors: int
    chunks: int
    resumed_chunks: int
    seconds: float
    out: str
    summary: str

    def line(self) -> str:
        return (
            f"traced {self.prompts:,} prompts ({self.tokens:,} tokens, {self.errors:,} bad records skipped) in "
            f"{self.seconds:.1f} s -> {self.out}, {self.summary}"
        )


def summary_path(out: Path) -> Path:
    """``traces.parquet`` -> ``traces.summary.parquet`` (``.csv`` alike)."""
    return out.with_name(f"{out.stem}.summary{out.suffix}")


def arrow_table(cols: dict, *, strings=("prompt_id", "token", "text", "source"), metadata=None):
    """A ``pyarrow.Table`` with fixed types (strings, int64 counts, bools, float32 readings), so that every shard
    has the same schema, an empty one included."""
    import pyarrow as pa

    arrays = {}
    for name, v in cols.items():
        if name in strings:
            arrays[name] = pa.array([str(x) for x in v], pa.string())
        elif name in ("token_index", "n_generated", "line"):
            arrays[name] = pa.array(np.asarray(v, dtype=np.int64), pa.int64())
        elif name in ("is_generated", "is_sink", "calibrated"):
            arrays[name] = pa.array(np.asarray(v, dtype=bool), pa.bool_())
        else:
            v = np.asarray(v)
            arrays[name] = pa.array(v.astype(str), pa.string()) if v.dtype.kind in "OUS" else pa.array(v, pa.float32())
    return pa.table(arrays, metadata=metadata)


def _write(path: Path, table) -> str:
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return sha256_file(path)


def trace_corpus(
    model,
    tok,
    probe,
    input_path,
    out,
    *,
    chunk_size: int = 256,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    seed: int = 0,
    include_prompt: bool = True,
    steer: dict | None = None,
    where: str = "generated",
    kind: str = "mean-diff",
    strict: bool = False,
    progress: bool = True,
    max_chunks: int | None = None,
) -> TraceSummary:
    """Trace every prompt of ``input_path`` into ``out`` (a ``.parquet`` or ``.csv`` file), resumably.

    Args:
        model, tok: a Hugging Face model or a vLLM handle, and its tokenizer.
        probe: the probe to read.
        input_path: prompts (JSONL with id/text, text, CSV or Parquet; a file or a folder).
        chunk_size: prompts per shard and checkpoint (one vLLM call each).
        steer: ``{pair: alpha}`` to steer every prompt (``where``, ``kind`` as for :func:`emofast.steer`).
        max_chunks: stop after this many new chunks (tests and benchmarks that simulate an interruption).

    Returns:
        A :class:`TraceSummary`.
    """
    from ..generation.steer import Steering
    from ..generation.table import summarize
    from ..generation.trace import token_reference, trace_rows

    out = Path(out)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise ValueError(f"--out {out}: expected a .parquet or .csv file")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    work = out.with_name(out.name + ".parts")
    work.mkdir(parents=True, exist_ok=True)
    settings = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "seed": seed,
        "include_prompt": include_prompt,
        "steer": dict(sorted((steer or {}).items())),
        "where": where,
        "kind": kind,
        "trace_format": FORMAT,
    }
    identity = {
        "format": FORMAT,
        "probe": probe_identity(probe),
        "input": fingerprint_inputs(input_path),
        "chunk_size": chunk_size,
        "columns": probe.column_names(),
        "settings": settings,
    }
    ckpt = Checkpoint(work / "checkpoint.json", identity)
    if ckpt.path.exists():
        ckpt.load(work)
    resumed = len(ckpt.chunks)
    for c in ckpt.chunks:
        if not (work / f"summary-{c['index']:06d}.parquet").is_file():
            raise CheckpointError(f"{work}: the summary shard of chunk {c['index']} is missing; delete {work}")
    start = tuple(ckpt.resume) if ckpt.chunks else (0, 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=count_records(input_path), unit="prompt", desc="trace", dynamic_ncols=True)
        bar.update(sum(c["rows"] + c["errors"] for c in ckpt.chunks))
    reference = token_reference(model, tok, probe)  # the unsteered model's, before any steering
    steering = Steering(model, probe, steer, where=where, kind=kind, tok=tok) if steer else contextlib.nullcontext()
    t0, new, tokens = time.perf_counter(), 0, 0
    try:
        with steering:
            for k, (records, bad, resume) in enumerate(record_chunks(input_path, chunk_size, start), start=resumed):
                if strict and bad:
                    raise ValueError(f"bad input record (--strict): {bad[0]}")
                ids = [str(r.id) for r in records]
                # ids need not be unique across input files (a file without ids numbers its lines): trace and summarise
                # by position in the chunk, then write the user's ids
                pos = [str(j) for j in range(len(records))]
                cols, texts = trace_rows(
                    model,
                    tok,
                    [r.text for r in records],
                    probe,
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    seed=seed + k * chunk_size,
                    chat_template=None,
                    include_prompt=include_prompt,
                    batch_size=None,
                    temperature=None,
                    top_p=None,
                    ids=pos,
                    reference=reference,
                )
                summ = summarize(cols, pos, texts)
                cols["prompt_id"] = [ids[int(j)] for j in cols["prompt_id"]]
                summ.pop("prompt_id")
                summ = {
                    "prompt_id": ids,
                    "source": [r.source for r in records],
                    "line": [r.line for r in records],
                    **summ,
                }
                _write(work / f"summary-{k:06d}.parquet", arrow_table(summ))
                sha = _write(work / part_name(k), arrow_table(cols))
                atomic_write_bytes(
                    work / errors_name(k),
                    "".join(
                        json.dumps({"source": b.source, "line": b.line, "problem": b.problem}) + "\n" for b in bad
                    ).encode(),
                )
                ckpt.record(k, len(records), len(bad), sha, resume, [len(records)])
                tokens += len(cols["token_index"])
                new += 1
                if bar is not None:
                    el = max(time.perf_counter() - t0, 1e-9)
                    bar.update(len(records) + len(bad))
                    bar.set_postfix_str(f"{tokens / el:,.0f} tokens read/s", refresh=False)
                if max_chunks is not None and new >= max_chunks:
                    break
    finally:
        if bar is not None:
            bar.close()  # also on error, as emofast score does
    finished = max_chunks is None or new < max_chunks
    summary_out = summary_path(out)
    if finished:
        finish_shards(work, ckpt.chunks, out)
        assemble([work / f"summary-{c['index']:06d}.parquet" for c in ckpt.chunks], summary_out)
    return TraceSummary(
        prompts=sum(c["rows"] for c in ckpt.chunks),
        tokens=tokens,
        errors=sum(c["errors"] for c in ckpt.chunks),
        chunks=len(ckpt.chunks),
        resumed_chunks=resumed,
        seconds=time.perf_counter() - t0,
        out=str(out),
        summary=str(summary_out),
    )
