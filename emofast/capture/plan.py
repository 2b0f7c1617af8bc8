"""Pass plumbing that every capture backend shares: options, the length-sorted batch plan, the rows each text
contributes, pass statistics, the finiteness check and the progress bar.

The HF engine (:mod:`emofast.capture.engine`) and the vLLM backend (:mod:`emofast.backends.vllm`) both build on
this module, and neither imports the other's internals.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .models import model_id
from .prompts import check_texts, render_prompts, tokenize

__all__ = [
    "NonFiniteError",
    "non_finite_message",
    "Options",
    "Batch",
    "PassStats",
    "normalize_layers",
    "resolve_position",
    "position_window",
    "plan_batches",
    "row_plan",
    "to_device",
    "prepare_texts",
    "check_lengths",
    "check_finite",
    "progress",
    "advance",
]


class NonFiniteError(FloatingPointError):
    """Raised when a selected hidden state is inf or NaN (usually fp16 overflow)."""


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
    """Check a position: ``"last"``, ``"mean"``, ``"last-K"`` (mean over the last ``K`` tokens, ``K >= 1``;
    ``"last-1"`` is ``"last"``) or an int token index.

    Example:
        >>> resolve_position("last-8"), resolve_position("last-1"), resolve_position(-2)
        ('last-8', 'last', -2)
    """
    if isinstance(position, str):
        if position in ("last", "mean"):
            return position
        k = position_window(position) if position.startswith("last-") else None
        if k is None:
            raise ValueError(
                f"position={position!r}: expected 'last', 'mean', 'last-K' (mean over the last K tokens, K >= 1) "
                "or an int token index"
            )
        return "last" if k == 1 else f"last-{k}"
    if isinstance(position, (int, np.integer)) and not isinstance(position, bool):
        return int(position)
    raise TypeError(f"position must be 'last', 'mean', 'last-K' or an int, got {position!r}")


def position_window(position) -> int | None:
    """How many trailing tokens a position averages: 1 for ``"last"``, ``K`` for ``"last-K"``; None for
    ``"mean"``, an int index or anything else.

    Example:
        >>> position_window("last-8"), position_window("last"), position_window("mean")
        (8, 1, None)
    """
    if position == "last":
        return 1
    if isinstance(position, str) and position.startswith("last-"):
        tail = position[len("last-") :]
        if tail.isdigit() and int(tail) >= 1:
            return int(tail)
    return None


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
        scale: optional ``[B]`` factor applied to each text's summed rows (``1 / length`` for a mean whose rows
            come unweighted).
        add: names of sources holding one ``[D]`` row added to every text's vector (the shared prefix's sum).
    """

    index: np.ndarray
    lengths: np.ndarray
    rows: list
    scale: np.ndarray | None = None
    add: tuple = ()

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


def row_plan(index, lengths, pad, prefix_len, position, device, weighted: bool = True) -> list:
    """Rows to take for each text: see :class:`Batch`.

    ``weighted=False`` leaves the ``1 / length`` weights of ``"mean"`` out (the caller scales each text's sum
    instead, :attr:`Batch.scale`) and leaves out the prefix row, which the caller adds itself.

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
        sources.append(("live", seg, pad[seg] + within, w[seg] if weighted else None, seg))
        if prefix_len and weighted:
            sources.append(("prefix", np.zeros_like(texts), np.full_like(texts, prefix_len), w, texts))
    elif position_window(position) not in (None, 1):
        # mean over the last K tokens (fewer when the text is shorter): weighted rows, some maybe in the prefix
        count = np.minimum(n, position_window(position))
        seg = np.repeat(texts, count)
        j = np.repeat(n - count, count) + np.arange(len(seg)) - np.repeat(np.cumsum(count) - count, count)
        w = (1.0 / count)[seg]
        pre = j < prefix_len
        sources.append(("live", seg[~pre], pad[seg[~pre]] + j[~pre] - prefix_len, w[~pre], seg[~pre]))
        sources.append(("prefix", np.zeros(int(pre.sum()), dtype=np.int64), j[pre], w[pre], seg[pre]))
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
            wt = None if w is None else to_device(w, device, np.float32)
            b_t, t_t, seg_t = to_device(np.stack([b, t, seg]), device).unbind(0)  # one transfer for the three
            plan.append((src, b_t, t_t, wt, seg_t))
    return plan


def to_device(values, device, dtype=np.int64) -> torch.Tensor:
    """A numpy array as a tensor on ``device`` (no copy, and no op, where it already is).

    Example:
        >>> to_device(np.arange(3), "cpu")
        tensor([0, 1, 2])
    """
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=dtype))
    return t if t.device == torch.device(device) else t.to(device, non_blocking=True)


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
    encodings = check_lengths(tokenize(tokenizer, prompts), max_positions, opts.truncate)
    return position, encodings, np.array([len(e) for e in encodings], dtype=np.int64)


def check_lengths(encodings, max_positions, truncate):
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


def check_finite(checks, layers, model):
    if not checks:
        return
    flags = torch.stack([torch.isfinite(t).all() for _, t in checks]).cpu()
    if bool(flags.all()):
        return
    slot = checks[int((~flags).nonzero()[0, 0])][0]
    raise NonFiniteError(non_finite_message(layers[slot], next(model.parameters()).dtype, model_id(model)))


def non_finite_message(layer: int, dtype, model: str | None = None) -> str:
    """The :class:`NonFiniteError` message for an inf/NaN at ``layer`` of ``model`` (its name) in ``dtype``, with
    the advice that fits the dtype (fp16 is the T4 case: no native bf16 there)."""
    where = f"layer {layer}" + (f" of {model}" if model else "")
    head = f"non-finite activations (inf/NaN) at {where} with the model in {dtype}"
    if dtype == torch.float16:
        advice = (
            "this is fp16 overflow (fp16 ends at 65504): load the model with dtype='float32' (--dtype float32) "
            "where it fits; a model too big for one GPU in fp32 (7B: ~29 GB) can be spread over several with "
            "device_map='auto' (--device-map auto), e.g. the two T4s; dtype='bfloat16' only on GPUs with native "
            "bf16 (compute capability 8.0 on, not a T4); or probe earlier layers only"
        )
    elif dtype == torch.bfloat16:
        advice = "bf16 has fp32's range, so this is seldom overflow: try dtype='float32', and check the inputs"
    else:
        advice = "not an fp16 overflow: the model itself produced them (check its weights and inputs)"
    return f"{head}; {advice}"


def progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="text", dynamic_ncols=True, smoothing=0.1)


def advance(bar, texts: int, done_tokens: int, t0: float) -> None:
    """Move the progress bar (if any) on by ``texts`` and show the token rate since ``t0``."""
    if bar is not None:
        bar.update(texts)
        rate = done_tokens / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
