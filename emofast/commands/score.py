"""Streaming, resumable corpus scoring: ``emofast score``.

The input (a file or a folder of shards) is read in chunks of ``chunk_size`` records. Each chunk is scored,
written as one Parquet shard, and recorded in a checkpoint; shards and checkpoints are written to a temporary
file and renamed, so a process killed at any moment (even by SIGKILL) leaves only complete files. Running the
same command again resumes after the last recorded chunk, and the result is identical to an uninterrupted run.

Layout of the work folder (``OUT`` itself when it is a folder, ``OUT.parts/`` when ``OUT`` names a ``.parquet``
or ``.csv`` file, which is assembled at the end in input order)::

    part-000000.parquet ...   scores of chunk k (id, source, line, and the probe's columns)
    errors-000000.jsonl ...   records of chunk k that could not be scored (source, line, problem)
    checkpoint-rank0.json     progress of rank 0: chunks done, where to resume, fingerprints, shard hashes
    manifest.json             written at the end: the shards in input order, row and error counts
    errors.jsonl              written at the end: every bad record

Under ``torchrun`` every rank takes the chunks ``k`` with ``k % world_size == rank``; rank 0 writes the manifest
(and the assembled file) once all ranks are done.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.textio import BadRecord, input_files, iter_records, sha256_file
from ..fileio import atomic_write_bytes, write_json

__all__ = ["score_corpus", "CheckpointError", "ScoreSummary", "fingerprint_inputs", "count_records"]

FORMAT = 1


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

    def line(self) -> str:
        return (
            f"scored {self.rows:,} texts ({self.errors:,} bad records skipped) in {self.seconds:.1f} s: "
            f"{self.texts_per_s:,.1f} texts/s, {self.tokens_per_s:,.0f} tokens/s -> {self.out}"
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


class _Checkpoint:
    """A rank's progress, sealed with a SHA-256 of its own content so that corruption is detected."""

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
        for key in ("probe", "input", "format", "world_size", "chunk_size", "columns"):
            if body["identity"].get(key) != self.identity.get(key):
                what = {
                    "probe": "another probe",
                    "input": "another input",
                    "world_size": "another world size",
                    "chunk_size": "another chunk size",
                }.get(key, f"another {key}")
                raise CheckpointError(
                    f"{self.path}: this checkpoint belongs to {what} ({key} differs); refusing to merge. "
                    f"Use another --out, or delete {work} to start over"
                )
        for c in body["chunks"]:
            shard = work / _part_name(c["index"])
            if not shard.is_file() or sha256_file(shard) != c["sha256"]:
                raise CheckpointError(f"{shard}: missing or changed since the checkpoint; delete {work} to start over")
        self.chunks = body["chunks"]
        self.resume = body["resume"]

    def record(self, index, rows, errors, sha, resume) -> None:
        self.chunks.append({"index": index, "rows": rows, "errors": errors, "sha256": sha})
        self.resume = list(resume)
        body = {"identity": self.identity, "chunks": self.chunks, "resume": self.resume}
        write_json(self.path, indent=1, sort_keys=True, obj={"body": body, "sha256": self._seal(body)})


def _part_name(k: int) -> str:
    return f"part-{k:06d}.parquet"


def _errors_name(k: int) -> str:
    return f"errors-{k:06d}.jsonl"


