"""Per-token readings of a probe while the model generates.

:func:`trace` generates with the KV cache (batched, left-padded) and, at each of the probe's scoring layers, hooks
the residual stream: at every step it projects the step's hidden states on the probe's directions on the device
and keeps only the projections and the norms (``K + 1`` numbers per token and layer), never the hidden states.
The probe turns them into its calibrated readings (:meth:`PairedProbe.columns`; an emotion-space probe offers the
same method), one row per token.

The reading of token ``j`` is the residual at position ``j``, the state from which the model produces token
``j + 1``; for the last prompt token this is the study's reading of the prompt. Generation never feeds back its
last token, so one extra cached step reads it. A probe fitted at ``position="last-K"`` reads the mean of the
residuals at ``max(0, j-K+1)..j`` instead (a moving mean of the projections, see
:mod:`emofast.generation.readings`), which at the last prompt token is its own score of the prompt.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..capture.models import resolve_layout
from ..capture.prompts import check_texts, render_prompts
from .backend import is_vllm, vllm_readings
from .hooks import input_device, residual_hook
from .readings import REFERENCE_TEXTS, reading_columns, reading_window, window_readings
from .table import TraceTable, cut_at_end

__all__ = ["trace", "trace_rows", "token_reference", "Recorder", "encode_prompts", "generation_kwargs"]


class Recorder:
    """Hooks that keep, per scoring layer and step, projections ``[B, T, K]`` and norms ``[B, T]`` on the device.

    Example:
        >>> with Recorder(model, probe) as rec:         # doctest: +SKIP
        ...     model.generate(**enc, max_new_tokens=8)
        >>> proj, norms = rec.stacked()                 # [B, T, nL, K], [B, T, nL]
    """

    def __init__(self, model, probe, layers=None):
        self.layout = resolve_layout(model)
        self.layers = list(layers) if layers is not None else probe.scoring_layers()
        dirs = probe.directions_for(self.layers)  # [nL, K, D]
        self.dirs = dirs.to(input_device(model), torch.float32)
        self.steps: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in self.layers]
        self.handles = []

    def _hook(self, slot):
        d = self.dirs[slot]

        def read(hidden):
            h = hidden.to(d.device, torch.float32)
            self.steps[slot].append((h @ d.T, torch.linalg.vector_norm(h, dim=-1)))

        return read

    def __enter__(self):
        self.handles = [residual_hook(self.layout, layer, self._hook(i)) for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def clear(self):
        self.steps = [[] for _ in self.layers]

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(proj [B, T, nL, K], norms [B, T, nL])`` on the CPU, the steps concatenated along ``T`` (one copy)."""
        proj = torch.stack([torch.cat([p for p, _ in s], dim=1) for s in self.steps], dim=2)
        norms = torch.stack([torch.cat([n for _, n in s], dim=1) for s in self.steps], dim=2)
        return proj.cpu(), norms.cpu()


def encode_prompts(tok, prompts, *, chat_template: bool, system_prompt: str | None, device):
    """Render (chat template) and tokenize with left padding: ``(input_ids [B, P], attention_mask [B, P])``."""
    texts = render_prompts(tok, prompts, chat_template, system_prompt if chat_template else None)
    # the tokenizer's own special tokens, exactly as the capture engine (and so the probe's fit) tokenizes
    enc = tok(texts, return_tensors="pt", padding=True)
    if tok.padding_side != "left":
        raise ValueError("the tokenizer must pad on the left for batched generation (emofast.load_model sets it)")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def generation_kwargs(tok, *, max_new_tokens: int, do_sample: bool, temperature=None, top_p=None) -> dict:
    kw = {"max_new_tokens": int(max_new_tokens), "do_sample": bool(do_sample), "pad_token_id": tok.pad_token_id}
    if do_sample:
        kw.update({"temperature": temperature or 0.8, "top_p": top_p or 0.95})
    else:
        kw.update({"temperature": None, "top_p": None, "top_k": None})
    return kw


