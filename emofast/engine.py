"""The capture engine: forward hooks copy out only the selected rows of each requested layer, as it runs.

One pass over a set of texts:

1. render (chat template) and tokenize each text; refuse empty texts and texts longer than the context;
2. sort by token length and cut into batches (a fixed count, or a token budget);
3. with a chat template, run the prefix all texts share (system turn, user header) once and reuse its keys
   and values for every batch;
4. run the *base* model (never the LM head, no KV cache kept beyond the batch) with hooks on the blocks that
   hand each requested layer's hidden states ``[B, T, D]`` to a reducer, and stop the forward pass right after
   the deepest requested layer;
5. the reducer calls the fused select-reduce kernel (:mod:`emofast.kernels`) on the device, so that only
   per-text rows, per-label sums or projections leave it.

Layer indices follow Hugging Face ``output_hidden_states``: 0 is the input of the first block (the embedding
stage's output, with any model-specific scaling), ``i`` the output of block ``i``, and ``L`` the final norm's
output (for models that have one).
"""

from __future__ import annotations

import copy
import time
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .models import Layout, resolve_layout
from .prompts import check_texts, render_prompts, tokenize

__all__ = [
    "Options",
    "Batch",
    "PassStats",
    "run_pass",
    "prepare_texts",
    "NonFiniteError",
    "normalize_layers",
    "resolve_position",
]


class NonFiniteError(FloatingPointError):
    """Raised when a selected hidden state is inf or NaN (usually fp16 overflow)."""


class _Stop(Exception):
    """Raised inside the hook of the deepest requested layer to end the forward pass early."""


@dataclass
class Options:
    """How one pass runs (the public functions fill it from their keyword arguments)."""

    layers: list[int]
    position: str | int = "last"
    chat_template: bool = False
    system_prompt: str | None = None
    batch_size: int | None = None
    max_tokens: int | None = None
    share_prefix: bool | None = None
    truncate: bool = False
    progress: bool = False
    deterministic: bool = False
    desc: str = "emofast"
    shard: tuple[int, int] | None = None  # (rank, world_size): run only batches j with j % world_size == rank


def normalize_layers(layers, num_layers: int) -> list[int]:
    """Turn ``layers`` (None, an int, a sequence; negatives count from the end) into indices in ``0..L``."""
    total = num_layers + 1
    if layers is None:
        return list(range(total))
    if isinstance(layers, (int, np.integer)):
        layers = [int(layers)]
    out = []
    for item in layers:
        if not isinstance(item, (int, np.integer)) or isinstance(item, bool):
            raise TypeError(f"layer indices must be ints, got {item!r}")
        i = int(item)
        if not -total <= i < total:
            raise ValueError(f"layer {i} is out of range: this model has layers 0..{num_layers}")
        out.append(i % total)
    if not out:
        raise ValueError("layers is empty")
    return out


def resolve_position(position) -> str | int:
    if isinstance(position, str):
        if position not in ("last", "mean"):
            raise ValueError(f"position={position!r}: expected 'last', 'mean' or an int token index")
        return position
    if isinstance(position, (int, np.integer)) and not isinstance(position, bool):
        return int(position)
    raise TypeError(f"position must be 'last', 'mean' or an int, got {position!r}")


# ---------------------------------------------------------------------------------------------- planning


