"""Generation through the vLLM backend: what :func:`emofast.trace`, :func:`emofast.steer` and
:class:`emofast.Steering` do when they are handed a vLLM handle (``emofast.load_model(..., backend="vllm")``).

The prompts are rendered and tokenized exactly as on the Hugging Face path (no padding: vLLM takes each prompt's
own ids), then :func:`emofast.backends.vllm_generate.generate` runs them inside vLLM, reading the probe's
projections and/or adding the active steering. A :class:`~emofast.generation.steer.Steering` context on a vLLM
handle installs nothing: it records its additions here (:func:`push_steering`), and every generation on that
handle while it is active asks vLLM to add them (:func:`active_steering`).

Example:
    >>> vm, tok = emofast.load_model("smollm2", backend="vllm")                                # doctest: +SKIP
    >>> with emofast.Steering(vm, probe, {"sad_vs_happy": 4}, tok=tok):                         # doctest: +SKIP
    ...     table = emofast.trace(vm, tok, ["Describe your street."], probe, max_new_tokens=32)
"""

from __future__ import annotations

import weakref

import torch

from ..capture.prompts import render_prompts

__all__ = [
    "is_vllm",
    "push_steering",
    "pop_steering",
    "active_steering",
    "vllm_readings",
    "vllm_texts",
    "vllm_rows",
    "tokenize",
]

# handle -> stack of (additions {layer: [D] or [B, D]}, where)
_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def is_vllm(model) -> bool:
    """Whether ``model`` is a backend handle (vLLM) rather than a Hugging Face model."""
    return getattr(model, "emofast_backend", None) is not None


def push_steering(model, additions: dict, where: str) -> None:
    """Make ``additions`` (``{layer: [D]}`` or ``{layer: [B, D]}``) the active steering of a vLLM handle."""
    _ACTIVE.setdefault(model.emofast_backend, []).append(({int(k): v for k, v in additions.items()}, where))


def pop_steering(model) -> None:
    """Undo the last :func:`push_steering`."""
    stack = _ACTIVE.get(model.emofast_backend)
    if stack:
        stack.pop()


def active_steering(model) -> dict:
    """``{"additions": ..., "where": ...}`` of the innermost active steering (empty additions: none)."""
    stack = _ACTIVE.get(model.emofast_backend)
    if not stack:
        return {"additions": {}, "where": "generated"}
    additions, where = stack[-1]
    return {"additions": additions, "where": where}


def tokenize(tok, prompts, *, chat_template: bool, system_prompt) -> list[list[int]]:
    """Each prompt's token ids, rendered and tokenized as :func:`emofast.generation.trace.encode_prompts` does
    (the same ids, without the padding)."""
    if not prompts:
        return []
    texts = render_prompts(tok, prompts, chat_template, system_prompt if chat_template else None)
    return [list(ids) for ids in tok(texts, padding=False)["input_ids"]]


def vllm_readings(
    model,
    tok,
    probe,
    prompts,
    *,
    chat_template: bool,
    system_prompt,
    max_new_tokens: int = 0,
    do_sample: bool = False,
    seed: int = 0,
    temperature=None,
    top_p=None,
    steered: bool | None = None,
):
    """Generate (``max_new_tokens = 0``: only the prompts) inside vLLM and read ``probe`` at every token:
    ``[N]`` :class:`~emofast.backends.vllm_generate.Generation` with ``proj [R, nL, K]``, ``norms [R, nL]``.

    ``steered``: apply the active steering (default: when generating, not when only reading prompts).
    """
    from ..backends.vllm_generate import generate

    layers = probe.scoring_layers()
    steer = active_steering(model) if (steered if steered is not None else max_new_tokens > 0) else {}
    return generate(
        model.emofast_backend,
        tokenize(tok, prompts, chat_template=chat_template, system_prompt=system_prompt),
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        seed=seed,
        temperature=temperature,
        top_p=top_p,
        read_layers=layers,
        dirs=torch.as_tensor(probe.directions_for(layers), dtype=torch.float32),
        **steer,
    )


def vllm_texts(
    model,
    tok,
    prompts,
    *,
    system_prompt=None,
    chat_template=True,
    max_new_tokens=64,
    do_sample=False,
    seed=0,
    temperature=None,
    top_p=None,
    end_ids=(),
) -> list[str]:
    """Generate inside vLLM under the active steering: the generated text of each prompt, in order (cut before
    the first of ``end_ids``)."""
    from ..backends.vllm_generate import generate
    from .table import cut_at_end

    chat_template = bool(chat_template and getattr(tok, "chat_template", None) is not None)
    gens = generate(
        model.emofast_backend,
        tokenize(tok, prompts, chat_template=chat_template, system_prompt=system_prompt),
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        seed=seed,
        temperature=temperature,
        top_p=top_p,
        **active_steering(model),
    )
    return [tok.decode(cut_at_end(g.output_ids, set(end_ids)), skip_special_tokens=True) for g in gens]


def vllm_rows(
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
    where="generated",
    temperature=None,
    top_p=None,
    damage=True,
) -> dict:
    """:func:`emofast.generation.damage.generate_rows` inside vLLM: every row with its own steering in one call;
    ``nll`` from the unsteered model's ``prompt_logprobs`` of prompt + text. ``kl`` is NaN: vLLM returns top-k
    log-probabilities, not the full next-token distributions a KL needs (a KL budget then refuses every alpha)."""
    import math

    import numpy as np

    from ..backends.vllm_generate import generate, token_logprobs
    from .plan import row_additions
    from .table import cut_at_end

    chat_template = bool(chat_template and getattr(tok, "chat_template", None) is not None)
    ids = tokenize(tok, prompts, chat_template=chat_template, system_prompt=system_prompt)
    gens = generate(
        model.emofast_backend,
        ids,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        seed=seed,
        temperature=temperature,
        top_p=top_p,
        additions=row_additions(settings, vectors) if any(settings) else {},
        where=where,
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
    for i, g in enumerate(gens):
        row = cut_at_end(g.output_ids, eos)
        out["token_ids"].append(row)
        out["texts"].append(tok.decode(row, skip_special_tokens=True))
        out["n_tokens"][i] = len(row)
    if damage:
        keep = [i for i in range(N) if out["n_tokens"][i]]
        seqs = [ids[i] + out["token_ids"][i] for i in keep]
        for i, lp in zip(keep, token_logprobs(model.emofast_backend, seqs, [len(ids[i]) for i in keep])):
            out["nll"][i] = float(-lp.sum())
    return out
