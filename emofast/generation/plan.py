"""What to add to the residual stream, row by row: the backend-agnostic half of steering.

A *setting* is what one generated row is steered with: ``{pair_name: alpha}`` (possibly empty: unsteered). A
*vector table* is ``{pair_name: {layer: (d [D] unit, sigma)}}`` (:func:`emofast.generation.steering_vectors`, or
:func:`emofast.generation.steer.random_vectors` for the control). :func:`row_additions` turns one setting per row
(and one vector table shared by all rows, or one per row) into ``{layer: [B, D]}``: the vector each row gets added
at each layer (zeros where a row is not steered at that layer). Nothing here knows how a backend applies it: the
Hugging Face hooks live in :mod:`emofast.generation.steer`; another backend (vLLM) can apply the same tensors.

Example:
    >>> import torch
    >>> vecs = {"sad_vs_happy": {3: (torch.tensor([1.0, 0.0]), 2.0)}}
    >>> add = row_additions([{"sad_vs_happy": 1.0}, {}, {"sad_vs_happy": 0.5}], vecs)
    >>> add[3].tolist()
    [[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["row_additions", "as_settings", "shared_additions"]


def as_settings(alphas, n_rows: int | None = None) -> list[dict]:
    """Normalise ``alphas`` to one setting per row: a dict (the same for every row; needs ``n_rows``) or a list of
    dicts (one per row, ``None`` meaning unsteered)."""
    if isinstance(alphas, Mapping):
        if n_rows is None:
            raise ValueError("a single setting needs the number of rows")
        return [dict(alphas) for _ in range(n_rows)]
    if isinstance(alphas, (str, bytes)) or not isinstance(alphas, Sequence):
        raise TypeError(f"alphas: expected {{pair: alpha}} or a list of them, got {type(alphas).__name__}")
    out = []
    for i, a in enumerate(alphas):
        if a is None:
            a = {}
        if not isinstance(a, Mapping):
            raise TypeError(f"alphas[{i}]: expected {{pair: alpha}} (or None), got {type(a).__name__}")
        out.append(dict(a))
    if n_rows is not None and len(out) != n_rows:
        raise ValueError(f"{len(out)} steering settings for {n_rows} prompts: give one per prompt")
    return out


def _table_of(vectors, row: int):
    if isinstance(vectors, Mapping):
        return vectors
    return vectors[row]


def row_additions(settings: list[dict], vectors, *, dtype=torch.float32, device=None) -> dict[int, torch.Tensor]:
    """``{layer: [B, D]}``: for each row, ``sum over its pairs of alpha · sigma_layer · d_layer``.

    Args:
        settings: one ``{pair: alpha}`` per row (``B`` rows).
        vectors: a vector table shared by all rows, or a list of ``B`` tables (e.g. the random control on some rows).

    Layers no row is steered at are left out; a pair with alpha 0 adds nothing.
    """
    if not isinstance(vectors, Mapping) and len(vectors) != len(settings):
        raise ValueError(f"{len(vectors)} vector tables for {len(settings)} rows")
    per_layer: dict[int, dict[int, torch.Tensor]] = {}
    dim = None
    for i, setting in enumerate(settings):
        table = _table_of(vectors, i)
        for name, alpha in setting.items():
            if not alpha:
                continue
            if name not in table:
                raise ValueError(f"row {i}: no steering vectors for pair {name!r} (have {sorted(table)})")
            for layer, (d, sigma) in table[name].items():
                v = float(alpha) * float(sigma) * torch.as_tensor(d, dtype=torch.float32)
                dim = v.shape[-1] if dim is None else dim
                if v.shape != (dim,):
                    raise ValueError(f"row {i}, pair {name!r}, layer {layer}: vector of shape {tuple(v.shape)}")
                rows = per_layer.setdefault(int(layer), {})
                rows[i] = rows[i] + v if i in rows else v
    out = {}
    for layer, rows in sorted(per_layer.items()):
        t = torch.zeros(len(settings), dim, dtype=torch.float32)
        for i, v in rows.items():
            t[i] = v
        out[layer] = t.to(device=device, dtype=dtype)
    return out


def shared_additions(additions: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """``{layer: [D]}`` when every row gets the same addition (one setting for all rows); otherwise unchanged."""
    out = {}
    for layer, t in additions.items():
        if t.ndim == 2 and t.shape[0] > 0 and bool((t == t[:1]).all()):
            out[layer] = t[0]
        else:
            return additions
    return out
