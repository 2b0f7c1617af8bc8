"""Steered generation, many settings in one batch, with what it cost: the per-row engine of ``steer-check``.

:func:`generate_rows` generates every row with its own steering setting (one batch holds all the settings of a
prompt: alphas, the random control, an instructed prompt), and measures, for each row, the damage steering did
against the *unsteered* model on the same text:

- ``nll``: the summed negative log-likelihood of the generated tokens under the unsteered model, given the prompt
  (``exp(nll / n_tokens)`` is the perplexity of the text; pooled over rows, :func:`pooled_ppl`);
- ``kl``: the summed ``KL(steered ‖ unsteered)`` of the next-token distributions at the generated positions (the
  steered model's distributions are the logits it generated with; the unsteered ones come from one extra forward
  pass over prompt + text, the same pass that gives ``nll``).

Example:
    >>> out = generate_rows(model, tok, ["Describe a kitchen."] * 2, [{"sad_vs_happy": 1.5}, {}], vecs,
    ...                     max_new_tokens=32)                                           # doctest: +SKIP
    >>> out["kl"] / out["n_tokens"]   # mean KL per token; 0 for the unsteered row         # doctest: +SKIP
    array([0.41, 0.  ])
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..capture.prompts import check_texts
from .backend import is_vllm, vllm_rows
from .hooks import input_device
from .plan import row_additions
from .steer import AddSteering
from .trace import encode_prompts, generation_kwargs

__all__ = ["generate_rows", "pooled_ppl", "mean_kl"]


def _unsteered_logprobs(model, seq, mask, first: int, n: int) -> torch.Tensor:
    """log-softmax of the unsteered model's logits at positions ``first .. first+n-1`` of ``seq`` [B, T]:
    ``[B, n, V]`` float32 (the distributions of the tokens at ``first+1 ..``)."""
    full = torch.cat([mask, torch.ones(seq.shape[0], seq.shape[1] - mask.shape[1], dtype=mask.dtype)], 1)
    pos = (full.long().cumsum(-1) - 1).clamp(min=0)
    device = input_device(model)
    keep = seq.shape[1] - first  # the last `keep` positions
    args = {"input_ids": seq.to(device), "attention_mask": full.to(device), "position_ids": pos.to(device)}
    with torch.inference_mode():
        try:
            logits = model(**args, logits_to_keep=keep).logits
        except TypeError:  # a model without logits_to_keep
            logits = model(**args).logits
    logits = logits[:, -keep:][:, :n]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def generate_rows(
    model,
    tok,
    prompts,
    settings: list[dict],
    vectors,
    *,
    system_prompt=None,
    chat_template=True,
    max_new_tokens=32,
    do_sample=False,
    seed=0,
    batch_size=None,
    where="generated",
    temperature=None,
    top_p=None,
    damage=True,
) -> dict:
    """Generate one row per ``(prompt, setting)`` pair, batched, and measure each row's damage.

    Args:
        prompts: ``[N]`` prompts (repeat a prompt to give it several settings; they may differ row by row, e.g. an
            instructed prompt beside a steered one).
        settings: ``[N]`` ``{pair: alpha}`` (``{}``: unsteered).
        vectors: a vector table for all rows or a list of ``N`` tables (see :mod:`emofast.generation.plan`).
        damage: also measure ``nll`` and ``kl`` (one extra forward pass per batch).

    Returns:
        ``{"texts": [N] str, "token_ids": [N] lists, "n_tokens": [N] int, "nll": [N], "kl": [N]}`` (``nll`` and
        ``kl`` summed over the row's generated tokens, up to its end-of-sequence token; NaN with ``damage=False``).
        ``torch.manual_seed(seed + batch)`` before each batch of ``batch_size`` rows.
    """
    prompts = check_texts(prompts)
    if len(settings) != len(prompts):
        raise ValueError(f"{len(settings)} settings for {len(prompts)} prompts: give one per prompt")
    if is_vllm(model):  # one vLLM call for every row (kl: NaN, see vllm_rows)
        return vllm_rows(
            model,
            tok,
            prompts,
            settings,
            vectors,
            system_prompt=system_prompt,
            chat_template=chat_template,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            seed=seed,
            where=where,
            temperature=temperature,
            top_p=top_p,
            damage=damage,
        )
    chat_template = bool(chat_template and getattr(tok, "chat_template", None) is not None)
    bs = batch_size or min(32, max(1, len(prompts)))
    kw = generation_kwargs(
        tok, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p
    )
    eos = {tok.eos_token_id, tok.pad_token_id} - {None}
    N = len(prompts)
    out = {
        "texts": [],
        "token_ids": [],
        "n_tokens": np.zeros(N, dtype=np.int64),
        "nll": np.full(N, math.nan),
        "kl": np.full(N, math.nan),
    }
    was_training = model.training
    model.eval()
    try:
        for k, b0 in enumerate(range(0, N, bs)):
            rows = slice(b0, b0 + bs)
            ids, mask = encode_prompts(
                tok, prompts[rows], chat_template=chat_template, system_prompt=system_prompt, device="cpu"
            )
            vec = vectors if isinstance(vectors, dict) else vectors[rows]
            adds = row_additions(settings[rows], vec)
            torch.manual_seed(seed + k)
            with AddSteering(model, adds, where=where), torch.inference_mode():
                gen = model.generate(
                    input_ids=ids.to(input_device(model)),
                    attention_mask=mask.to(input_device(model)),
                    return_dict_in_generate=True,
                    output_logits=damage,
                    **kw,
                )
            seq = gen.sequences.cpu()
            P = ids.shape[1]
            lens = []
            for i, row in enumerate(seq[:, P:].tolist()):
                n = next((j for j, t in enumerate(row) if t in eos), len(row))
                lens.append(n)
                out["token_ids"].append(row[:n])
                out["texts"].append(tok.decode(row[:n], skip_special_tokens=True))
                out["n_tokens"][b0 + i] = n
            if not damage or max(lens) == 0:
                continue
            G = max(lens)
            plain = _unsteered_logprobs(model, seq[:, : P + G], mask, P - 1, G)  # [B, G, V]
            tgt = seq[:, P : P + G]
            nll = -plain.gather(-1, tgt[..., None])[..., 0]  # [B, G]
            kl = torch.zeros(seq.shape[0], G)
            for j in range(G):  # step by step: no [B, G, V] copy of the steered distributions
                s = torch.log_softmax(gen.logits[j].float().cpu(), -1)  # [B, V]
                kl[:, j] = (s.exp() * (s - plain[:, j])).sum(-1)
            for i, n in enumerate(lens):
                if n:
                    out["nll"][b0 + i] = float(nll[i, :n].sum())
                    out["kl"][b0 + i] = float(kl[i, :n].sum().clamp(min=0))
            del plain, gen
    finally:
        if was_training:
            model.train()
    return out


def pooled_ppl(nll, n_tokens) -> float:
    """Perplexity pooled over rows: ``exp(sum nll / sum tokens)`` (rows without a token left out; NaN if none)."""
    nll, n = np.asarray(nll, dtype=float), np.asarray(n_tokens, dtype=float)
    keep = (n > 0) & np.isfinite(nll)
    return float(math.exp(nll[keep].sum() / n[keep].sum())) if keep.any() else math.nan


def mean_kl(kl, n_tokens) -> float:
    """Mean KL per generated token, pooled over rows (NaN if no row has a token)."""
    kl, n = np.asarray(kl, dtype=float), np.asarray(n_tokens, dtype=float)
    keep = (n > 0) & np.isfinite(kl)
    return float(kl[keep].sum() / n[keep].sum()) if keep.any() else math.nan
