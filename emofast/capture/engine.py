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

import numpy as np
import torch

from .models import Layout, resolve_layout
from .plan import (
    Batch,
    NonFiniteError,
    Options,
    PassStats,
    advance,
    check_finite,
    normalize_layers,
    plan_batches,
    prepare_texts,
    progress,
    resolve_position,
    row_plan,
    to_device,
)

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


class _Stop(Exception):
    """Raised inside the hook of the deepest requested layer to end the forward pass early."""


# ---------------------------------------------------------------------------------------------- planning


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
    """The shared prefix's KV cache and, per requested layer, its hidden states plus their sum as a last row
    (``states``, ``[1, P + 1, D]`` fp32) and that sum alone (``sums``, ``[D]`` fp32)."""

    def __init__(self, layout: Layout, ids: list[int], layers: list[int], device, config):
        from transformers import DynamicCache

        self.length = len(ids)
        self.states: dict[int, torch.Tensor] = {}
        self.sums: dict[int, torch.Tensor] = {}
        self.cache = DynamicCache(config=config)

        def sink(_slot, layer, hidden):
            h = hidden.float()
            self.states[layer] = torch.cat([h, h.sum(dim=1, keepdim=True)], dim=1)  # [1, P + 1, D]
            self.sums[layer] = self.states[layer][0, -1]

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
        # Inputs are built in numpy and handed over once (no per-text torch ops).
        ids = np.full((B, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((B, width), dtype=np.int64)
        pad = np.empty(B, dtype=np.int64)
        for r, i in enumerate(idx):
            suffix = self.encodings[i][plen:]
            pad[r] = width - len(suffix)
            ids[r, pad[r] :] = suffix
            mask[r, pad[r] :] = 1
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0) + plen
        ids, mask, positions = to_device(np.stack([ids, mask, positions]), self.device).unbind(0)  # one transfer
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
            kwargs["position_ids"] = positions
        # A mean is summed unweighted and scaled once per batch; the prefix's sum row is added once per layer.
        mean = self.position == "mean"
        lengths = self.lengths[idx]
        batch = Batch(
            index=idx,
            lengths=lengths,
            rows=row_plan(idx, lengths, pad, plen, self.position, self.device, weighted=not mean),
            scale=1.0 / lengths if mean else None,
            add=("prefix_sum",) if mean and plen else (),
        )
        prefix = self.prefix if plen else None
        self.reducer.begin(batch)

        def sink(slot, layer, hidden):
            sources = {"live": hidden}
            if prefix is not None:
                sources["prefix"] = prefix.states[layer]
                sources["prefix_sum"] = prefix.sums[layer]
            self.reducer.layer(slot, batch, sources)

        hooks = _Hooks(self.layout, self.layers, sink)
        try:
            _forward(self.layout, kwargs, hooks, self.layers)
        finally:
            hooks.remove()
        check_finite(self.reducer.end(batch), self.layers, self.model)
        return B * width


# Batch size that last ran out of memory on each model: later passes start below it.
_OOM_CAP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
    bar = progress(opts.progress, len(texts), opts.desc)
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
                    advance(bar, len(idx), done_tokens, t0)
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    stats.index = np.concatenate(done) if done else np.zeros(0, dtype=np.int64)
    stats.texts, stats.tokens, stats.seconds = len(stats.index), done_tokens, time.perf_counter() - t0
    return stats
