"""Tracing and steering on the vLLM backend against the HF path, on the tiny fp32 Llama.

Greedy decoding: the same tokens on both backends; readings within ``REL`` of the column's scale (the projections
differ by float rounding only, about 1e-6 relative, see test_vllm_backend). Continuous batching is exercised by
prompts of 2 to ~300 tokens and more prompts than the engine's ``max_num_seqs`` (6); preemption by a second
engine with a KV cache of six 32-token blocks, where requests are evicted and recomputed mid-generation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiny
import torch
from test_vllm_backend import _write_pairs

import emofast
from emofast.backends.vllm_generate import generate
from emofast.data import load_pairs
from emofast.generation import Steering, steer, steering_vectors
from emofast.generation.trace import token_reference
from emofast.probe import PairedProbe

REL = 1e-3
# 2 to ~300 tokens, 10 prompts (> max_num_seqs = 6): several steps mix prefills and decodes of other requests
PROMPTS = ["Hi.", " ".join(tiny.CORPUS)] + tiny.CORPUS[:7] + ["Rain again today, and again tomorrow."]


@pytest.fixture(scope="module")
def fitted(loaded, tmp_path_factory):
    hf, hf_tok, vm, v_tok = loaded["llama"]
    data = load_pairs(_write_pairs(tmp_path_factory.mktemp("gen") / "pairs"))
    probe = PairedProbe.fit(hf, hf_tok, data, width=2)
    return probe, data


def _texts(table):
    return json.loads(table.schema.metadata[b"generated_texts"])


def assert_same_table(a, b, what: str, parity):
    """Same schema, same tokens and flags; float columns within REL of each column's largest value."""
    assert a.column_names == b.column_names, what
    assert _texts(a) == _texts(b), what
    for c in a.column_names:
        x = a.column(c).to_numpy(zero_copy_only=False)
        y = b.column(c).to_numpy(zero_copy_only=False)
        if x.dtype.kind != "f":
            assert (x == y).all(), f"{what}: {c}"
            continue
        assert (np.isnan(x) == np.isnan(y)).all(), f"{what}: {c}"
        ok = ~np.isnan(x)
        if ok.any():
            scale = max(float(np.abs(x[ok]).max()), 1e-6)
            assert parity("llama", f"{what}: {c}", x[ok], y[ok]) <= REL * scale, f"{what}: {c}"


def test_trace_matches_hf_under_continuous_batching(loaded, fitted, parity):
    hf, hf_tok, vm, v_tok = loaded["llama"]
    probe, _ = fitted
    ref = token_reference(hf, hf_tok, probe)
    for kw in (dict(max_new_tokens=12), dict(max_new_tokens=5, include_prompt=False, chat_template=False)):
        a = emofast.trace(hf, hf_tok, PROMPTS, probe, reference=ref, **kw)
        b = emofast.trace(vm, v_tok, PROMPTS, probe, reference=ref, **kw)
        assert a.num_rows > len(PROMPTS) and sum(b.column("is_generated").to_pylist()) > 0
        assert_same_table(a, b, f"trace {kw}", parity)
    # the per-token reference itself, computed through vLLM
    ref_v = token_reference(vm, v_tok, probe, texts=PROMPTS)
    ref_h = token_reference(hf, hf_tok, probe, texts=PROMPTS)
    assert ref_v["_n_tokens"] == ref_h["_n_tokens"] > 0
    for c in probe.names:
        assert parity("llama", f"token_reference {c}", ref_h[c], ref_v[c]) <= REL * abs(ref_h[c][0]) + 1e-4


def test_every_token_is_read_and_the_last_one_too(loaded, fitted):
    """One extra token makes the last kept one readable; the workers return projections only ([R, nL, K])."""
    _, _, vm, v_tok = loaded["llama"]
    probe, _ = fitted
    layers = probe.scoring_layers()
    dirs = probe.directions_for(layers)
    ids = [v_tok(t)["input_ids"] for t in PROMPTS[:3]]
    gens = generate(vm, ids, max_new_tokens=7, read_layers=layers, dirs=dirs)
    for g, p in zip(gens, ids):
        assert g.prompt_ids == p and 0 < len(g.output_ids) <= 7
        assert g.proj.shape == (len(p) + len(g.output_ids) - int(len(g.output_ids) < 7), len(layers), dirs.shape[1])
        assert g.norms.shape == g.proj.shape[:2] and torch.isfinite(g.proj).all()
    only_prompts = generate(vm, ids, max_new_tokens=0, read_layers=layers, dirs=dirs)
    assert [g.proj.shape[0] for g in only_prompts] == [len(p) for p in ids]
    assert generate(vm, [], max_new_tokens=3) == []
    with pytest.raises(ValueError, match="do not fit the model's context"):
        generate(vm, [[1] * 500], max_new_tokens=20)
    with pytest.raises(ValueError, match=r"dirs must be \[nL, K, D\]"):
        generate(vm, ids, max_new_tokens=2, read_layers=[1, 2], dirs=dirs[:1])
    with pytest.raises(ValueError, match="out of range"):
        generate(vm, ids, max_new_tokens=2, read_layers=[9], dirs=dirs[:1])