def plan_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None) -> list[np.ndarray]:
    """Indices of each batch: texts sorted by length, longest first (an out-of-memory shows at once).

    With ``max_tokens``, a batch holds as many texts as fit ``count * longest <= max_tokens`` (at least one),
    capped at ``batch_size``.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, i = [], 0
    while i < len(order):
        n = batch_size
        if max_tokens is not None:
            n = max(1, min(n, max_tokens // max(1, int(lengths[order[i]]))))
        batches.append(order[i : i + n])
        i += n
    return batches


@dataclass
class Batch:
    """One batch as the reducers see it.

    Attributes:
        index: ``[B]`` positions of the batch's texts in the input.
        lengths: ``[B]`` full token lengths (shared prefix included).
        rows: list of ``(source, batch_index [R], token_index [R], weights [R] or None, segment [R])``:
            which rows of which tensor make up each text's vector; ``source`` is ``"live"`` (the layer's hidden
            states for this batch) or ``"prefix"`` (the shared prefix's states, plus its sum as a last row).
            ``segment`` is the text's position ``0..B-1`` inside the batch.
    """

    index: np.ndarray
    lengths: np.ndarray
    rows: list

    def __post_init__(self):
        self._moved: dict = {}

    def rows_on(self, device: torch.device) -> list:
        """``rows`` with its tensors on ``device`` (layers of a ``device_map`` model live on several)."""
        if not self.rows or self.rows[0][1].device == device:
            return self.rows
        if device not in self._moved:
            self._moved[device] = [
                (src, *(None if t is None else t.to(device) for t in tensors)) for src, *tensors in self.rows
            ]
        return self._moved[device]


def _row_plan(index, lengths, pad, prefix_len, position, device) -> list:
    """Rows to take for each text: see :class:`Batch`.

    A text of ``n`` tokens sits in its row of the batch after ``pad`` pads, minus the ``prefix_len`` tokens
    served by the shared prefix; token ``j`` of the text is ``j`` of the prefix states when ``j < prefix_len``,
    else column ``pad + j - prefix_len`` of the live states. For ``"mean"``, the prefix's tokens enter through
    the sum row the prefix states carry at index ``prefix_len``.
    """
    n = np.asarray(lengths, dtype=np.int64)
    pad = np.asarray(pad, dtype=np.int64)
    texts = np.arange(len(n))
    sources = []
    if position == "mean":
        count = n - prefix_len
        seg = np.repeat(texts, count)
        within = np.arange(len(seg)) - np.repeat(np.cumsum(count) - count, count)
        w = 1.0 / n
        sources.append(("live", seg, pad[seg] + within, w[seg], seg))
        if prefix_len:
            sources.append(("prefix", np.zeros_like(texts), np.full_like(texts, prefix_len), w, texts))
    else:
        j = n - 1 if position == "last" else (np.full_like(n, position) if position >= 0 else n + position)
        bad = np.flatnonzero((j < 0) | (j >= n))
        if len(bad):
            i = bad[0]
            raise IndexError(f"position={position} is outside texts[{index[i]}], which has {n[i]} tokens")
        pre = j < prefix_len
        live = texts[~pre]
        sources.append(("live", live, pad[live] + j[live] - prefix_len, None, live))
        sources.append(("prefix", np.zeros(int(pre.sum()), dtype=np.int64), j[pre], None, texts[pre]))
    plan = []
    for src, b, t, w, seg in sources:
        if len(b):
            as_i64 = lambda v: torch.as_tensor(v, dtype=torch.int64).to(device)  # noqa: E731
            wt = None if w is None else torch.as_tensor(w, dtype=torch.float32).to(device)
            plan.append((src, as_i64(b), as_i64(t), wt, as_i64(seg)))
    return plan


# ------------------------------------------------------------------------------------------------ hooks


class _Hooks:
    """Forward hooks that hand ``(slot, hidden [B, T, D])`` to ``sink`` and stop after the deepest layer."""

    def __init__(self, layout: Layout, layers: list[int], sink):
        self.handles = []
        self.seen: set[int] = set()
        L = layout.num_layers
        deepest = max(layers)
        by_layer: dict[int, list[int]] = {}
        for slot, layer in enumerate(layers):
            by_layer.setdefault(layer, []).append(slot)

        def emit(layer, hidden):
            if isinstance(hidden, (tuple, list)):  # Falcon & co. return (hidden, ...)
                hidden = hidden[0]
            for slot in by_layer[layer]:
                sink(slot, layer, hidden)
            self.seen.add(layer)
            if layer == deepest:
                raise _Stop

        for layer in sorted(by_layer):
            if layer == 0:

                def pre(_mod, args, kwargs, layer=layer):
                    emit(layer, args[0] if args else kwargs["hidden_states"])

                self.handles.append(layout.blocks[0].register_forward_pre_hook(pre, with_kwargs=True))
                continue
            module = layout.final_norm if (layer == L and layout.final_norm is not None) else layout.blocks[layer - 1]

            def post(_mod, _args, output, layer=layer):
                emit(layer, output)

            self.handles.append(module.register_forward_hook(post))

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


def _input_device(model) -> torch.device:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight.device
    return next(model.parameters()).device


def _forward(layout: Layout, kwargs: dict, hooks: _Hooks, layers: list[int]):
    try:
        layout.base(**kwargs)
    except _Stop:
        pass
    missing = sorted(set(layers) - hooks.seen)
    if missing:
        raise RuntimeError(
            f"hooks for layers {missing} never fired on {type(layout.base).__name__} (blocks={layout.blocks_path!r}, "
            f"final_norm={layout.final_norm_path!r}); pass blocks=/final_norm= explicitly"
        )


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        val = getattr(tokenizer, attr, None)
        if isinstance(val, int):
            return val
    return 0


def _shared_prefix(encodings: list[list[int]]) -> int:
    """Length of the longest common token prefix, leaving at least one token of each text outside it."""
    if len(encodings) < 2:
        return 0
    first = encodings[0]
    n = min(len(e) for e in encodings) - 1
    k = 0
    while k < n and all(e[k] == first[k] for e in encodings):
        k += 1
    return k


class _PrefixState:
    """The shared prefix's KV cache and, per requested layer, its hidden states plus their sum as a last row."""

    def __init__(self, layout: Layout, ids: list[int], layers: list[int], device, config):
        from transformers import DynamicCache

        self.length = len(ids)
        self.states: dict[int, torch.Tensor] = {}
        self.cache = DynamicCache(config=config)

        def sink(_slot, layer, hidden):
            h = hidden.float()
            self.states[layer] = torch.cat([h, h.sum(dim=1, keepdim=True)], dim=1)  # [1, P + 1, D]

        hooks = _Hooks(layout, layers, sink)
        t = torch.tensor([ids], dtype=torch.long, device=device)
        kwargs = {"input_ids": t, "attention_mask": torch.ones_like(t), "use_cache": True, layout.cache_arg: self.cache}
        if layout.position_ids:
            kwargs["position_ids"] = torch.arange(self.length, device=device)[None]
        try:
            _forward(layout, kwargs, hooks, layers)
        finally:
            hooks.remove()

    def cache_for(self, batch: int):
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(batch)
        return cache


def _sliding_window(config) -> int | None:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(cfg, "use_sliding_window", True) is False:
        return None
    w = getattr(cfg, "sliding_window", None)
    return w if isinstance(w, int) and w > 0 else None


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class _Pass:
    """State of one :func:`run_pass`: the tokenized texts, the shared prefix, the hooks' sink."""

    def __init__(self, model, layout, encodings, lengths, reducer, opts, position, pad_id, device):
        self.model, self.layout, self.reducer, self.opts = model, layout, reducer, opts
        self.encodings, self.lengths, self.position = encodings, lengths, position
        self.pad_id, self.device = pad_id, device
        self.layers = opts.layers
        self.prefix = None
        share = opts.chat_template if opts.share_prefix is None else opts.share_prefix
        if share and layout.causal and layout.cache_arg is not None:
            plen = _shared_prefix(encodings)
            if plen >= 4:  # shorter is not worth a cache
                self.prefix = _PrefixState(layout, encodings[0][:plen], sorted(set(self.layers)), device, model.config)
        self.window = _sliding_window(model.config)

    def run_batch(self, idx: np.ndarray) -> int:
        """Run one batch; return the number of (padded) token positions the model computed."""
        B = len(idx)
        plen = self.prefix.length if self.prefix is not None else 0
        width = int(self.lengths[idx].max()) - plen
        if plen and self.window is not None and plen + width > self.window:
            # A sliding window counts cache slots, and padding between the prefix and a text would shift it:
            # such a batch runs whole, left-padded, as the reference does.
            plen, width = 0, width + plen
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, width), dtype=torch.long)
        pad = np.empty(B, dtype=np.int64)
        for r, i in enumerate(idx):
            suffix = self.encodings[i][plen:]
            pad[r] = width - len(suffix)
            ids[r, pad[r] :] = torch.tensor(suffix, dtype=torch.long)
            mask[r, pad[r] :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        kwargs = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
        if plen:
            ones = torch.ones((B, plen), dtype=mask.dtype, device=self.device)
            kwargs.update(
                {
                    "attention_mask": torch.cat([ones, mask], dim=1),
                    "use_cache": True,
                    self.layout.cache_arg: self.prefix.cache_for(B),
                }
            )
        if self.layout.position_ids:
            kwargs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0) + plen
        batch = Batch(
            index=idx,
            lengths=self.lengths[idx],
            rows=_row_plan(idx, self.lengths[idx], pad, plen, self.position, self.device),
        )
        prefix_states = self.prefix.states if plen else None
        self.reducer.begin(batch)

        def sink(slot, layer, hidden):
            sources = {"live": hidden}
            if prefix_states is not None:
                sources["prefix"] = prefix_states[layer]
            self.reducer.layer(slot, batch, sources)

        hooks = _Hooks(self.layout, self.layers, sink)
        try:
            _forward(self.layout, kwargs, hooks, self.layers)
        finally:
            hooks.remove()
        _check_finite(self.reducer.end(batch), self.layers, self.model)
        return B * width