def _read_last(model, out, mask):
    """Run the last generated token through the model once more (cached), so that it gets a reading."""
    cache = getattr(out, "past_key_values", None)
    if cache is None:
        cache = getattr(out, "cache", None)
    if cache is None:
        raise RuntimeError("generate returned no cache")
    arg = resolve_layout(model).cache_arg or "past_key_values"
    seq = out.sequences
    full = torch.cat(
        [mask, torch.ones(seq.shape[0], seq.shape[1] - mask.shape[1], dtype=mask.dtype, device=mask.device)], 1
    )
    pos = (full.long().cumsum(-1) - 1).clamp(min=0)[:, -1:]
    with torch.inference_mode():
        model(input_ids=seq[:, -1:], attention_mask=full, position_ids=pos, **{arg: cache})


def _prompt_readings(model, tok, probe, texts, chat_template, system_prompt, batch_size):
    """Per text, the readings of every real token of the rendered prompt: ``(proj [P, nL, K], norms [P, nL])``."""
    layers = probe.scoring_layers()
    if is_vllm(model):
        for g in vllm_readings(model, tok, probe, texts, chat_template=chat_template, system_prompt=system_prompt):
            yield g.proj, g.norms
        return
    with torch.inference_mode():
        for b0 in range(0, len(texts), batch_size):
            ids, mask = encode_prompts(
                tok,
                texts[b0 : b0 + batch_size],
                chat_template=chat_template,
                system_prompt=system_prompt,
                device=input_device(model),
            )
            pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
            with Recorder(model, probe, layers) as rec:
                model(input_ids=ids, attention_mask=mask, position_ids=pos)
            proj, norms = rec.stacked()  # [B, T, nL, K], [B, T, nL]
            m = mask.cpu().bool()
            for i in range(ids.shape[0]):
                real = torch.nonzero(m[i]).flatten()
                yield proj[i, real], norms[i, real]


def token_reference(model, tok, probe, texts=None, *, chat_template=None, batch_size: int = 16) -> dict:
    """Per-token mean and spread of each reading column on neutral text: ``{column: (mean, sd)}`` plus
    ``"_n_tokens"``.

    ``texts``: neutral user turns (default: the first :data:`REFERENCE_TEXTS` of the bundled neutral set). Every
    real token of every rendered prompt (template tokens included: a trace reads them too) except sinks counts,
    each read over the probe's trailing window as a trace reads it (a ``"last-K"`` probe: the mean of the last
    ``K`` residuals; a window holding a sink is a sink).
    The default reference is kept on the probe (``probe.token_reference``) with the model and template it was
    measured with, so a second trace of the same model with the same template reuses it. It must be measured on
    the unsteered model: inside :class:`~emofast.generation.steer.Steering` a missing reference is an error
    (measure it first, as :func:`emofast.steer` does).
    """
    default = texts is None
    ex = probe.extraction()
    if chat_template is None:
        chat_template = ex.get("chat_template", True)
    chat_template = bool(chat_template and getattr(tok, "chat_template", None) is not None)
    system_prompt = ex.get("system_prompt") if chat_template else None
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    window = reading_window(probe)
    key = repr((id(model), name, chat_template, system_prompt, ex.get("position", "last")))
    cached = getattr(probe, "token_reference", None)
    if default and cached is not None and cached.get("_key") == key:
        return cached
    if getattr(model, "emofast_steering_active", 0):
        raise RuntimeError(
            "the per-token reference must be measured on the unsteered model, and steering is active: call "
            "emofast.generation.trace.token_reference(model, tok, probe) before entering Steering and pass it as "
            "reference=, or pass reference=None"
        )
    if default:
        from ..data.pairs import bundled_path, load_jsonl

        texts = [t for _, t in load_jsonl(bundled_path() / "neutral.jsonl")][:REFERENCE_TEXTS]
    layers = probe.scoring_layers()
    names = reading_columns(probe.column_names())
    values = {c: [] for c in names}
    for proj, norms in _prompt_readings(model, tok, probe, texts, chat_template, system_prompt, batch_size):
        proj, norms, sink = window_readings(proj, norms, window or 1)
        keep = torch.nonzero(~sink).flatten()
        col = probe.columns(proj[keep], norms[keep], layers)
        for c in names:
            values[c].append(np.asarray(col[c], dtype=np.float64))
    ref: dict = {"_n_tokens": int(sum(len(v) for v in values[names[0]])) if names else 0}
    for c in names:
        v = np.concatenate(values[c]) if values[c] else np.zeros(0)
        sd = float(v.std()) if len(v) > 1 else 1.0
        ref[c] = (float(v.mean()) if len(v) else 0.0, sd if sd > 0 else 1.0)
    if default:
        ref["_key"] = key
        probe.token_reference = ref
    return ref


