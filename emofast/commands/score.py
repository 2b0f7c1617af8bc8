"""Streaming, resumable corpus scoring: ``emofast score``.

The input (a file or a folder of shards) is read in chunks of ``chunk_size`` records. Each chunk is scored,
written as one Parquet shard, and recorded in a checkpoint; shards and checkpoints are written to a temporary
file and renamed, so a process killed at any moment (even by SIGKILL) leaves only complete files. Running the
same command again resumes after the last recorded chunk, and the result is identical to an uninterrupted run.

Layout of the work folder (``OUT`` itself when it is a folder, ``OUT.parts/`` when ``OUT`` names a ``.parquet``
or ``.csv`` file, which is assembled at the end in input order)::

    part-000000.parquet ...   scores of chunk k (id, source, line, and the probe's columns)
    errors-000000.jsonl ...   records of chunk k that could not be scored (source, line, problem)
    checkpoint.json           progress: chunks done, where to resume, fingerprints, shard hashes, per-rank counts
    manifest.json             written at the end: the shards in input order, row, error and per-rank text counts
    errors.jsonl              written at the end: every bad record

Under ``torchrun`` (a :class:`~emofast.capture.distributed.ShardedRunner`) every rank reads every chunk, plans the
same length-sorted batches as one process would, and computes every ``world_size``-th batch of it; the chunk's
projections are gathered, and rank 0 alone scores, writes the shard and records the checkpoint. A rank whose share
of a chunk is empty (a chunk of fewer batches than ranks) still joins the gather. Rank 0 reads the checkpoint and
broadcasts where to resume, so nothing waits for a file another rank writes. A shard is the same whatever the
world size, so a checkpoint is resumed with any number of processes and the result equals one uninterrupted
single-process run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.textio import BadRecord, input_files, iter_records, sha256_file
from ..fileio import atomic_write_bytes, write_json

__all__ = [
    "score_corpus",
    "CheckpointError",
    "ScoreSummary",
    "fingerprint_inputs",
    "count_records",
    "Checkpoint",
    "record_chunks",
    "part_name",
    "errors_name",
    "finish_shards",
    "assemble",
    "probe_identity",
]

FORMAT = 2  # 1: one checkpoint per rank, a chunk per rank (refused: delete its folder)


class CheckpointError(RuntimeError):
    """A checkpoint that is corrupted or belongs to another probe or input."""


@dataclass
class ScoreSummary:
    rows: int
    errors: int
    chunks: int
    seconds: float
    texts_per_s: float
    tokens_per_s: float
    out: str
    resumed_chunks: int
    rank_texts: list[int]  # texts each rank computed in this call

    def line(self) -> str:
        ranks = ""
        if len(self.rank_texts) > 1:
            ranks = " (texts per rank: " + " / ".join(f"{n:,}" for n in self.rank_texts) + ")"
        return (
            f"scored {self.rows:,} texts ({self.errors:,} bad records skipped) in {self.seconds:.1f} s: "
            f"{self.texts_per_s:,.1f} texts/s, {self.tokens_per_s:,.0f} tokens/s{ranks} -> {self.out}"
        )


def fingerprint_inputs(path) -> str:
    """Identity of the input: names, sizes, and SHA-256 of the first and last MiB of each file.

    Cheap for huge corpora, and it changes when a file is replaced, grows or is edited at either end.
    """
    h = hashlib.sha256()
    for f in input_files(path):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 1 << 20:
                fh.seek(max(size - (1 << 20), 1 << 20))
                h.update(fh.read())
    return h.hexdigest()


def count_records(path) -> int:
    """Number of records (lines, or rows), for the progress bar's ETA; cheap compared with scoring."""
    total = 0
    for f in input_files(path):
        ext = f.suffix.lower()
        if ext == ".parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(f).metadata.num_rows
            continue
        with open(f, "rb") as fh:
            n, last = 0, b"\n"
            for block in iter(lambda: fh.read(1 << 20), b""):
                n += block.count(b"\n")
                last = block[-1:]
            n += last != b"\n"
        total += n - (1 if ext == ".csv" else 0)
    return max(total, 0)


