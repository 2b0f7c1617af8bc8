"""Device conditions simulated on the CPU (issue 20): a T4's compute capability, vLLM's engine in another
process. Each test monkeypatches what a GPU machine would report and checks emofast's decision."""

from __future__ import annotations

import types

import pytest
import tiny
import torch

import emofast
from emofast.capture.models import as_dtype, auto_dtype
from emofast.capture.plan import NonFiniteError

TEXTS = ["I lost my keys on the train.", "She laughed.", "We sat by the lake and watched the sun go down."]


def _gpu(monkeypatch, major: int, minor: int):
    """Make torch.cuda report one GPU of compute capability ``major.minor``; torch's own
    ``is_bf16_supported`` then runs its real logic on it (emulation counts as support there, as on a T4)."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    props = types.SimpleNamespace(major=major, minor=minor, name=f"simulated sm_{major}{minor}")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)  # emulated bf16 works


def test_auto_dtype_gives_fp16_on_a_t4_and_bf16_on_an_h100(monkeypatch):
    cuda = torch.device("cuda")
    _gpu(monkeypatch, 7, 5)  # Tesla T4
    assert torch.cuda.is_bf16_supported()  # torch's default counts emulation: the trap
    assert auto_dtype(cuda) == torch.float16
    assert as_dtype("auto", cuda) == torch.float16
    _gpu(monkeypatch, 8, 0)  # A100
    assert auto_dtype(cuda) == torch.bfloat16
    _gpu(monkeypatch, 9, 0)  # H100
    assert auto_dtype(cuda) == torch.bfloat16
    assert auto_dtype(torch.device("cpu")) == torch.float32


def _overflow_hook(module, args, out):
    """Push block 1's residual stream past fp16's range (65504), as a late layer of a 7B model can."""
    if isinstance(out, tuple):
        return (out[0] * 1e9,) + tuple(out[1:])
    return out * 1e9


@pytest.mark.parametrize("fn", ["extract", "accumulate", "project"])
def test_fp16_overflow_names_layer_and_model_with_t4_advice(fn):
    tok = tiny.tokenizer()
    emofast.capture.models.prepare_tokenizer(tok)
    model = tiny.model("llama").half()
    model.config._name_or_path = "org/tiny-llama"
    handle = model.model.layers[1].register_forward_hook(_overflow_hook)
    try:
        with pytest.raises(NonFiniteError) as info:
            if fn == "extract":
                emofast.extract(model, tok, TEXTS, layers=[1, 2, 3])
            elif fn == "accumulate":
                emofast.accumulate(model, tok, TEXTS, ["a", "b", "a"], layers=[1, 2, 3]).sums  # noqa: B018
            else:
                dirs = torch.randn(3, 1, model.config.hidden_size)
                emofast.project(model, tok, TEXTS, dirs, layers=[1, 2, 3])
    finally:
        handle.remove()
    msg = str(info.value)
    assert "layer 2 of org/tiny-llama" in msg and "torch.float16" in msg
    assert "dtype='float32'" in msg and "--device-map auto" in msg and "not a T4" in msg
