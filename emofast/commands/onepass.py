"""One model pass per text in ``emofast run``.

The run needs, for every text, its projections on the probe's directions at every candidate layer; the train
texts also give the directions. Rather than a train pass (directions) and then a projection pass over every text
(which runs the train texts twice), the run extracts each text's rows of every layer once and computes the
directions and all projections from them. The rows are ``N × (L+1) × D`` fp32: 122 MB for the bundled data on
SmolLM2, about 1 GB at 7B size. Above a budget (``EMOFAST_ROWS_BUDGET_GB``, 4 GB by default) they are written to
a memory-mapped file in the run folder (removed at the end), except for ``mean-diff``, which then keeps the
streamed two-pass path (sums through :func:`emofast.accumulate`, no rows). ``timing.json`` says which.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

__all__ = ["plan_passes", "extraction_of", "extract_rows", "project_rows", "remove_spill", "SPILL_DIR"]

SPILL_DIR = ".rows"
CHUNK = 1024


def plan_passes(model, n_texts: int, method: str, budget_gb: float | None = None) -> dict:
    """``{"mode", "spill", "rows_bytes"}``: one pass with rows in memory, one pass with memory-mapped rows, or the
    streamed two passes (``mean-diff`` above the budget)."""
    from ..capture.models import num_layers

    budget = float(budget_gb if budget_gb is not None else os.environ.get("EMOFAST_ROWS_BUDGET_GB", 4)) * 2**30
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if hidden is None:  # a backend handle (vLLM): the streamed path
        return {"mode": "two passes (streamed)", "spill": False, "rows_bytes": None}
    rows_bytes = n_texts * (num_layers(model) + 1) * int(hidden) * 4
    if rows_bytes <= budget:
        return {"mode": "one pass (rows in memory)", "spill": False, "rows_bytes": rows_bytes}
    if method == "mean-diff":
        return {"mode": "two passes (streamed)", "spill": False, "rows_bytes": rows_bytes}
    return {"mode": "one pass (rows memory-mapped)", "spill": True, "rows_bytes": rows_bytes}


def extraction_of(tokenizer, chat_template, system_prompt, position) -> dict:
    """The extraction keyword arguments, ``chat_template="auto"`` resolved as :meth:`PairedProbe.fit` does."""
    if chat_template == "auto":
        chat_template = getattr(tokenizer, "chat_template", None) is not None
    return {
        "position": position,
        "chat_template": bool(chat_template),
        "system_prompt": system_prompt if chat_template else None,
    }


def extract_rows(runner, model, tokenizer, texts, *, spill_dir=None, **kw) -> torch.Tensor:
    """``[N, L+1, D]`` fp32 rows of every text at every layer, in input order; memory-mapped under
    ``spill_dir/.rows/`` when given (chunks of 1,024 texts go through the model in turn; one file per rank)."""
    if spill_dir is None:
        return runner.extract(model, tokenizer, texts, **kw)
    folder = Path(spill_dir) / SPILL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    mm = None
    for start in range(0, len(texts), CHUNK):
        part = runner.extract(model, tokenizer, texts[start : start + CHUNK], **kw)
        if mm is None:
            mm = np.lib.format.open_memmap(
                folder / "rows.npy", mode="w+", dtype=np.float32, shape=(len(texts), *part.shape[1:])
            )
        mm[start : start + len(part)] = part.numpy()
    mm.flush()
    return torch.from_numpy(mm)


def project_rows(rows: torch.Tensor, directions: torch.Tensor, chunk: int = 4096):
    """``(proj [N, nL, K], norms [N, nL])`` fp32 from rows ``[N, nL, D]`` and directions ``[nL, K, D]``, as
    :func:`emofast.project` returns them."""
    n = rows.shape[0]
    proj = torch.empty((n, directions.shape[0], directions.shape[1]), dtype=torch.float32)
    norms = torch.empty((n, rows.shape[1]), dtype=torch.float32)
    d = directions.float()
    for s in range(0, n, chunk):
        x = torch.as_tensor(rows[s : s + chunk]).float()
        proj[s : s + len(x)] = torch.einsum("nld,lkd->nlk", x, d)
        norms[s : s + len(x)] = torch.linalg.vector_norm(x, dim=-1)
    return proj, norms


def remove_spill(spill_dir) -> None:
    if spill_dir is not None:
        shutil.rmtree(Path(spill_dir) / SPILL_DIR, ignore_errors=True)