# Batch size that last ran out of memory on each model: later passes start below it.
_OOM_CAP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class PassStats:
    """What one pass did: texts, real (unpadded) tokens, padded tokens the model ran, wall seconds, and the
    input positions of the texts it ran (all of them, unless the pass was sharded)."""

    texts: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def as_dict(self) -> dict:
        return {
            "texts": self.texts,
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "seconds": self.seconds,
            "index": self.index,
        }


def prepare_texts(tokenizer, texts, reducer, opts: Options, max_positions: int | None):
    """What every backend does first: check the texts, start the reducer, render and tokenize, check lengths.

    Returns:
        ``(position, encodings, lengths [N])``.
    """
    texts = check_texts(texts)
    position = resolve_position(opts.position)
    reducer.start(len(texts), opts.layers)
    prompts = render_prompts(tokenizer, texts, opts.chat_template, opts.system_prompt) if texts else []
    encodings = _check_lengths(tokenize(tokenizer, prompts), max_positions, opts.truncate)
    return position, encodings, np.array([len(e) for e in encodings], dtype=np.int64)


def run_pass(model, tokenizer, texts, reducer, opts: Options, *, blocks=None, final_norm="auto") -> PassStats:
    """Run the model over ``texts`` and feed each batch's selected rows to ``reducer``.

    ``reducer`` has ``start(n, layers)``, ``begin(batch: Batch)``, ``layer(slot, batch, sources)`` where
    ``sources`` maps each row source of :class:`Batch` to its tensor (``"live"``: the layer's ``[B, T, D]``),
    and ``end(batch)``, which returns ``(slot, tensor)`` pairs to check for non-finite values.

    On an out-of-memory error the batch is halved and retried; later batches, and later passes on the same
    model, keep the smaller size. With ``opts.shard = (rank, world_size)`` only every ``world_size``-th batch
    of the full, length-sorted plan runs: each text is then computed with exactly the companions and padding
    of a single-process pass, so data-parallel results equal single-process ones.
    """
    layout = resolve_layout(model, blocks=blocks, final_norm=final_norm)
    position, encodings, lengths = prepare_texts(tokenizer, texts, reducer, opts, layout.max_positions)
    stats = PassStats()
    if not encodings:
        return stats
    device = _input_device(model)
    batch_size = opts.batch_size or (32 if device.type == "cuda" else 16)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if opts.max_tokens is not None and opts.max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {opts.max_tokens}")
    was_training = model.training
    model.eval()
    bar = _progress(opts.progress, len(texts), opts.desc)
    t0, done_tokens = time.perf_counter(), 0
    cap = min(batch_size, _OOM_CAP.get(model, batch_size))
    try:
        with torch.inference_mode():
            state = _Pass(model, layout, encodings, lengths, reducer, opts, position, _pad_id(tokenizer), device)
            done = []
            for j, planned in enumerate(plan_batches(lengths, batch_size, opts.max_tokens)):
                if opts.shard is not None and j % opts.shard[1] != opts.shard[0]:
                    continue
                pending = [planned]
                while pending:
                    idx = pending.pop(0)
                    if len(idx) > cap:
                        pending[:0] = [idx[:cap], idx[cap:]]
                        continue
                    try:
                        stats.padded_tokens += state.run_batch(idx)
                    except RuntimeError as exc:
                        if not (_is_oom(exc) and len(idx) > 1):
                            raise
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        cap = max(1, len(idx) // 2)
                        _OOM_CAP[model] = cap
                        warnings.warn(
                            f"out of memory at {len(idx)} texts per batch; retrying with {cap}",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                        pending[:0] = [idx[:cap], idx[cap:]]
                        continue
                    done_tokens += int(lengths[idx].sum())
                    done.append(idx)
                    _advance(bar, len(idx), done_tokens, t0)
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    stats.index = np.concatenate(done) if done else np.zeros(0, dtype=np.int64)
    stats.texts, stats.tokens, stats.seconds = len(stats.index), done_tokens, time.perf_counter() - t0
    return stats


def _check_lengths(encodings, max_positions, truncate):
    if max_positions is None:
        return encodings
    out = []
    for i, e in enumerate(encodings):
        if len(e) > max_positions:
            if not truncate:
                raise ValueError(
                    f"texts[{i}] is {len(e)} tokens long, more than the model's context of {max_positions}; "
                    "shorten it, or pass truncate=True to keep its last tokens"
                )
            warnings.warn(
                f"texts[{i}]: {len(e)} tokens truncated to the last {max_positions}", UserWarning, stacklevel=4
            )
            e = e[-max_positions:]
        out.append(e)
    return out


def _check_finite(checks, layers, model):
    if not checks:
        return
    flags = torch.stack([torch.isfinite(t).all() for _, t in checks]).cpu()
    if bool(flags.all()):
        return
    slot = checks[int((~flags).nonzero()[0, 0])][0]
    dtype = next(model.parameters()).dtype
    raise NonFiniteError(
        f"non-finite activations (inf/NaN) at layer {layers[slot]} with the model in {dtype}; this is usually "
        "fp16 overflow: load the model with dtype='bfloat16' (GPUs from Ampere on) or dtype='float32'"
    )


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="text", dynamic_ncols=True, smoothing=0.1)


def _advance(bar, texts: int, done_tokens: int, t0: float) -> None:
    """Move the progress bar (if any) on by ``texts`` and show the token rate since ``t0``."""
    if bar is not None:
        bar.update(texts)
        rate = done_tokens / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
