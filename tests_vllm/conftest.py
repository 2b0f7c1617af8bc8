"""Fixtures for the vLLM backend tests: tiny models saved to disk, loaded through both backends.

Run in the vLLM environment (``scripts/test-vllm.sh``). vLLM's in-process engine is the default here, so that
the tests need no insecure serialization; the multiprocess test sets its own environment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

pytest.importorskip("vllm", reason="the vLLM backend tests need vllm (run scripts/test-vllm.sh)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import numpy as np  # noqa: E402
import tiny  # noqa: E402  (the offline tokenizer of the main suite)
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config  # noqa: E402

import emofast  # noqa: E402

# vLLM's CPU attention needs head_dim 64: hidden 128 over 2 heads.
_SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1)
# vocab 320 > the tokenizer's 300: AutoTokenizer gives a Qwen2 folder a Qwen2Tokenizer, which adds a pad token.
_COMMON = dict(vocab_size=320, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
CONFIGS = {
    "llama": lambda: LlamaConfig(**_SHAPE, **_COMMON, num_hidden_layers=3),
    "qwen2": lambda: Qwen2Config(**_SHAPE, **_COMMON, num_hidden_layers=2, tie_word_embeddings=True),
}

# (model, case, max abs difference) of every parity check, printed at the end of the session.
_PARITY: list[tuple[str, str, float]] = []


def save_tiny(arch: str, folder: Path) -> Path:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch](), dtype=torch.float32)
    model.save_pretrained(folder)
    tiny.tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("vllm-models")
    return {arch: save_tiny(arch, base / arch) for arch in CONFIGS}


@pytest.fixture(scope="session")
def loaded(model_dirs):
    """``{arch: (hf_model, hf_tok, vllm_handle, vllm_tok)}``, each built once for the session.

    ``max_num_seqs=6`` makes a pass of 10 texts take two chunks, and a 10-text chunk two vLLM steps.
    """
    out = {}
    for arch, path in model_dirs.items():
        hf, hf_tok = emofast.load_model(str(path), dtype="float32")
        vm, v_tok = emofast.load_model(str(path), backend="vllm", dtype="float32", max_model_len=512, max_num_seqs=6)
        out[arch] = (hf, hf_tok, vm, v_tok)
    return out


@pytest.fixture
def parity():
    """``parity(model, case, ref, got)``: the max abs difference of two results (tensors or arrays), printed and
    kept for the session summary."""

    def record(model: str, case: str, ref, got) -> float:
        diff = float(np.abs(np.asarray(ref, dtype=np.float64) - np.asarray(got, dtype=np.float64)).max())
        _PARITY.append((model, case, diff))
        print(f"{model} {case}: max abs diff {diff:.2e} (values up to {np.abs(np.asarray(ref)).max():.2f})")
        return diff

    return record


def pytest_terminal_summary(terminalreporter):
    if not _PARITY:
        return
    terminalreporter.section("vLLM vs HF: max abs difference (fp32)")
    for model, case, diff in _PARITY:
        terminalreporter.write_line(f"{model:6s} {diff:.2e}  {case}")
