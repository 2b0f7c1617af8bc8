"""The engine's public functions: :func:`extract`, :func:`accumulate`, :func:`project`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .accumulator import Accumulator
from .engine import run_pass
from .models import model_id, num_layers, resolve_layout
from .plan import Options, normalize_layers, resolve_position
from .reducers import ClassSumReducer, ProjectionReducer, RowsReducer

__all__ = ["extract", "accumulate", "accumulate_sets", "project"]


def _options(
    model, layers, position, chat_template, system_prompt, batch_size, progress, blocks, final_norm, **extra
) -> Options:
    if _backend(model) is None:
        n_layers = resolve_layout(model, blocks=blocks, final_norm=final_norm).num_layers
    else:
        n_layers = num_layers(model)
    return Options(
        layers=normalize_layers(layers, n_layers),
        position=resolve_position(position),
        chat_template=chat_template,
        system_prompt=system_prompt,
        batch_size=batch_size,
        progress=progress,
        **extra,
    )


def _backend(model):
    """The vLLM handle runs the same reducers inside its workers."""
    return getattr(model, "emofast_backend", None)


def extract(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    layers=None,
    position="last",
    chat_template: bool = False,
    system_prompt: str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    max_tokens: int | None = None,
    share_prefix: bool | None = None,
    truncate: bool = False,
    blocks=None,
    final_norm="auto",
    deterministic: bool = False,
    stats: dict | None = None,
    shard: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Hidden states of each text at one token position (or the mean), for the chosen layers.

    A fast, lean equivalent of ``torch.stack([h[:, -1] for h in generate(..., output_hidden_states=True)
    .hidden_states[0]], 1)``: only the requested rows are copied out as each layer runs, the LM head never runs,
    the pass stops after the deepest requested layer, and texts are batched by length.

    Args:
        model, tokenizer: from :func:`emofast.load_model` or any Hugging Face model and tokenizer.
        texts: ``N`` non-empty strings. An empty list gives an empty ``[0, nL, D]`` result.
        layers: indices as in ``output_hidden_states`` (0 = embeddings, ``i`` = block ``i``, ``L`` = the last
            entry, after the final norm); negatives count from the end; None = all ``L + 1``.
        position: ``"last"`` (last token; with ``chat_template=True``, the residual from which the first answer
            token is produced), ``"mean"`` (mean over the text's tokens), ``"last-K"`` (mean over the last ``K``
            tokens, all of them when the text is shorter; with a chat template these include the template's tail
            that opens the answer), or an int token index (negative counts from the end).
        chat_template: wrap each text as the user turn of the model's chat template, with
            ``add_generation_prompt=True``, after a system turn when ``system_prompt`` is given.
        batch_size: texts per batch (default 16 on CPU, 32 on GPU).
        progress: show a progress bar with texts/s and tokens/s.
        max_tokens: token budget per batch (``texts x longest``), capping ``batch_size``.
        share_prefix: compute the prefix all prompts share once and reuse its keys/values (default: on with
            ``chat_template``, for decoder models).
        truncate: texts longer than the model's context raise ``ValueError`` unless True, which keeps their last
            tokens (with a warning).
        blocks, final_norm: where the block list and final norm are, for models emofast cannot map itself.
        deterministic: bit-reproducible reductions on GPU (no atomics).
        stats: a dict to receive the pass's ``texts``, ``tokens``, ``padded_tokens``, ``seconds`` and ``index``
            (the input positions it ran).
        shard: ``(rank, world_size)``: run only every ``world_size``-th batch of the length-sorted plan (data
            parallelism, see :mod:`emofast.distributed`); rows of the other batches are left unset.

    Returns:
        ``[N, len(layers), D]`` float32 on the CPU, rows in input order.

    Example:
        >>> model, tok = emofast.load_model("smollm2")                                   # doctest: +SKIP
        >>> x = emofast.extract(model, tok, ["I lost my keys."], chat_template=True)     # doctest: +SKIP
        >>> x.shape                                                                      # doctest: +SKIP
        torch.Size([1, 31, 576])
    """
    opts = _options(
        model,
        layers,
        position,
        chat_template,
        system_prompt,
        batch_size,
        progress,
        blocks,
        final_norm,
        max_tokens=max_tokens,
        share_prefix=share_prefix,
        truncate=truncate,
        deterministic=deterministic,
        shard=shard,
        desc="extract",
    )
    reducer = RowsReducer(deterministic=deterministic)
    _run(model, tokenizer, texts, reducer, opts, blocks, final_norm, stats)
    if reducer.out is None:
        return torch.empty(0, len(opts.layers), _hidden_size(model), dtype=torch.float32)
    return reducer.out


