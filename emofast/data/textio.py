"""Reading texts to score, in chunks, from JSONL, plain text, CSV or Parquet files (or a folder of them).

Every record keeps where it came from (file and line, or row for Parquet), so that a bad record can be reported
precisely; bad records come out as :class:`BadRecord` instead of stopping the read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Record", "BadRecord", "iter_records", "input_files", "sha256_file", "FORMATS"]

FORMATS = (".jsonl", ".txt", ".csv", ".parquet")


@dataclass(frozen=True)
class Record:
    """One text to score. ``line`` is 1-based (the file's line; for CSV and Parquet, the data row)."""

    id: str
    text: str
    source: str
    line: int


@dataclass(frozen=True)
class BadRecord:
    """A record that cannot be scored, and why."""

    source: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.problem}"


def sha256_file(path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_files(path) -> list[Path]:
    """The files to read: ``path`` itself, or the supported files of a folder, sorted by name."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
        if not files:
            raise FileNotFoundError(f"{path}: no {', '.join(FORMATS)} files in this folder")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: unsupported input format {path.suffix!r}; expected one of {', '.join(FORMATS)}")
    return [path]


def _check(text, source, line, rid):
    if not isinstance(text, str):
        return BadRecord(source, line, f"field 'text' must be a string, got {type(text).__name__}")
    if not text.strip():
        return BadRecord(source, line, "empty text")
    return Record(rid, text, source, line)


def _jsonl(path: Path, start_line: int) -> Iterator[Record | BadRecord]:
    src = str(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if lineno < start_line:
                continue
            if not line.strip():
                yield BadRecord(src, lineno, "empty line")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadRecord(src, lineno, f"invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                yield BadRecord(src, lineno, "expected a JSON object with a 'text' field")
                continue
            if "text" not in obj:
                yield BadRecord(src, lineno, "missing field 'text'")
                continue
            rid = obj.get("id", lineno)
            yield _check(obj["text"], src, lineno, str(rid))


def _txt(path: Path, start_line: int) -> Iterator[Record | BadRecord]:
    src = str(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if lineno >= start_line:
                yield _check(line.rstrip("\r\n"), src, lineno, str(lineno))


def _table_batches(path: Path, batch_rows: int):
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
    else:
        import pyarrow.csv as pcsv

        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=1 << 22),
            convert_options=pcsv.ConvertOptions(
                strings_can_be_null=False, column_types={"text": "string", "id": "string"}
            ),
        )
        yield from reader


def _table(path: Path, start_line: int, batch_rows: int) -> Iterator[Record | BadRecord]:
    src = str(path)
    row = 0
    for batch in _table_batches(path, batch_rows):
        names = batch.schema.names
        if "text" not in names:
            raise ValueError(f"{path}: no 'text' column (columns: {', '.join(names)})")
        texts = batch.column(names.index("text")).to_pylist()
        ids = batch.column(names.index("id")).to_pylist() if "id" in names else None
        for k, text in enumerate(texts):
            row += 1
            if row < start_line:
                continue
            rid = str(ids[k]) if ids is not None and ids[k] is not None else str(row)
            if text is None:
                yield BadRecord(src, row, "missing text (null)")
            else:
                yield _check(text, src, row, rid)


def iter_records(path, *, start: tuple[int, int] = (0, 1), batch_rows: int = 8192):
    """Yield ``(file_index, Record | BadRecord)`` for every record of ``path`` (a file or a folder of shards).

    Args:
        path: a ``.jsonl`` (``{"id", "text"}`` per line; ``id`` defaults to the line number), ``.txt`` (one text
            per line; the id is the line number), ``.csv`` or ``.parquet`` file with a ``text`` column (and an
            optional ``id`` column; else the row number), or a folder of such files (read in name order).
        start: ``(file_index, line)`` to resume from: earlier files and lines are skipped without parsing them.
    """
    files = input_files(path)
    first_file, first_line = start
    for fi, f in enumerate(files):
        if fi < first_file:
            continue
        line0 = first_line if fi == first_file else 1
        ext = f.suffix.lower()
        if ext == ".jsonl":
            gen = _jsonl(f, line0)
        elif ext == ".txt":
            gen = _txt(f, line0)
        else:
            gen = _table(f, line0, batch_rows)
        for rec in gen:
            yield fi, rec