class Checkpoint:
    """The job's progress (rank 0 writes it), sealed with a SHA-256 of its own content to detect corruption."""

    def __init__(self, path: Path, identity: dict):
        self.path = path
        self.identity = identity
        self.chunks: list[dict] = []  # per done chunk: index, rows, errors, sha256, resume
        self.resume = [0, 1]

    @staticmethod
    def _seal(body: dict) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def load(self, work: Path) -> None:
        try:
            obj = json.loads(self.path.read_text())
            body, seal = obj["body"], obj["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{self.path}: corrupted checkpoint ({exc}); delete {work} to start over") from None
        if self._seal(body) != seal:
            raise CheckpointError(
                f"{self.path}: corrupted checkpoint (its checksum does not match); delete {work} to start over"
            )
        for key in ("probe", "input", "format", "chunk_size", "columns", "settings"):
            if body["identity"].get(key) != self.identity.get(key):
                what = {
                    "probe": "another probe",
                    "input": "another input",
                    "chunk_size": "another chunk size",
                    "settings": "other settings",
                }.get(key, f"another {key}")
                raise CheckpointError(
                    f"{self.path}: this checkpoint belongs to {what} ({key} differs); refusing to merge. "
                    f"Use another --out, or delete {work} to start over"
                )
        for c in body["chunks"]:
            shard = work / part_name(c["index"])
            if not shard.is_file() or sha256_file(shard) != c["sha256"]:
                raise CheckpointError(f"{shard}: missing or changed since the checkpoint; delete {work} to start over")
        self.chunks = body["chunks"]
        self.resume = body["resume"]

    def record(self, index, rows, errors, sha, resume, rank_texts, save: bool = True) -> None:
        """Add chunk ``index`` (``rank_texts``: texts each rank computed) and, with ``save``, write the file."""
        entry = {"index": index, "rows": rows, "errors": errors, "sha256": sha, "rank_texts": list(rank_texts)}
        self.chunks.append(entry)
        self.resume = list(resume)
        if save:
            body = {"identity": self.identity, "chunks": self.chunks, "resume": self.resume}
            write_json(self.path, indent=1, sort_keys=True, obj={"body": body, "sha256": self._seal(body)})


def part_name(k: int) -> str:
    return f"part-{k:06d}.parquet"


def errors_name(k: int) -> str:
    return f"errors-{k:06d}.jsonl"


def record_chunks(path, chunk_size: int, start):
    """Yield ``(records, bad, resume_after)``: ``resume_after`` is ``[file, line]`` where the next chunk starts."""
    records, bad = [], []
    last = None
    for fi, rec in iter_records(path, start=start):
        (bad if isinstance(rec, BadRecord) else records).append(rec)
        last = [fi, rec.line + 1]
        if len(records) + len(bad) >= chunk_size:
            yield records, bad, last
            records, bad = [], []
    if records or bad:
        yield records, bad, last


