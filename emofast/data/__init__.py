"""Data: paired datasets (``pairs``), corpus readers (``textio``) and the bundled datasets (``datasets/``).

May import: the standard library, numpy; never ``capture``, ``probe``, ``commands`` or ``report``.

Example:
    >>> from emofast.data import load_pairs
    >>> data = load_pairs()                       # the bundled five pairs
    >>> [p.name for p in data.pairs][:2]
    ['sad_vs_happy', 'angry_vs_calm']
"""

from .pairs import (
    OPTIONAL_SPLITS,
    SPLITS,
    UNMATCHED_SPLITS,
    DataError,
    Pair,
    PairedDataset,
    bundled_path,
    load_jsonl,
    load_pairs,
    parse_pair,
)

__all__ = [
    "DataError",
    "Pair",
    "PairedDataset",
    "load_pairs",
    "load_jsonl",
    "bundled_path",
    "parse_pair",
    "SPLITS",
    "OPTIONAL_SPLITS",
    "UNMATCHED_SPLITS",
]