def trace(
    model,
    tok,
    prompts,
    probe,
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    seed: int = 0,
    chat_template: bool | None = None,
    include_prompt: bool = True,
    batch_size: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    ids=None,
    reference="neutral",
):
    """Generate from ``prompts`` and read ``probe`` at every token.

    Args:
        model, tok: a Hugging Face causal LM and its tokenizer (:func:`emofast.load_model`), or a vLLM handle
            (``backend="vllm"``: the same table, read inside vLLM's workers, see
            :mod:`emofast.backends.vllm_generate`; a :class:`~emofast.Steering` context around the call steers it).
        prompts: the user turns (rendered with the chat template and the probe's system prompt when
            ``chat_template`` and the tokenizer has a template; fed as they are otherwise). ``chat_template=None``
            (default) does what the probe was fitted with.
        probe: a fitted :class:`~emofast.PairedProbe` (or any probe with ``scoring_layers``, ``directions_for``,
            ``extraction``, ``columns`` and ``column_names``, such as an emotion space).
        max_new_tokens, do_sample, seed, temperature, top_p: generation settings (greedy by default;
            ``torch.manual_seed(seed + batch)`` before each batch; on vLLM, request ``i`` is seeded with ``seed + i``).
        include_prompt: also return the prompt's own tokens (``is_generated = False``).
        batch_size: prompts per batch (default: all at once, at most 32; vLLM schedules all prompts itself).
        ids: a name per prompt (default ``"0"``, ``"1"``, ...).
        reference: the per-token reference of the ``tz_`` columns (:mod:`emofast.generation.readings`):
            ``"neutral"`` (the model's per-token readings of the bundled neutral texts, computed once per probe),
            a dict from :func:`~emofast.generation.readings.token_reference`, or None (no ``tz_`` columns).

    Returns:
        A ``pyarrow.Table``, one row per token: ``prompt_id``, ``token_index`` (0 = the first prompt token; the
        template's tokens count), ``token`` (its text), ``is_generated``, then the probe's columns (for a pair
        probe: per pair the raw score and ``p_<left>``, ``p_<right>``), ``is_sink`` (an attention-sink position
        with massive activations), ``calibrated`` (the last prompt token, where the probe was calibrated: the
        ``p_`` columns hold numbers there only, NaN elsewhere) and per reading the ``tz_`` column (in units of
        the model's per-token spread on neutral text, 0 = neutral). Padding, and whatever follows an
        end-of-sequence token, is dropped. The schema metadata ``generated_texts`` holds the generated texts (a
        JSON list, in prompt order).

    Example:
        >>> t = emofast.trace(model, tok, ["Tell me about your day."], probe, max_new_tokens=16)   # doctest: +SKIP
        >>> t.column_names[:4]
        ['prompt_id', 'token_index', 'token', 'is_generated']
    """
    import json

    import pyarrow as pa

    rows, texts = trace_rows(
        model,
        tok,
        prompts,
        probe,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        seed=seed,
        chat_template=chat_template,
        include_prompt=include_prompt,
        batch_size=batch_size,
        temperature=temperature,
        top_p=top_p,
        ids=ids,
        reference=reference,
    )
    return pa.table(rows, metadata={"generated_texts": json.dumps(texts)})


