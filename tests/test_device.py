"""Device conditions simulated on the CPU (issue 20): a T4's compute capability, vLLM's engine in another
process. Each test monkeypatches what a GPU machine would report and checks emofast's decision."""

from __future__ import annotations

import sys
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


# ------------------------------------------------------------------------------- vLLM's engine in another process


class _FakeLLM:
    """Stands in for ``vllm.LLM``: records the environment the engine process would inherit."""

    built: list = []

    def __init__(self, model, **kwargs):
        import os

        self.env = os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION")
        _FakeLLM.built.append(self)
        ns = types.SimpleNamespace
        self.llm_engine = ns(
            vllm_config=ns(
                model_config=ns(max_model_len=512, enforce_eager=kwargs["enforce_eager"]),
                scheduler_config=ns(
                    max_num_seqs=8,
                    max_num_batched_tokens=2048,
                    enable_chunked_prefill=kwargs["enable_chunked_prefill"],
                ),
            )
        )


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    """A ``vllm`` package that is only an LLM class (this venv has no vLLM), and a tiny model folder."""
    module = types.ModuleType("vllm")
    module.LLM = _FakeLLM
    envs = types.ModuleType("vllm.envs")
    envs.VLLM_ALLOW_INSECURE_SERIALIZATION = False
    module.envs = envs
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.envs", envs)
    monkeypatch.setattr(_FakeLLM, "built", [])
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    tiny.model("llama").save_pretrained(tmp_path)
    tiny.tokenizer().save_pretrained(tmp_path)
    return tmp_path


def test_vllm_backend_sets_up_function_transfer_without_the_user(fake_vllm):
    """Nothing set by the user (vLLM's default: engine in another process): load_model sets the variable before
    the LLM is built, so the engine process inherits it."""
    import os

    model, tok = emofast.load_model(str(fake_vllm), backend="vllm", dtype="float32")
    assert _FakeLLM.built[0].env == "1"
    assert os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] == "1"
    assert model.max_prompt_len == 511 and tok.padding_side == "left"


def test_vllm_backend_keeps_the_users_setting(fake_vllm, monkeypatch):
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "0")
    with pytest.raises(ValueError, match=r"VLLM_ALLOW_INSECURE_SERIALIZATION=0.*VLLM_ENABLE_V1_MULTIPROCESSING"):
        emofast.load_model(str(fake_vllm), backend="vllm", dtype="float32")
    assert not _FakeLLM.built  # refused before any weights load
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: nothing is shipped
    with pytest.raises(ValueError, match="tensor_parallel_size=2"):
        emofast.load_model(str(fake_vllm), backend="vllm", dtype="float32", tensor_parallel_size=2)
    emofast.load_model(str(fake_vllm), backend="vllm", dtype="float32")
    assert _FakeLLM.built[-1].env == "0"


# ------------------------------------------------------------------- an OOM inside the kernel's first-call check


def test_an_oom_in_the_kernel_check_does_not_halve_the_batch(monkeypatch):
    """A GPU short of memory, simulated: the first-call check's reference raises OutOfMemoryError above 16 rows.
    The check shrinks its sample; the engine never sees the error (it would halve its batch for the rest of the
    run and warn), the kernel is kept, and the numbers equal the torch path's."""
    import warnings

    import emofast.kernels as kernels

    if not kernels.available()["cpp"]:
        pytest.skip("needs the C++ kernel (the automatic choice for 'mean' on the CPU)")
    tok = tiny.tokenizer()
    emofast.capture.models.prepare_tokenizer(tok)
    model = tiny.model("llama")
    texts = TEXTS * 4
    monkeypatch.setenv(kernels.KERNEL_ENV, "torch")
    ref = emofast.extract(model, tok, texts, position="mean", batch_size=12)
    monkeypatch.delenv(kernels.KERNEL_ENV)
    monkeypatch.setattr(kernels, "_verified", set())
    monkeypatch.setattr(kernels, "_disabled", {})
    real, calls = kernels.select_reduce_reference, []

    def short_of_memory(x, *args, **kwargs):
        calls.append(x.shape[1])
        if x.shape[1] > 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real(x, *args, **kwargs)

    monkeypatch.setattr(kernels, "select_reduce_reference", short_of_memory)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "retrying with 6", no fallback
        got = emofast.extract(model, tok, texts, position="mean", batch_size=12)
    assert max(calls) > 16 and 16 in calls
    assert kernels._verified and not kernels.disabled()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