def _run(model, tokenizer, texts, reducer, opts, blocks, final_norm, stats):
    backend = _backend(model)
    reducer.model_name = model_id(model)
    if backend is not None:
        result = backend.run_pass(tokenizer, texts, reducer, opts)
    else:
        result = run_pass(model, tokenizer, texts, reducer, opts, blocks=blocks, final_norm=final_norm)
    if stats is not None:
        stats.update(result.as_dict())
    return result


def _hidden_size(model) -> int:
    cfg = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    raise ValueError(f"cannot tell the hidden size of {type(model).__name__}")


def _label_ids(labels, n: int, label_names):
    if isinstance(labels, (str, bytes)):
        raise TypeError("labels must be a sequence with one label per text, not a single string")
    labels = list(labels)
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries but texts has {n}; give exactly one label per text")
    for i, lab in enumerate(labels):
        if lab is None or (isinstance(lab, float) and np.isnan(lab)):
            raise ValueError(f"labels[{i}] is missing")
    names = [str(x) for x in labels]
    if label_names is None:
        label_names = list(dict.fromkeys(names))
    else:
        label_names = [str(x) for x in label_names]
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"label_names has duplicates: {label_names}")
        unknown = sorted(set(names) - set(label_names))
        if unknown:
            raise ValueError(f"labels {unknown} are not in label_names {label_names}")
    index = {name: i for i, name in enumerate(label_names)}
    return np.array([index[x] for x in names], dtype=np.int64), label_names


def accumulate(
    model,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence,
    *,
    layers=None,
    position="last",
    chat_template: bool = False,
    system_prompt: str | None = None,
    label_names: Sequence[str] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    max_tokens: int | None = None,
    share_prefix: bool | None = None,
    truncate: bool = False,
    blocks=None,
    final_norm="auto",
    deterministic: bool = False,
    stats: dict | None = None,
    shard: tuple[int, int] | None = None,
) -> Accumulator:
    """Per-label, per-layer sums and counts of the texts' vectors, without holding the per-text rows.

    Same arguments as :func:`extract`, plus:

    Args:
        labels: one label per text (any hashable; compared as strings).
        label_names: the label set and its order (default: order of first appearance). Give it explicitly when
            accumulators from several shards or ranks will be merged.

    Returns:
        An :class:`~emofast.Accumulator` with ``sums [C, nL, D]`` (fp64) and ``counts [C]``; ``acc.mean(label)``
        equals the mean of :func:`extract` rows of that label.

    Example:
        >>> acc = emofast.accumulate(model, tok, ["so sad", "so happy"], ["sad", "happy"])   # doctest: +SKIP
        >>> direction = acc.mean("sad") - acc.mean("happy")                                # doctest: +SKIP
    """
    kw = dict(
        layers=layers,
        position=position,
        chat_template=chat_template,
        system_prompt=system_prompt,
        batch_size=batch_size,
        progress=progress,
        max_tokens=max_tokens,
        share_prefix=share_prefix,
        truncate=truncate,
        blocks=blocks,
        final_norm=final_norm,
        deterministic=deterministic,
        stats=stats,
        shard=shard,
    )
    return accumulate_sets(model, tokenizer, texts, [labels], label_names=label_names, **kw)[0]


