"""Hooks on the residual stream during generation: where layer ``ℓ`` of ``output_hidden_states`` is computed, and a
hook there that can read it and, optionally, replace it.

Layer 0 is the input of the first block (read with a pre-hook, so that model-specific embedding scaling is
included), layer ``i`` (``1 <= i < L``) the output of block ``i - 1``, and layer ``L`` the output of the final
norm (the last block's output when a model has none), as in :mod:`emofast.capture.engine`.
"""

from __future__ import annotations

import torch

from ..capture.models import Layout

__all__ = ["residual_hook", "is_prompt_step", "input_device"]


def residual_hook(layout: Layout, layer: int, fn):
    """Register ``fn(hidden [B, T, D]) -> None | new hidden`` at ``layer``; returns the removable handle.

    When ``fn`` returns a tensor, it replaces the residual the rest of the model sees (steering); hooks
    registered later at the same place see the replaced tensor (a reading taken while steering).
    """
    L = layout.num_layers
    if not 0 <= layer <= L:
        raise ValueError(f"layer {layer} is out of range: this model has layers 0..{L}")
    if layer == 0:

        def pre(_mod, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return layout.blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
    module = layout.final_norm if (layer == L and layout.final_norm is not None) else layout.blocks[layer - 1]

    def post(_mod, _args, output):
        if isinstance(output, (tuple, list)):  # Falcon & co. return (hidden, ...)
            new = fn(output[0])
            return None if new is None else type(output)((new, *output[1:]))
        return fn(output)

    return module.register_forward_hook(post)


def is_prompt_step(kwargs: dict) -> bool:
    """Whether a base-model forward (its keyword arguments) is the prompt step of a generation: no cache yet, or
    an empty one."""
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    if cache is None:
        return True
    try:
        return int(cache.get_seq_length()) == 0
    except (AttributeError, TypeError):
        return False


def input_device(model) -> torch.device:
    """The device of the input embeddings (where input ids must go)."""
    return model.get_input_embeddings().weight.device
