"""Steering: add ``alpha · σ_ℓ · d_ℓ`` to the residual stream at a probe's chosen layers while the model generates.

``d_ℓ`` is the pair's unit direction at layer ``ℓ`` and ``σ_ℓ`` the spread (standard deviation) of the pair's
training texts' projections on it, so that ``alpha`` is in natural units: ``alpha = 1`` moves a state by one
typical spread of the training texts along the direction. Positive ``alpha`` moves toward the left side (sad for
``sad_vs_happy``).

``where="generated"`` steers every position from the last prompt token on (so that every generated token is
produced under steering, and the prompt's own states are untouched); ``"all"`` steers the prompt too.
"""

from __future__ import annotations

import numpy as np
import torch

from ..capture.models import resolve_layout
from ..capture.prompts import check_texts
from .hooks import input_device, is_prompt_step, residual_hook
from .trace import encode_prompts, generation_kwargs, trace_rows

__all__ = ["Steering", "steer", "steering_scales", "generate_texts", "dataset_of", "random_directions"]

WHERE = ("generated", "all")


def dataset_of(probe):
    """The paired dataset a probe was fitted on, when it can be found (the bundled set, or a folder that exists)."""
    from ..data.pairs import load_pairs

    root = (probe.meta.get("dataset") or {}).get("root")
    if root in (None, "bundled:emotions"):
        return load_pairs()
    return load_pairs(root)


def steering_scales(model, tok, probe, data=None, pairs=None, *, batch_size=None) -> dict:
    """``σ_ℓ`` per pair and chosen layer: the standard deviation of the pair's training texts' projections on
    ``d_ℓ`` (both sides pooled).

    Args:
        data: the paired dataset (default: the one the probe was fitted on, see :func:`dataset_of`).
        pairs: which pairs (default: all).

    Returns:
        ``{pair_name: {layer: sigma}}``.

    Example:
        >>> steering_scales(model, tok, probe)["sad_vs_happy"]      # doctest: +SKIP
        {19: 2.31, 20: 2.58, 21: 2.77, 22: 3.02}
    """
    from ..capture.api import project

    data = data if data is not None else dataset_of(probe)
    names = list(pairs) if pairs is not None else probe.names
    out = {}
    for name in names:
        p = probe.names.index(name)
        layers = probe.chosen[name]
        pair = data.pair(name)
        texts = [t for side in (pair.left, pair.right) for _, t in pair.texts["train"][side]]
        dirs = probe.directions_for(layers)[:, p : p + 1]  # [nL, 1, D]
        proj, _ = project(model, tok, texts, dirs, layers=layers, batch_size=batch_size, **probe.extraction())
        sd = proj[:, :, 0].double().std(dim=0)
        out[name] = {int(layer): float(s) for layer, s in zip(layers, sd)}
    return out


class Steering:
    """Context manager: while active, every forward pass of ``model`` is steered.

    Args:
        model: a Hugging Face causal LM.
        probe: a fitted pair probe.
        alphas: ``{pair_name: alpha}``; positive moves toward the left side.
        scales: ``{pair_name: {layer: sigma}}`` (default: :func:`steering_scales` on the probe's dataset).
        where: ``"generated"`` or ``"all"`` (see the module docstring).
        directions: optional ``{pair_name: {layer: vector [D]}}`` replacing the probe's directions (a control:
            a random unit direction of the same norm).

    Example:
        >>> with Steering(model, probe, {"sad_vs_happy": 4.0}, scales=scales):      # doctest: +SKIP
        ...     out = model.generate(**enc, max_new_tokens=32)
    """

    def __init__(self, model, probe, alphas: dict, *, scales=None, where="generated", directions=None, tok=None):
        if where not in WHERE:
            raise ValueError(f"where={where!r}: expected one of {', '.join(WHERE)}")
        unknown = sorted(set(alphas) - set(probe.names))
        if unknown:
            raise ValueError(f"unknown pair(s) {unknown}; this probe has {probe.names}")
        self.model, self.where = model, where
        self.layout = resolve_layout(model)
        if scales is None:
            if tok is None:
                raise ValueError("pass scales= (from steering_scales) or tok= so that they can be measured")
            scales = steering_scales(model, tok, probe, pairs=[n for n, a in alphas.items() if a])
        device = input_device(model)
        dtype = next(model.parameters()).dtype
        total: dict[int, torch.Tensor] = {}
        for name, alpha in alphas.items():
            if not alpha:
                continue
            p = probe.names.index(name)
            for layer in probe.chosen[name]:
                if directions is not None:
                    d = torch.as_tensor(directions[name][layer], dtype=torch.float32)
                else:
                    d = probe.directions[p, probe.layers.index(layer)].float()
                v = float(alpha) * float(scales[name][layer]) * d
                total[layer] = total.get(layer, 0) + v
        self.vectors = {k: v.to(device, dtype) for k, v in total.items()}
        self.prompt_step = True
        self.handles = []

    def _hook(self, v):
        def add(hidden):
            if self.where == "all" or not self.prompt_step:
                return hidden + v
            out = hidden.clone()
            out[:, -1] += v  # left padding: the last column is every row's last prompt token
            return out

        return add

    def __enter__(self):
        def mark(_mod, _args, kwargs):
            self.prompt_step = is_prompt_step(kwargs)

        self.handles = [self.layout.base.register_forward_pre_hook(mark, with_kwargs=True)]
        self.handles += [residual_hook(self.layout, layer, self._hook(v)) for layer, v in sorted(self.vectors.items())]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []


def generate_texts(
    model,
    tok,
    prompts,
    *,
    system_prompt=None,
    chat_template=True,
    max_new_tokens=64,
    do_sample=False,
    seed=0,
    batch_size=None,
    temperature=None,
    top_p=None,
) -> list[str]:
    """Plain batched generation (left padding, KV cache): the generated text of each prompt, in order.

    ``torch.manual_seed(seed + batch)`` before each batch, so that the same prompts, batch size and seed give the
    same sampling noise whatever steering is active (common random numbers across conditions).
    """
    prompts = check_texts(prompts)
    chat_template = bool(chat_template and getattr(tok, "chat_template", None) is not None)
    bs = batch_size or min(32, max(1, len(prompts)))
    kw = generation_kwargs(
        tok, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p
    )
    eos = {tok.eos_token_id, tok.pad_token_id} - {None}
    out_texts = []
    for b0 in range(0, len(prompts), bs):
        ids, mask = encode_prompts(
            tok,
            prompts[b0 : b0 + bs],
            chat_template=chat_template,
            system_prompt=system_prompt,
            device=input_device(model),
        )
        torch.manual_seed(seed + b0 // bs)
        with torch.inference_mode():
            seq = model.generate(input_ids=ids, attention_mask=mask, **kw).cpu()
        for row in seq[:, ids.shape[1] :].tolist():
            n = next((k for k, t in enumerate(row) if t in eos), len(row))
            out_texts.append(tok.decode(row[:n], skip_special_tokens=True))
    return out_texts


def steer(
    model,
    tok,
    prompts,
    probe,
    alphas: dict,
    *,
    where="generated",
    max_new_tokens=64,
    do_sample=False,
    seed=0,
    scales=None,
    trace=False,
    chat_template=True,
    batch_size=None,
    temperature=None,
    top_p=None,
):
    """Generate from ``prompts`` with the residual stream pushed along the probe's directions.

    Args:
        alphas: ``{pair_name: alpha}`` (natural units, see the module docstring; positive = left side).
        trace: also read the probe at every token while steering (the reading sees the steered states).
        (the rest as in :func:`emofast.trace`)

    Returns:
        The generated texts ``[N]``; with ``trace=True``, ``(texts, pyarrow.Table)`` as :func:`emofast.trace`.

    Example:
        >>> emofast.steer(model, tok, ["Describe your street."], probe, {"sad_vs_happy": 4})    # doctest: +SKIP
        ['The street is quiet and grey, ...']
    """
    with Steering(model, probe, alphas, scales=scales, where=where, tok=tok):
        if trace:
            import json

            import pyarrow as pa

            cols, texts = trace_rows(
                model,
                tok,
                prompts,
                probe,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                seed=seed,
                chat_template=chat_template,
                include_prompt=True,
                batch_size=batch_size,
                temperature=temperature,
                top_p=top_p,
                ids=None,
            )
            return texts, pa.table(cols, metadata={"generated_texts": json.dumps(texts)})
        system_prompt = probe.extraction().get("system_prompt")
        return generate_texts(
            model,
            tok,
            prompts,
            system_prompt=system_prompt,
            chat_template=chat_template,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            seed=seed,
            batch_size=batch_size,
            temperature=temperature,
            top_p=top_p,
        )


def random_directions(probe, pair: str, seed: int = 0) -> dict:
    """``{pair: {layer: v}}``: a random unit vector per chosen layer (Gaussian, normalised), for the control."""
    g = np.random.default_rng(seed)
    D = probe.directions.shape[-1]
    out = {}
    for layer in probe.chosen[pair]:
        v = g.standard_normal(D)
        out[layer] = torch.as_tensor(v / np.linalg.norm(v), dtype=torch.float32)
    return {pair: out}