def score_corpus(
    probe,
    model,
    tokenizer,
    input_path,
    out,
    *,
    chunk_size: int = 4096,
    batch_size=None,
    max_tokens=None,
    strict: bool = False,
    progress: bool = True,
    runner=None,
    probe_id: str | None = None,
    max_chunks: int | None = None,
) -> ScoreSummary:
    """Score every text of ``input_path`` against ``probe`` into ``out``, resumably.

    Args:
        probe: a :class:`~emofast.PairedProbe` or an emotion space (``scoring_layers``, ``directions_for``,
            ``extraction`` and ``columns``).
        input_path: a JSONL, text, CSV or Parquet file, or a folder of them (see :func:`emofast.textio.iter_records`).
        out: a folder for the shards and manifest, or a ``.parquet``/``.csv`` file assembled at the end.
        chunk_size: records per shard and checkpoint.
        strict: stop at the first bad record (unparsable line, empty text) instead of logging and skipping it.
        runner: a :class:`~emofast.capture.distributed.Runner` (default: one process). Under ``torchrun`` a
            ``ShardedRunner`` splits every chunk by batch; a ``ReplicatedRunner`` (``tp_plan="auto"``) runs every
            batch on every rank. In both, rank 0 alone writes. Every rank must make the same call.
        probe_id: identity of the probe for the checkpoint (default: a hash of its tensors and spec).
        max_chunks: stop after this many new chunks (for tests and benchmarks that simulate an interruption).

    Returns:
        A :class:`ScoreSummary` (the same numbers on every rank).

    Example:
        >>> score_corpus(probe, model, tok, "corpus.jsonl", "scores.parquet")   # doctest: +SKIP
    """
    from ..capture.distributed import Runner

    runner = runner or Runner()
    writer = runner.rank == 0
    out = Path(out)
    single = out.suffix.lower() in (".parquet", ".csv")
    work = out.with_name(out.name + ".parts") if single else out
    ckpt = Checkpoint(work / "checkpoint.json", {})
    state = None
    if writer:
        # Rank 0 alone reads the checkpoint; every rank learns from it where to resume, or why not.
        try:
            work.mkdir(parents=True, exist_ok=True)
            ckpt.identity = {
                "format": FORMAT,
                "probe": probe_id or probe_identity(probe),
                "input": fingerprint_inputs(input_path),
                "chunk_size": chunk_size,
                "columns": probe.column_names(),
            }
            old = sorted(work.glob("checkpoint-rank*.json"))
            if old:
                raise CheckpointError(
                    f"{old[0]}: a checkpoint of an older emofast (one per rank, chunks split by rank), which this "
                    f"version cannot resume; delete {work} to start over"
                )
            if ckpt.path.exists():
                ckpt.load(work)
            state = ("ok", ckpt.chunks, ckpt.resume, count_records(input_path))
        except (CheckpointError, OSError, ValueError) as exc:
            state = ("error", type(exc).__name__, str(exc))
            runner.broadcast(state)
            raise
    state = runner.broadcast(state)
    if state[0] == "error":
        kinds = {"CheckpointError": CheckpointError, "ValueError": ValueError, "FileNotFoundError": FileNotFoundError}
        raise kinds.get(state[1], OSError)(f"(rank 0) {state[2]}")
    _, ckpt.chunks, ckpt.resume, total = state
    resumed = len(ckpt.chunks)
    # Only rank 0 writes, in input order, so the chunks done are 0..resumed-1 and the input resumes after them.
    start = ckpt.resume if ckpt.chunks else [0, 1]
    layers = probe.scoring_layers()
    directions = probe.directions_for(layers)
    bar = None
    if progress and writer:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="text", desc="score", dynamic_ncols=True, smoothing=0.05)
        bar.update(sum(c["rows"] + c["errors"] for c in ckpt.chunks))
    t0 = time.perf_counter()
    rows = errors = tokens = 0
    rank_texts: list[int] = []
    new_chunks = 0
    try:
        for k, (records, bad, resume) in enumerate(record_chunks(input_path, chunk_size, tuple(start)), start=resumed):
            if strict and bad:
                raise ValueError(f"bad input record (--strict): {bad[0]}")
            stats: dict = {}
            proj, norms = runner.project(
                model,
                tokenizer,
                [r.text for r in records],
                directions,
                layers=layers,
                batch_size=batch_size,
                max_tokens=max_tokens,
                progress=False,
                stats=stats,
                **probe.extraction(),
            )
            per_rank = stats.get("rank_texts", [len(records)])
            sha = _write_chunk(work, k, records, bad, probe.columns(proj, norms, layers)) if writer else None
            ckpt.record(k, len(records), len(bad), sha, resume, per_rank, save=writer)
            rows += len(records)
            errors += len(bad)
            tokens += stats.get("tokens", 0)
            rank_texts = _add_counts(rank_texts, per_rank)
            new_chunks += 1
            if bar is not None:
                el = max(time.perf_counter() - t0, 1e-9)
                bar.update(len(records) + len(bad))
                bar.set_postfix_str(f"{rows / el:,.1f} texts/s, {tokens / el:,.0f} tok/s, {errors} bad", refresh=False)
            if max_chunks is not None and new_chunks >= max_chunks:
                break
    finally:
        if bar is not None:
            bar.close()  # also on error: no bar left behind for the process's exit
    seconds = time.perf_counter() - t0
    finished = max_chunks is None or new_chunks < max_chunks
    if writer and finished:
        finish_shards(work, ckpt.chunks, out if single else None)
    return ScoreSummary(
        rows=sum(c["rows"] for c in ckpt.chunks),
        errors=sum(c["errors"] for c in ckpt.chunks),
        chunks=len(ckpt.chunks),
        seconds=seconds,
        texts_per_s=rows / max(seconds, 1e-9),
        tokens_per_s=tokens / max(seconds, 1e-9),
        out=str(out),
        resumed_chunks=resumed,
        rank_texts=rank_texts,
    )


