"""emofast: fast paired concept probing of language models.

Capture the residual stream at chosen token positions of every layer with hooks (no ``output_hidden_states``,
no LM head, early exit, length-sorted batches), fit concept directions per pair of opposed concepts, choose
layers, calibrate, evaluate on held-out texts, and score corpora.

``import emofast`` is light: it imports neither triton, nor vllm, nor the compiled extension; the submodules
behind the names below load on first use.

Example:
    >>> import emofast
    >>> model, tok = emofast.load_model("smollm2")                                    # doctest: +SKIP
    >>> x = emofast.extract(model, tok, ["My dog died today."], chat_template=True)   # doctest: +SKIP
    >>> x.shape                                                                        # doctest: +SKIP
    torch.Size([1, 31, 576])
"""

from __future__ import annotations

import importlib

from ._version import __version__

__all__ = [
    "__version__",
    "load_model",
    "extract",
    "accumulate",
    "project",
    "Accumulator",
    "NonFiniteError",
    "resolve_layout",
    "PairedProbe",
    "load_probe",
    "EmotionSpace",
    "trace",
    "steer",
    "Steering",
    "kernels",
]

_LAZY = {
    "load_model": ("emofast.capture.loader", "load_model"),
    "resolve_layout": ("emofast.capture.models", "resolve_layout"),
    "extract": ("emofast.capture.api", "extract"),
    "accumulate": ("emofast.capture.api", "accumulate"),
    "project": ("emofast.capture.api", "project"),
    "Accumulator": ("emofast.capture.accumulator", "Accumulator"),
    "NonFiniteError": ("emofast.capture.plan", "NonFiniteError"),
    "PairedProbe": ("emofast.probe.paired", "PairedProbe"),
    "load_probe": ("emofast.probe.paired", "load_probe"),
    "EmotionSpace": ("emofast.probe.space", "EmotionSpace"),
    "trace": ("emofast.generation.trace", "trace"),
    "steer": ("emofast.generation.steer", "steer"),
    "Steering": ("emofast.generation.steer", "Steering"),
    "kernels": ("emofast.kernels", None),
}


_SUBMODULES = {"capture", "generation", "backends", "kernels", "probe", "data", "commands", "report", "cli", "fileio"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"emofast.{name}")
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'emofast' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