def test_trace_under_preemption(model_dirs, loaded, fitted, parity):
    """A KV cache of 6 blocks of 32 tokens for 8 requests of ~35 + 40 tokens: vLLM preempts and recomputes
    requests; the readings still map to the right requests and positions, and equal HF's."""
    hf, hf_tok, _, _ = loaded["llama"]
    probe, _ = fitted
    small, s_tok = emofast.load_model(
        str(model_dirs["llama"]),
        backend="vllm",
        dtype="float32",
        max_model_len=128,
        max_num_seqs=8,
        block_size=32,
        num_gpu_blocks_override=6,
    )
    try:
        prompts = tiny.CORPUS[:8]
        layers = probe.scoring_layers()
        ids = [s_tok(t)["input_ids"] for t in prompts]
        gens = generate(small, ids, max_new_tokens=40, read_layers=layers, dirs=probe.directions_for(layers))
        assert sum(g.recomputed for g in gens) > 0, "no request was preempted: the test needs a smaller cache"
        kw = dict(max_new_tokens=40, chat_template=False, reference=None)
        a = emofast.trace(hf, hf_tok, prompts, probe, **kw)
        b = emofast.trace(small, s_tok, prompts, probe, **kw)
        assert_same_table(a, b, "trace under preemption", parity)
    finally:
        del small  # (no engine shutdown: in-process, it would tear down the process's vLLM groups of the others)


def test_steering_matches_hf(loaded, fitted, parity):
    """One setting for all prompts, per-prompt settings in one batch, where="all", and steer(trace=True): the
    same greedy tokens as HF with the same vectors; steering changes what the model writes."""
    hf, hf_tok, vm, v_tok = loaded["llama"]
    probe, data = fitted
    vecs = steering_vectors(hf, hf_tok, probe, data)
    prompts = PROMPTS[2:8]
    kw = dict(max_new_tokens=10, vectors=vecs)
    plain = steer(vm, v_tok, prompts, probe, {}, max_new_tokens=10)
    assert plain == steer(hf, hf_tok, prompts, probe, {}, max_new_tokens=10)
    one = {"sad_vs_happy": 6.0}
    got = steer(vm, v_tok, prompts, probe, one, **kw)
    assert got == steer(hf, hf_tok, prompts, probe, one, **kw)
    assert got != plain, "alpha 6 changed no generation: the test does not show steering"
    settings = [{"sad_vs_happy": 6.0}, {}, {"angry_vs_calm": -6.0}, {"sad_vs_happy": -3.0, "angry_vs_calm": 3.0}]
    settings += [{}, {"sad_vs_happy": 6.0}]
    rows = steer(vm, v_tok, prompts, probe, settings, **kw)
    assert rows == steer(hf, hf_tok, prompts, probe, settings, **kw)
    assert rows[1] == plain[1] and rows[4] == plain[4] and rows[0] == got[0] and rows[5] == got[5]
    assert steer(vm, v_tok, prompts, probe, one, where="all", **kw) == steer(
        hf, hf_tok, prompts, probe, one, where="all", **kw
    )
    ref = token_reference(hf, hf_tok, probe)
    a = steer(hf, hf_tok, prompts, probe, settings, trace=True, **kw)[1]
    with Steering(vm, probe, settings, vectors=vecs):  # the context manager form, per-row, with a trace
        b = emofast.trace(vm, v_tok, prompts, probe, max_new_tokens=10, reference=ref)
    assert_same_table(a, b, "steered trace", parity)
    # the context is gone: unsteered again
    assert steer(vm, v_tok, prompts, probe, {}, max_new_tokens=10) == plain
