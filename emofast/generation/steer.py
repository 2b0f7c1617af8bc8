"""Steering: add ``alpha · σ_ℓ · d_ℓ`` to the residual stream at a probe's chosen layers while the model generates.

``d_ℓ`` is a unit vector of the pair at layer ``ℓ`` and ``σ_ℓ`` the spread (standard deviation) of the pair's
training texts' projections on it, so that ``alpha`` is in natural units: ``alpha = 1`` adds one typical spread of
the training texts at each steered layer (the pushes of a band's layers add up downstream, since neighbouring
layers' vectors point much the same way). Positive ``alpha`` moves toward the left side (sad for ``sad_vs_happy``).

Which vector (``kind``): ``"mean-diff"`` (default), ``normalize(mean(left) - mean(right))`` of the pair's training
texts at that layer, the usual steering vector; or ``"probe"``, the probe's own direction. They differ for the
default LDA probe: whitening by the within-side covariance points the LDA direction into directions along which
hidden states hardly vary (on SmolLM2's sad/happy band the training texts spread by about 1.5 along it, against
about 10 along the mean difference and row norms near 190), so adding it barely changes the computation even
where it reads the concept well. Measured on SmolLM2 (8 prompts, sampling): VADER valence 0.58 at alpha 0, 0.07
at +2 and -0.05 at +4 with the mean difference; 0.55 and 0.38 at +4 and +8 with the LDA direction.

``where="generated"`` steers every position from the last prompt token on (so that every generated token is
produced under steering, and the prompt's own states are untouched); ``"all"`` steers the prompt too.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch

from ..capture.models import resolve_layout
from ..capture.prompts import check_texts
from .backend import is_vllm, pop_steering, push_steering, vllm_texts
from .hooks import input_device, is_prompt_step, residual_hook
from .plan import as_settings, row_additions
from .trace import encode_prompts, generation_kwargs
from .trace import trace as trace_fn

__all__ = [
    "Steering",
    "AddSteering",
    "steer",
    "steering_vectors",
    "generate_texts",
    "dataset_of",
    "random_vectors",
    "KINDS",
]

WHERE = ("generated", "all")
KINDS = ("mean-diff", "probe")


def dataset_of(probe):
    """The paired dataset a probe was fitted on, when it can be found (the bundled set, or a folder that exists)."""
    from ..data.pairs import load_pairs

    root = (probe.meta.get("dataset") or {}).get("root")
    if root in (None, "bundled:emotions"):
        return load_pairs()
    return load_pairs(root)


def steering_vectors(
    model, tok, probe, data=None, pairs=None, *, kind: str = "mean-diff", batch_size=None, layers=None, cache=None
) -> dict:
    """The steering vector of each pair at each of its chosen layers, and its natural unit.

    Args:
        data: the paired dataset (default: the one the probe was fitted on, see :func:`dataset_of`).
        pairs: which pairs (default: all).
        kind: ``"mean-diff"`` or ``"probe"`` (see the module docstring).
        layers: the layers to measure at (default: each pair's chosen layers), e.g. every layer for a sweep.
        cache: a folder (e.g. the run folder) where each pair's vectors are kept once measured, keyed by the
            probe's directions, the training texts, the kind and the layers; a later call reads them instead of
            passing the training texts through the model again.

    Returns:
        ``{pair_name: {layer: (d [D] unit float32, sigma)}}``, ``sigma`` the standard deviation of the pair's
        training texts' projections on ``d`` (both sides pooled).

    Example:
        >>> vecs = steering_vectors(model, tok, probe, pairs=["sad_vs_happy"])      # doctest: +SKIP
        >>> {layer: round(s, 1) for layer, (d, s) in vecs["sad_vs_happy"].items()}  # doctest: +SKIP
        {19: 9.6, 20: 10.2, 21: 13.6, 22: 18.8}
    """
    from ..capture.api import extract

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
    data = data if data is not None else dataset_of(probe)
    layers_arg = layers
    names = list(pairs) if pairs is not None else probe.names
    out = {}
    for name in names:
        if cache is not None:
            got = _cached(cache, probe, data, name, kind, layers_arg)
            if got["vectors"] is not None:
                out[name] = got["vectors"]
                continue
        p = probe.names.index(name)
        layers = [int(k) for k in layers_arg] if layers_arg is not None else probe.chosen[name]
        if kind == "probe" and not set(layers) <= set(probe.layers):
            raise ValueError(
                f"kind='probe': the probe has no directions at layers {sorted(set(layers) - set(probe.layers))}"
            )
        left, right = data.pair(name).split("train")
        x = extract(model, tok, left + right, layers=layers, batch_size=batch_size, **probe.extraction()).double()
        is_left = torch.arange(len(left) + len(right)) < len(left)
        out[name] = {}
        for i, layer in enumerate(layers):
            if kind == "probe":
                d = probe.directions[p, probe.layers.index(layer)].double()
            else:
                d = x[is_left, i].mean(0) - x[~is_left, i].mean(0)
            sigma = float((x[:, i] @ d).std() / d.norm().clamp(min=1e-300))
            scale = float(x[:, i].norm(dim=-1).mean())
            if not d.norm() > 0 or not sigma > 1e-6 * scale:
                # e.g. layer 0 at a chat template's last token: the same token, the same state, for every text
                warnings.warn(
                    f"{name}: layer {layer} does not vary across the training texts; not steered there",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            out[name][int(layer)] = ((d / d.norm()).float(), sigma)
        if not out[name]:
            raise ValueError(f"{name}: none of its chosen layers {layers} varies across its training texts")
        if cache is not None:
            _store(got["path"], out[name])
    return out


def _cached(cache, probe, data, name, kind, layers) -> dict:
    """``{"path", "vectors" (None if not cached)}`` for one pair."""
    import hashlib
    from pathlib import Path

    from safetensors.torch import load_file

    left, right = data.pair(name).split("train")
    h = hashlib.sha1()
    p = probe.names.index(name)
    h.update(probe.directions[p].contiguous().float().numpy().tobytes())
    h.update("\x00".join([kind, str(layers), str(probe.extraction()), *left, "|", *right]).encode())
    path = Path(cache) / f"steering-vectors-{name}-{h.hexdigest()[:16]}.safetensors"
    if not path.is_file():
        return {"path": path, "vectors": None}
    t = load_file(str(path))
    vecs = {int(k[2:]): (t[k], float(t[f"s_{k[2:]}"])) for k in t if k.startswith("d_")}
    return {"path": path, "vectors": vecs}


def _store(path, vecs) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer, (d, sigma) in vecs.items():
        tensors[f"d_{layer}"] = torch.as_tensor(d, dtype=torch.float32).contiguous()
        tensors[f"s_{layer}"] = torch.tensor(float(sigma), dtype=torch.float64)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


class AddSteering:
    """Context manager, the Hugging Face half of steering: while active, add ``additions[layer]`` to the residual
    stream at each layer (:func:`emofast.generation.plan.row_additions` makes them).

    ``additions``: ``{layer: [D]}`` (every row the same) or ``{layer: [B, D]}`` (row ``i`` of each batch gets row
    ``i``: the batch must then have exactly ``B`` rows, one per setting; beam search and several sequences per
    prompt are refused with a clear error).

    Example:
        >>> adds = row_additions([{"sad_vs_happy": 2.0}, {}], vecs)             # doctest: +SKIP
        >>> with AddSteering(model, adds):                                      # doctest: +SKIP
        ...     out = model.generate(**enc)   # enc: 2 prompts; the second is not steered
    """

    def __init__(self, model, additions: dict, *, where: str = "generated"):
        if where not in WHERE:
            raise ValueError(f"where={where!r}: expected one of {', '.join(WHERE)}")
        self.model, self.where = model, where
        self.handles = []
        if is_vllm(model):  # vLLM adds them inside its workers (emofast.generation.backend)
            self.vectors = {int(k): torch.as_tensor(v, dtype=torch.float32) for k, v in additions.items()}
            return
        self.layout = resolve_layout(model)
        device = input_device(model)
        dtype = next(model.parameters()).dtype
        self.vectors = {int(k): torch.as_tensor(v).to(device, dtype) for k, v in additions.items()}
        self.prompt_step = True
        self.handles = []

    def _hook(self, v):
        per_row = v.ndim == 2
        add = v[:, None, :] if per_row else v

        def hook(hidden):
            if per_row and hidden.shape[0] != v.shape[0]:
                raise ValueError(
                    f"per-row steering has {v.shape[0]} settings but the batch has {hidden.shape[0]} rows: "
                    "generate exactly one row per setting (no beams, one sequence per prompt)"
                )
            if self.where == "all" or not self.prompt_step:
                return hidden + add
            out = hidden.clone()
            out[:, -1] += v  # left padding: the last column is every row's last prompt token
            return out

        return hook

    def __enter__(self):
        # read by emofast.generation.trace.token_reference: a per-token reference is never measured steered
        self.model.emofast_steering_active = getattr(self.model, "emofast_steering_active", 0) + 1
        if is_vllm(self.model):
            push_steering(self.model, self.vectors, self.where)
            return self

        def mark(_mod, _args, kwargs):
            self.prompt_step = is_prompt_step(kwargs)

        self.handles = [self.layout.base.register_forward_pre_hook(mark, with_kwargs=True)]
        self.handles += [residual_hook(self.layout, layer, self._hook(v)) for layer, v in sorted(self.vectors.items())]
        return self

    def __exit__(self, *exc):
        self.model.emofast_steering_active = max(0, getattr(self.model, "emofast_steering_active", 1) - 1)
        if is_vllm(self.model):
            pop_steering(self.model)
            return
        for h in self.handles:
            h.remove()
        self.handles = []


class Steering(AddSteering):
    """Context manager: while active, every forward pass of ``model`` is steered.

    Args:
        model: a Hugging Face causal LM.
        probe: a fitted pair probe (its chosen layers say where to steer).
        alphas: ``{pair_name: alpha}`` for every row; or a list of them, one per row of the batch (per-row
            steering: row ``i`` of each generated batch gets ``alphas[i]``; ``None`` or ``{}`` = unsteered);
            positive moves toward the left side.
        vectors: ``{pair_name: {layer: (d, sigma)}}`` from :func:`steering_vectors` (or :func:`random_vectors`,
            the control), or with per-row ``alphas`` a list of such tables, one per row; default: measured here
            with ``kind`` (needs ``tok``).
        where: ``"generated"`` or ``"all"`` (see the module docstring).

    Example:
        >>> with Steering(model, probe, {"sad_vs_happy": 2.0}, tok=tok):      # doctest: +SKIP
        ...     out = model.generate(**enc, max_new_tokens=32)
        >>> with Steering(model, probe, [{"sad_vs_happy": a} for a in (-2, 0, 2)], tok=tok):   # doctest: +SKIP
        ...     out = model.generate(**enc3, max_new_tokens=32)   # enc3: three rows, one alpha each
    """

    def __init__(self, model, probe, alphas, *, vectors=None, where="generated", kind="mean-diff", tok=None):
        if where not in WHERE:
            raise ValueError(f"where={where!r}: expected one of {', '.join(WHERE)}")
        if not hasattr(probe, "pairs"):
            raise ValueError("steering needs a pair probe (an emotion space has no pair directions to push along)")
        per_row = not isinstance(alphas, Mapping)
        settings = as_settings(alphas, None if per_row else 1)
        unknown = sorted({n for s in settings for n in s} - set(probe.names))
        if unknown:
            raise ValueError(f"unknown pair(s) {unknown}; this probe has {probe.names}")
        active = sorted({n for s in settings for n, a in s.items() if a})
        if vectors is None and active:
            if tok is None:
                raise ValueError("pass vectors= (from steering_vectors) or tok= so that they can be measured")
            vectors = steering_vectors(model, tok, probe, pairs=active, kind=kind)
        adds = row_additions(settings, vectors if vectors is not None else {}) if active else {}
        if not per_row:
            adds = {k: v[0] for k, v in adds.items()}
        super().__init__(model, adds, where=where)
        self.settings = settings if per_row else None


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
    eos = {tok.eos_token_id, tok.pad_token_id} - {None}
    if is_vllm(model):  # one vLLM call: its scheduler batches
        kw = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature, "top_p": top_p}
        return vllm_texts(
            model, tok, prompts, system_prompt=system_prompt, chat_template=chat_template, seed=seed, end_ids=eos, **kw
        )
    bs = batch_size or min(32, max(1, len(prompts)))
    kw = generation_kwargs(
        tok, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p
    )
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
    alphas,
    *,
    where="generated",
    max_new_tokens=64,
    do_sample=False,
    seed=0,
    vectors=None,
    kind="mean-diff",
    trace=False,
    chat_template=None,
    batch_size=None,
    temperature=None,
    top_p=None,
):
    """Generate from ``prompts`` with the residual stream pushed along the probe's directions.

    Args:
        alphas: ``{pair_name: alpha}`` for every prompt (natural units, see the module docstring; positive = left
            side), or a list of them, one per prompt (per-row steering: all settings run in the same batches; a
            prompt may be repeated to get several settings of it; ``None``/``{}`` = unsteered).
        vectors, kind: as for :class:`Steering` (with per-row ``alphas``, ``vectors`` may be a list, one table
            per prompt).
        trace: also read the probe at every token while steering (the reading sees the steered states).
        (the rest as in :func:`emofast.trace`)

    Returns:
        The generated texts ``[N]``; with ``trace=True``, ``(texts, pyarrow.Table)`` as :func:`emofast.trace`.

    Per-row steering gives the same texts as one call per setting (greedy decoding; tested), and a row with
    alpha 0 the same as unsteered generation. With sampling, ``torch.manual_seed(seed + batch)`` seeds each batch
    of ``batch_size`` rows, so rows share noise with their batch, not with the same prompt under another setting.

    Example:
        >>> emofast.steer(model, tok, ["Describe your street."], probe, {"sad_vs_happy": 4})    # doctest: +SKIP
        ['The street is quiet and grey, ...']
        >>> p = "Describe your street."
        >>> emofast.steer(model, tok, [p] * 3, probe, [{"sad_vs_happy": a} for a in (-2, 0, 2)])  # doctest: +SKIP
        ['The street is lively ...', 'The street is ...', 'The street is empty ...']
    """
    kw = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "chat_template": chat_template,
        "temperature": temperature,
        "top_p": top_p,
    }
    if trace:  # the per-token reference is the *unsteered* model's reading of neutral text: measure it first
        from .trace import token_reference

        kw["reference"] = token_reference(model, tok, probe, chat_template=chat_template)
    if isinstance(alphas, Mapping):
        with Steering(model, probe, alphas, vectors=vectors, where=where, kind=kind, tok=tok):
            return _generate(model, tok, prompts, probe, trace=trace, seed=seed, batch_size=batch_size, **kw)
    prompts = check_texts(prompts)
    settings = as_settings(alphas, len(prompts))
    if not isinstance(vectors, (Mapping, type(None))) and len(vectors) != len(prompts):
        raise ValueError(f"{len(vectors)} vector tables for {len(prompts)} prompts: give one per prompt")
    active = sorted({n for s in settings for n, a in s.items() if a})
    if vectors is None and active:
        vectors = steering_vectors(model, tok, probe, pairs=active, kind=kind)
    # vLLM: one call with every row (its scheduler batches them); HF: batches of batch_size
    bs = batch_size or (max(1, len(prompts)) if is_vllm(model) else min(32, max(1, len(prompts))))
    texts, tables = [], []
    for k, b0 in enumerate(range(0, len(prompts), bs)):
        rows = slice(b0, b0 + bs)
        vec = vectors if vectors is None or isinstance(vectors, Mapping) else vectors[rows]
        with Steering(model, probe, settings[rows], vectors=vec, where=where):
            out = _generate(
                model, tok, prompts[rows], probe, trace=trace, seed=seed + k, batch_size=bs, first_id=b0, **kw
            )
        if trace:
            texts += out[0]
            tables.append(out[1])
        else:
            texts += out
    if not trace:
        return texts
    import json

    import pyarrow as pa

    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    return texts, table.replace_schema_metadata({"generated_texts": json.dumps(texts)})


def _generate(model, tok, prompts, probe, *, trace, seed, batch_size, first_id=0, chat_template=None, **kw):
    """Generation (or tracing) under whatever steering is active; prompt ids count from ``first_id``."""
    reference = kw.pop("reference", None)
    if trace:
        kw["reference"] = reference
        import json

        ids = [str(first_id + i) for i in range(len(prompts))]
        table = trace_fn(
            model, tok, prompts, probe, seed=seed, chat_template=chat_template, batch_size=batch_size, ids=ids, **kw
        )
        return json.loads(table.schema.metadata[b"generated_texts"]), table
    ex = probe.extraction()
    chat_template = ex.get("chat_template", True) if chat_template is None else chat_template
    system_prompt = ex.get("system_prompt") if chat_template else None
    return generate_texts(
        model,
        tok,
        prompts,
        system_prompt=system_prompt,
        chat_template=chat_template,
        seed=seed,
        batch_size=batch_size,
        **kw,
    )


def random_vectors(vectors: dict, seed: int = 0) -> dict:
    """The directions control: for every pair, random unit vectors at the same layers with the same ``sigma`` and
    the same cosines between layers as the real ones (``R = Q Lᵀ``, ``Q`` random orthonormal, ``L`` the Cholesky
    factor of the real vectors' Gram matrix), so that the same alphas push the residual stream by the same amount,
    also summed over a band whose layers point the same way."""
    g = np.random.default_rng(seed)
    out = {}
    for name, per_layer in vectors.items():
        layers = list(per_layer)
        real = np.stack([np.asarray(per_layer[k][0], dtype=np.float64) for k in layers])  # [nL, D]
        gram = real @ real.T
        chol = np.linalg.cholesky(gram + 1e-9 * np.eye(len(layers)))
        q, _ = np.linalg.qr(g.standard_normal((real.shape[1], len(layers))))  # [D, nL] orthonormal columns
        rand = (q @ chol.T).T  # [nL, D]: rand @ rand.T == gram
        out[name] = {}
        for i, layer in enumerate(layers):
            r = rand[i] / np.linalg.norm(rand[i])
            out[name][layer] = (torch.as_tensor(r, dtype=torch.float32), per_layer[layer][1])
    return out
