"""Capture: text → prompt → batch → hooks → kernel → per-text vectors, per-label sums or projections.

Modules, in the order the data flows: ``models`` (loading, block lists, dtypes), ``loader`` (``load_model`` for
every backend), ``prompts`` (chat template, tokenization), ``plan`` (the batch plan and pass plumbing every
backend shares), ``engine`` (the Hugging Face pass: hooks, shared prefix, early exit), ``reducers`` (what each
hook keeps, through :mod:`emofast.kernels`), ``accumulator`` (per-label sums), ``api`` (``extract``,
``accumulate``, ``project``), ``distributed`` (data- and tensor-parallel runners).

May import: :mod:`emofast.kernels` and the standard stack (torch, transformers); never ``probe``, ``commands``
or ``report``.
"""

from .accumulator import Accumulator
from .api import accumulate, accumulate_sets, extract, project
from .loader import load_model
from .models import resolve_layout
from .plan import NonFiniteError

__all__ = [
    "load_model",
    "extract",
    "accumulate",
    "accumulate_sets",
    "project",
    "Accumulator",
    "NonFiniteError",
    "resolve_layout",
]