def _write_chunk(work: Path, k: int, records, bad, cols: dict) -> str:
    """Write chunk ``k``'s shard (id, source, line, the probe's columns) and its bad records; the shard's SHA-256."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array([r.id for r in records], pa.string()),
            "source": pa.array([r.source for r in records], pa.string()),
            "line": pa.array([r.line for r in records], pa.int64()),
            **{c: _column(v) for c, v in cols.items()},
        }
    )
    part = work / part_name(k)
    tmp = part.with_name(part.name + f".tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, part)
    atomic_write_bytes(
        work / errors_name(k),
        "".join(json.dumps({"source": b.source, "line": b.line, "problem": b.problem}) + "\n" for b in bad).encode(),
    )
    return sha256_file(part)


def _add_counts(a: list[int], b: list[int]) -> list[int]:
    """Per-rank counts added position by position (the shorter list padded with zeros)."""
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


def _column(values):
    """A probe column as Arrow: float32 scores, or strings (an emotion space's ``top`` label)."""
    import pyarrow as pa

    v = np.asarray(values)
    return pa.array(v.astype(str), pa.string()) if v.dtype.kind in "OUS" else pa.array(v, pa.float32())


def probe_identity(probe) -> str:
    """A hash of a probe's tensors and spec: the checkpoint's identity of the probe."""
    h = hashlib.sha256()
    h.update(probe.directions.numpy().tobytes())
    h.update(probe.midpoints.numpy().tobytes())
    h.update(json.dumps(probe._spec(), sort_keys=True, default=str).encode())
    return h.hexdigest()


def finish_shards(work: Path, chunks: list[dict], single: Path | None) -> None:
    """Write the manifest and errors.jsonl from the checkpoint's chunks; assemble ``single`` if asked.

    ``rank_texts`` in the manifest: texts each rank computed, summed over the shards (a job resumed with another
    number of processes adds up its shards' lists position by position; ``world_sizes`` lists the sizes used).
    """
    indices = [c["index"] for c in chunks]
    if indices != list(range(len(indices))):
        raise CheckpointError(f"{work}: the checkpoint's chunks are not 0..{len(indices) - 1}; delete {work}")
    manifest = {
        "format": FORMAT,
        "shards": [
            {
                "file": part_name(c["index"]),
                "rows": c["rows"],
                "errors": c["errors"],
                "sha256": c["sha256"],
                "rank_texts": c["rank_texts"],
            }
            for c in chunks
        ],
        "rows": sum(c["rows"] for c in chunks),
        "errors": sum(c["errors"] for c in chunks),
        "rank_texts": functools.reduce(_add_counts, (c["rank_texts"] for c in chunks), []),
        "world_sizes": sorted({len(c["rank_texts"]) for c in chunks}),
        "errors_file": "errors.jsonl",
    }
    with open(work / "errors.jsonl.tmp", "wb") as f:
        for c in chunks:
            f.write((work / errors_name(c["index"])).read_bytes())
    os.replace(work / "errors.jsonl.tmp", work / "errors.jsonl")
    write_json(work / "manifest.json", indent=1, sort_keys=True, obj=manifest)
    if single is not None:
        assemble([work / sh["file"] for sh in manifest["shards"]], single)


def assemble(files, single: Path) -> None:
    """Concatenate Parquet ``files`` into ``single`` (``.parquet`` or ``.csv``), written to a temporary file and
    renamed."""
    import pyarrow.parquet as pq

    tmp = single.with_name(single.name + ".tmp")
    if single.suffix.lower() == ".parquet":
        writer = None
        for f in files:
            t = pq.read_table(f)
            writer = writer or pq.ParquetWriter(tmp, t.schema)
            writer.write_table(t)
        if writer is None:
            raise CheckpointError(f"{single}: no shards to assemble")
        writer.close()
    else:
        import pyarrow.csv as pcsv

        writer = None
        for f in files:
            t = pq.read_table(f)
            writer = writer or pcsv.CSVWriter(str(tmp), t.schema)
            writer.write_table(t)
        if writer is None:
            raise CheckpointError(f"{single}: no shards to assemble")
        writer.close()
    os.replace(tmp, single)