def trace_rows(
    model,
    tok,
    prompts,
    probe,
    *,
    max_new_tokens,
    do_sample,
    seed,
    chat_template,
    include_prompt,
    batch_size,
    temperature,
    top_p,
    ids,
    reference="neutral",
):
    """:func:`trace`'s work: ``(columns dict, generated texts [N])``."""
    prompts = check_texts(prompts)
    ids = [str(i) for i in range(len(prompts))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(prompts):
        raise ValueError(f"{len(ids)} ids for {len(prompts)} prompts")
    ex = probe.extraction()
    if chat_template is None:
        chat_template = ex.get("chat_template", True)
    chat_template = bool(chat_template and getattr(tok, "chat_template", None) is not None)
    system_prompt = ex.get("system_prompt") if chat_template else None
    window = reading_window(probe)  # trailing tokens per reading; None: single tokens, not calibrated on them
    if window is None:
        warnings.warn(
            f"this probe was fitted at position={ex.get('position')!r}; per-token readings apply its directions and "
            "calibration to single tokens' states, which it was not calibrated on",
            UserWarning,
            stacklevel=3,
        )
    bs = batch_size or min(32, max(1, len(prompts)))
    kw = generation_kwargs(
        tok, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p
    )
    layers = probe.scoring_layers()
    table = TraceTable(tok, probe, layers, include_prompt=include_prompt, window=window)
    if isinstance(reference, str):
        if reference != "neutral":
            raise ValueError(f"reference must be 'neutral', a dict or None, not {reference!r}")
        reference = token_reference(model, tok, probe, chat_template=chat_template)
    eos = {tok.eos_token_id, tok.pad_token_id} - {None}
    if is_vllm(model):
        gens = vllm_readings(
            model,
            tok,
            probe,
            prompts,
            chat_template=chat_template,
            system_prompt=system_prompt,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            seed=seed,
            temperature=temperature,
            top_p=top_p,
        )
        for i, g in enumerate(gens):
            table.add(ids[i], g.prompt_ids, cut_at_end(g.output_ids, eos), g.proj, g.norms)
        return table.finish(reference), table.texts
    was_training = model.training
    model.eval()
    try:
        for b0 in range(0, len(prompts), bs):
            batch = prompts[b0 : b0 + bs]
            input_ids, mask = encode_prompts(
                tok, batch, chat_template=chat_template, system_prompt=system_prompt, device=input_device(model)
            )
            torch.manual_seed(seed + b0 // bs)
            with Recorder(model, probe, layers) as rec, torch.inference_mode():
                out = model.generate(input_ids=input_ids, attention_mask=mask, return_dict_in_generate=True, **kw)
                try:
                    _read_last(model, out, mask)
                except Exception as exc:  # an architecture whose cache refuses the extra step
                    warnings.warn(f"the last generated token gets no reading ({exc})", RuntimeWarning, stacklevel=2)
            proj, norms = rec.stacked()  # [B, T, nL, K], [B, T, nL]
            seq = out.sequences.cpu()
            P = input_ids.shape[1]
            m = mask.cpu().bool()
            for i in range(len(batch)):
                gen = cut_at_end(seq[i, P:].tolist(), eos)
                real = torch.nonzero(m[i]).flatten().tolist()
                read = real + [P + k for k in range(len(gen)) if P + k < proj.shape[1]]
                table.add(ids[b0 + i], seq[i, real].tolist(), gen, proj[i, read], norms[i, read])
            del rec
    finally:
        if was_training:
            model.train()
    return table.finish(reference), table.texts