def _chunks(path, chunk_size: int, start):
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
    rank: int = 0,
    world_size: int = 1,
    barrier=None,
    probe_id: str | None = None,
    max_chunks: int | None = None,
    replica: bool = False,
) -> ScoreSummary:
    """Score every text of ``input_path`` against ``probe`` into ``out``, resumably.

    Args:
        probe: a :class:`~emofast.PairedProbe`.
        input_path: a JSONL, text, CSV or Parquet file, or a folder of them (see :func:`emofast.textio.iter_records`).
        out: a folder for the shards and manifest, or a ``.parquet``/``.csv`` file assembled at the end.
        chunk_size: records per shard and checkpoint.
        strict: stop at the first bad record (unparsable line, empty text) instead of logging and skipping it.
        rank, world_size, barrier: data-parallel position under ``torch.distributed`` (``barrier`` is called
            before rank 0 writes the manifest).
        probe_id: identity of the probe for the checkpoint (default: a hash of its tensors and spec).
        max_chunks: stop after this many new chunks (for tests and benchmarks that simulate an interruption).
        replica: a tensor-parallel peer of rank 0 (``tp_plan="auto"``): it scores the same chunks as rank 0, so
            that the model's collectives pair up, reads rank 0's checkpoint to skip the same chunks, and writes
            nothing.

    Returns:
        A :class:`ScoreSummary`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    single = out.suffix.lower() in (".parquet", ".csv")
    work = out.with_name(out.name + ".parts") if single else out
    work.mkdir(parents=True, exist_ok=True)
    columns = probe.column_names()
    identity = {
        "format": FORMAT,
        "probe": probe_id or _probe_id(probe),
        "input": fingerprint_inputs(input_path),
        "world_size": world_size,
        "chunk_size": chunk_size,
        "columns": columns,
    }
    if replica:
        rank, world_size, identity["world_size"] = 0, 1, 1
    ckpt = _Checkpoint(work / f"checkpoint-rank{rank}.json", identity)
    if ckpt.path.exists():
        ckpt.load(work)
    resumed = len(ckpt.chunks)
    done = {c["index"] for c in ckpt.chunks}
    # Chunks are numbered in input order; rank r owns k % world_size == r. One process resumes right after its
    # last chunk; with several ranks, each re-reads (parsing only, not scoring) the chunks before its next one.
    start, first = ([0, 1], 0) if world_size > 1 or not ckpt.chunks else (ckpt.resume, len(ckpt.chunks))
    total = count_records(input_path)
    bar = None
    if progress and rank == 0 and not replica:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="text", desc="score", dynamic_ncols=True, smoothing=0.05)
        bar.update(sum(c["rows"] + c["errors"] for c in ckpt.chunks) * world_size)
    t0 = time.perf_counter()
    rows = errors = tokens = 0
    new_chunks = 0
    for k, (records, bad, resume) in enumerate(_chunks(input_path, chunk_size, tuple(start)), start=first):
        if k % world_size != rank or k in done:
            continue
        if strict and bad:
            raise ValueError(f"bad input record (--strict): {bad[0]}")
        stats: dict = {}
        cols = probe.score(
            model,
            tokenizer,
            [r.text for r in records],
            batch_size=batch_size,
            max_tokens=max_tokens,
            progress=False,
            stats=stats,
        )
        if replica:
            new_chunks += 1
            if max_chunks is not None and new_chunks >= max_chunks:
                break
            continue
        table = pa.table(
            {
                "id": pa.array([r.id for r in records], pa.string()),
                "source": pa.array([r.source for r in records], pa.string()),
                "line": pa.array([r.line for r in records], pa.int64()),
                **{c: _column(v) for c, v in cols.items()},
            }
        )
        part = work / _part_name(k)
        tmp = part.with_name(part.name + f".tmp{os.getpid()}")
        pq.write_table(table, tmp)
        os.replace(tmp, part)
        atomic_write_bytes(
            work / _errors_name(k),
            "".join(
                json.dumps({"source": b.source, "line": b.line, "problem": b.problem}) + "\n" for b in bad
            ).encode(),
        )
        ckpt.record(k, len(records), len(bad), sha256_file(part), resume)
        rows += len(records)
        errors += len(bad)
        tokens += stats.get("tokens", 0)
        new_chunks += 1
        if bar is not None:
            el = max(time.perf_counter() - t0, 1e-9)
            bar.update((len(records) + len(bad)) * world_size)
            bar.set_postfix_str(f"{rows / el:,.1f} texts/s, {tokens / el:,.0f} tok/s, {errors} bad", refresh=False)
        if max_chunks is not None and new_chunks >= max_chunks:
            break
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    finished = max_chunks is None or new_chunks < max_chunks
    if barrier is not None:
        barrier()
    if rank == 0 and finished and not replica:
        _finish(work, out if single else None, world_size)
    n_rows = sum(c["rows"] for c in ckpt.chunks)
    n_err = sum(c["errors"] for c in ckpt.chunks)
    return ScoreSummary(
        rows=n_rows,
        errors=n_err,
        chunks=len(ckpt.chunks),
        seconds=seconds,
        texts_per_s=rows / max(seconds, 1e-9),
        tokens_per_s=tokens / max(seconds, 1e-9),
        out=str(out),
        resumed_chunks=resumed,
    )


def _column(values):
    """A probe column as Arrow: float32 scores, or strings (an emotion space's ``top`` label)."""
    import pyarrow as pa

    v = np.asarray(values)
    return pa.array(v.astype(str), pa.string()) if v.dtype.kind in "OUS" else pa.array(v, pa.float32())


def _probe_id(probe) -> str:
    h = hashlib.sha256()
    h.update(probe.directions.numpy().tobytes())
    h.update(probe.midpoints.numpy().tobytes())
    h.update(json.dumps(probe._spec(), sort_keys=True, default=str).encode())
    return h.hexdigest()


def _finish(work: Path, single: Path | None, world_size: int) -> None:
    """Write the manifest and errors.jsonl from every rank's checkpoint; assemble ``single`` if asked."""
    import pyarrow.parquet as pq

    chunks = []
    for r in range(world_size):
        path = work / f"checkpoint-rank{r}.json"
        obj = json.loads(path.read_text())
        chunks += obj["body"]["chunks"]
    chunks.sort(key=lambda c: c["index"])
    indices = [c["index"] for c in chunks]
    if indices != list(range(len(indices))):
        missing = sorted(set(range(max(indices, default=-1) + 1)) - set(indices))
        raise CheckpointError(f"{work}: chunks {missing} are missing; run the same command again to finish them")
    manifest = {
        "format": FORMAT,
        "shards": [
            {"file": _part_name(c["index"]), "rows": c["rows"], "errors": c["errors"], "sha256": c["sha256"]}
            for c in chunks
        ],
        "rows": sum(c["rows"] for c in chunks),
        "errors": sum(c["errors"] for c in chunks),
        "errors_file": "errors.jsonl",
    }
    with open(work / "errors.jsonl.tmp", "wb") as f:
        for c in chunks:
            f.write((work / _errors_name(c["index"])).read_bytes())
    os.replace(work / "errors.jsonl.tmp", work / "errors.jsonl")
    write_json(work / "manifest.json", indent=1, sort_keys=True, obj=manifest)
    if single is None:
        return
    tmp = single.with_name(single.name + ".tmp")
    files = [work / s["file"] for s in manifest["shards"]]
    if single.suffix.lower() == ".parquet":
        writer = None
        for f in files:
            t = pq.read_table(f)
            writer = writer or pq.ParquetWriter(tmp, t.schema)
            writer.write_table(t)
        if writer is None:
            raise CheckpointError(f"{work}: no shards to assemble")
        writer.close()
    else:
        import pyarrow.csv as pcsv

        writer = None
        for f in files:
            t = pq.read_table(f)
            writer = writer or pcsv.CSVWriter(str(tmp), t.schema)
            writer.write_table(t)
        if writer is None:
            raise CheckpointError(f"{work}: no shards to assemble")
        writer.close()
    os.replace(tmp, single)
