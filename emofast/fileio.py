"""Atomic file writes: a file is either its old content or its new content, never half of either.

Every run folder, probe, checkpoint and manifest emofast writes goes through these two functions, so that a run
killed at any moment leaves nothing half-written behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["atomic_write_bytes", "write_json"]


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsynced, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path, obj, *, indent: int = 2, sort_keys: bool = False) -> None:
    """Write ``obj`` as JSON (UTF-8, a final newline) atomically.

    Example:
        >>> write_json("metrics.json", {"a": 1})   # doctest: +SKIP
    """
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n").encode("utf-8"))