def accumulate_sets(
    model,
    tokenizer,
    texts: Sequence[str],
    label_sets: Sequence[Sequence],
    *,
    label_names: Sequence[str] | None = None,
    layers=None,
    position="last",
    chat_template: bool = False,
    system_prompt: str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    max_tokens: int | None = None,
    share_prefix: bool | None = None,
    truncate: bool = False,
    blocks=None,
    final_norm="auto",
    deterministic: bool = False,
    stats: dict | None = None,
    shard: tuple[int, int] | None = None,
) -> list[Accumulator]:
    """Several labelings of the same texts accumulated in one pass (e.g. real and shuffled sides).

    Args:
        label_sets: ``S`` sequences of one label per text; every set uses ``label_names`` (default: the first
            set's labels in order of first appearance), so the sets must share their label names.
        (the rest as in :func:`accumulate`)

    Returns:
        ``S`` :class:`~emofast.Accumulator`, one per label set.

    Example:
        >>> real, shuffled = accumulate_sets(model, tok, texts, [labels, perm])  # doctest: +SKIP
    """
    texts = list(texts)
    if not label_sets:
        raise ValueError("label_sets is empty")
    ids, names = _label_ids(label_sets[0], len(texts), label_names)
    all_ids = [ids] + [_label_ids(ls, len(texts), names)[0] for ls in label_sets[1:]]
    opts = _options(
        model,
        layers,
        position,
        chat_template,
        system_prompt,
        batch_size,
        progress,
        blocks,
        final_norm,
        max_tokens=max_tokens,
        share_prefix=share_prefix,
        truncate=truncate,
        deterministic=deterministic,
        shard=shard,
        desc="accumulate",
    )
    reducer = ClassSumReducer(np.stack(all_ids), len(names), deterministic=deterministic)
    ran = _run(model, tokenizer, texts, reducer, opts, blocks, final_norm, stats).index  # all but sharded passes
    c, n_layers = len(names), len(opts.layers)
    sums = reducer.sums
    if sums is None:
        sums = torch.zeros(len(all_ids) * c, n_layers, _hidden_size(model), dtype=torch.float64)
    meta = {
        "model": model_id(model),
        "position": opts.position,
        "chat_template": chat_template,
        "system_prompt": system_prompt,
    }
    return [
        Accumulator(
            names,
            opts.layers,
            sums[s * c : (s + 1) * c].clone(),
            torch.as_tensor(np.bincount(set_ids[ran], minlength=c), dtype=torch.int64),
            meta,
        )
        for s, set_ids in enumerate(all_ids)
    ]


def project(
    model,
    tokenizer,
    texts: Sequence[str],
    directions: torch.Tensor,
    *,
    layers,
    position="last",
    chat_template: bool = False,
    system_prompt: str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    max_tokens: int | None = None,
    share_prefix: bool | None = None,
    truncate: bool = False,
    blocks=None,
    final_norm="auto",
    deterministic: bool = False,
    stats: dict | None = None,
    shard: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projections of each text's vector on per-layer directions, and the vectors' norms.

    Only ``K + 1`` numbers per text and layer leave the device; the vectors themselves are never stored.

    Args:
        directions: ``[len(layers), K, D]``, one set of ``K`` directions per requested layer.
        layers: the layers (required), in the order of ``directions``.
        (the rest as in :func:`extract`)

    Returns:
        ``(proj [N, len(layers), K], norms [N, len(layers)])`` float32 on the CPU, in input order:
        ``proj[n, l, k] = x[n, l] . directions[l, k]`` and ``norms[n, l] = |x[n, l]|``.

    Example:
        >>> proj, norms = emofast.project(model, tok, texts, dirs, layers=[10, 11])   # doctest: +SKIP
    """
    opts = _options(
        model,
        layers,
        position,
        chat_template,
        system_prompt,
        batch_size,
        progress,
        blocks,
        final_norm,
        max_tokens=max_tokens,
        share_prefix=share_prefix,
        truncate=truncate,
        deterministic=deterministic,
        shard=shard,
        desc="score",
    )
    directions = torch.as_tensor(directions)
    if directions.dim() != 3 or directions.shape[0] != len(opts.layers):
        raise ValueError(
            f"directions must be [len(layers), K, D] = [{len(opts.layers)}, K, D], got {tuple(directions.shape)}"
        )
    reducer = ProjectionReducer(directions, deterministic=deterministic)
    _run(model, tokenizer, texts, reducer, opts, blocks, final_norm, stats)
    return reducer.proj, reducer.norms
