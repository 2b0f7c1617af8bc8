"""Tracing and steering on the vLLM backend against the HF path, on the tiny fp32 Llama.

Greedy decoding: the same tokens on both backends; readings within ``REL`` of the column's scale (the projections
differ by float rounding only, about 1e-6 relative, see test_vllm_backend). Continuous batching is exercised by
prompts of 2 to ~300 tokens and more prompts than the engine's ``max_num_seqs`` (6); preemption by a second
engine with a KV cache of six 32-token blocks, where requests are evicted and recomputed mid-generation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import tiny
import torch
from test_vllm_backend import _write_pairs

import emofast
from emofast.backends.vllm_generate import generate
from emofast.cli import main
from emofast.commands.score import CheckpointError
from emofast.data import load_pairs
from emofast.generation import Steering, generate_rows, steer, steering_vectors
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


def test_last_k_probe_traces_the_same_on_both_backends(loaded, fitted, parity):
    """A probe fitted at "last-8" reads trailing windows on both backends alike (the shared TraceTable): same
    table, same windowed per-token reference, no single-token warning, and the last prompt token's reading is
    the probe's own score of the prompt through vLLM, calibrated percentages included."""
    hf, hf_tok, vm, v_tok = loaded["llama"]
    _, data = fitted
    probe = PairedProbe.fit(hf, hf_tok, data, width=2, position="last-8")
    ref_h = token_reference(hf, hf_tok, probe, texts=PROMPTS)
    ref_v = token_reference(vm, v_tok, probe, texts=PROMPTS)
    assert ref_v["_n_tokens"] == ref_h["_n_tokens"] > 0
    for c in probe.names:
        assert parity("llama", f"last-8 token_reference {c}", ref_h[c], ref_v[c]) <= REL * abs(ref_h[c][0]) + 1e-4
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        a = emofast.trace(hf, hf_tok, PROMPTS, probe, max_new_tokens=10, reference=ref_h)
        b = emofast.trace(vm, v_tok, PROMPTS, probe, max_new_tokens=10, reference=ref_h)
    assert not [w for w in seen if "single tokens" in str(w.message)]
    assert_same_table(a, b, "last-8 trace", parity)
    rows = b.to_pylist()
    scores = probe.score(vm, v_tok, PROMPTS)
    for pid in range(len(PROMPTS)):
        mine = [r for r in rows if r["prompt_id"] == str(pid)]
        [last] = [r for r in mine if r["calibrated"]]
        assert last["token_index"] == sum(not r["is_generated"] for r in mine) - 1  # the last prompt token
        for name in probe.column_names():
            assert last[name] == pytest.approx(float(scores[name][pid]), abs=2e-4, rel=1e-3), name


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
    # an error inside the workers' hooks (directions of the wrong width) reaches the caller; the engine goes on
    with pytest.raises(RuntimeError):
        generate(vm, ids, max_new_tokens=2, read_layers=[1], dirs=torch.ones(1, 2, 64))
    again = generate(vm, ids, max_new_tokens=7, read_layers=layers, dirs=dirs)
    assert [g.output_ids for g in again] == [g.output_ids for g in gens]


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


def test_generate_rows_matches_hf(loaded, fitted, parity):
    """steer-check's engine on vLLM: per-row steering in one call, the same greedy texts as HF, and the
    unsteered model's NLL of each text from vLLM's prompt log-probabilities (KL is NaN on vLLM)."""
    hf, hf_tok, vm, v_tok = loaded["llama"]
    probe, data = fitted
    vecs = steering_vectors(hf, hf_tok, probe, data)
    prompts = PROMPTS[2:6] * 2
    settings = [{}, {"sad_vs_happy": 6.0}, {"angry_vs_calm": -6.0}, {}, {"sad_vs_happy": -6.0}, {}, {}, {}]
    kw = dict(max_new_tokens=8, chat_template=True)
    a = generate_rows(hf, hf_tok, prompts, settings, vecs, **kw)
    b = generate_rows(vm, v_tok, prompts, settings, vecs, **kw)
    assert b["texts"] == a["texts"] and b["token_ids"] == a["token_ids"]
    assert (b["n_tokens"] == a["n_tokens"]).all() and (a["n_tokens"] > 0).any()
    has = a["n_tokens"] > 0
    assert parity("llama", "generate_rows nll", a["nll"][has], b["nll"][has]) <= REL * np.abs(a["nll"][has]).max()
    assert np.isnan(b["kl"]).all()


def _assert_equal(a, b):
    """Same schema and the same values (NaN equal to NaN)."""
    assert a.schema.equals(b.schema)
    for c in a.column_names:
        np.testing.assert_array_equal(
            a.column(c).to_numpy(zero_copy_only=False), b.column(c).to_numpy(zero_copy_only=False)
        )


def test_cli_trace_file_is_resumable(model_dirs, loaded, fitted, tmp_path, capsys, monkeypatch):
    """emofast trace --backend vllm --input: shards, a kill after two chunks, a resume, the same files as one
    uninterrupted run, and the per-generation summary."""
    hf, hf_tok, vm, v_tok = loaded["llama"]
    probe, _ = fitted
    probe.save(tmp_path / "run")
    src = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"id": f"p{i}", "text": t}) for i, t in enumerate(PROMPTS)]
    lines.insert(3, json.dumps({"id": "bad", "text": "  "}))
    src.write_text("\n".join(lines) + "\n")
    kw = dict(chunk_size=3, max_new_tokens=6, progress=False)
    from emofast.commands.trace_corpus import trace_corpus

    killed = trace_corpus(vm, v_tok, probe, src, tmp_path / "a.parquet", max_chunks=2, **kw)
    assert killed.chunks == 2 and not (tmp_path / "a.parquet").exists()
    resumed = trace_corpus(vm, v_tok, probe, src, tmp_path / "a.parquet", **kw)
    assert resumed.resumed_chunks == 2 and resumed.chunks == 4 and resumed.errors == 1
    assert trace_corpus(vm, v_tok, probe, src, tmp_path / "b.parquet", **kw).chunks == 4
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert a.num_rows > len(PROMPTS)
    _assert_equal(a, b)
    sa = pq.read_table(tmp_path / "a.summary.parquet")
    _assert_equal(sa, pq.read_table(tmp_path / "b.summary.parquet"))
    assert sa.column("prompt_id").to_pylist() == [f"p{i}" for i in range(len(PROMPTS))]
    # the same table as emofast.trace on the same prompts (ids aside)
    ref = emofast.trace(vm, v_tok, PROMPTS, probe, max_new_tokens=6, ids=[f"p{i}" for i in range(len(PROMPTS))])
    assert a.column_names == ref.column_names and a.column("token").to_pylist() == ref.column("token").to_pylist()
    for c in ("sad_vs_happy", "tz_sad_vs_happy"):
        gen = np.asarray(ref.column("is_generated")) & ~np.asarray(ref.column("is_sink"))
        pid = np.asarray(ref.column("prompt_id").to_pylist())
        vals = np.asarray(ref.column(c))
        want = [
            vals[gen & (pid == p)].mean() if (gen & (pid == p)).any() else np.nan for p in sa["prompt_id"].to_pylist()
        ]
        np.testing.assert_allclose(np.asarray(sa.column(f"mean_{c}")), want, rtol=1e-5)
    # a different setting refuses the checkpoint
    with pytest.raises(CheckpointError, match="other settings"):
        trace_corpus(vm, v_tok, probe, src, tmp_path / "a.parquet", chunk_size=3, max_new_tokens=7, progress=False)

    # the CLI, on the vLLM backend (the session's engine: see test_trace_under_preemption)
    def load(args, name):
        assert args.backend == "vllm" and name == str(model_dirs["llama"])
        return vm, v_tok

    monkeypatch.setattr(emofast.cli, "_load", load)
    rc = main(
        [
            "trace",
            "--backend",
            "vllm",
            "--model",
            str(model_dirs["llama"]),
            "--probe",
            str(tmp_path / "run"),
            "--input",
            str(src),
            "--out",
            str(tmp_path / "c.parquet"),
            "--max-new-tokens",
            "6",
            "--chunk-size",
            "3",
            "--no-progress",
        ]
    )
    assert rc == 0 and "traced 10 prompts" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "c.summary.parquet").num_rows == len(PROMPTS)


def test_steer_check_runs_on_vllm(loaded, fitted, tmp_path):
    """steer-check end to end on the vLLM handle (fixed alphas, 3 prompts, greedy): every row judged, the damage
    measured as perplexity (KL is not available on vLLM)."""
    from emofast.commands.steer_check import steer_check

    _, _, vm, v_tok = loaded["llama"]
    probe, data = fitted
    res = steer_check(
        vm,
        v_tok,
        probe,
        "sad_vs_happy",
        tmp_path / "check",
        alphas=[-4.0, 4.0],
        n_prompts=3,
        judges=("vader",),
        max_new_tokens=6,
        do_sample=False,
        n_boot=50,
        data=data,
        progress=False,
    )
    assert (tmp_path / "check" / "summary.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "check" / "steer.jsonl").read_text().splitlines()]
    assert len(rows) >= 3 * 5 and all("vader" in r for r in rows)
    made = [r for r in rows if r["n_tokens"] > 0]
    assert made and all(np.isfinite(r["nll"]) and np.isnan(r["kl"]) for r in made)
    assert res["rows_generated"] >= 3 * 5


_SUBPROCESS = textwrap.dedent(
    """
    import os, sys, torch
    from emofast.backends.vllm_generate import generate
    import emofast
    if __name__ == "__main__":
        path, out = sys.argv[1], sys.argv[2]
        # a KV cache of six 32-token blocks for 8 requests of ~35 + 40 tokens: vLLM preempts and recomputes
        vm, tok = emofast.load_model(path, backend="vllm", dtype="float32", max_model_len=128, max_num_seqs=8,
                                     block_size=32, num_gpu_blocks_override=6)
        args = torch.load(sys.argv[3])
        gens = generate(vm, args["ids"], max_new_tokens=40, read_layers=[1, 3], dirs=args["dirs"],
                        additions=args["adds"])
        torch.save([(g.output_ids, g.proj, g.norms, g.recomputed) for g in gens], out)
        vm.llm.llm_engine.engine_core.shutdown()  # see test_vllm_backend's multiprocess test
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
    """
)


def test_engine_in_another_process_under_preemption(model_dirs, loaded, tmp_path, parity):
    """vLLM's default (and, on a GPU, only) layout, the engine in another process, with a KV cache so small that
    vLLM preempts requests and recomputes them mid-generation: the hooks, the steering table and the readings
    cross the process boundary, and per-request steering and readings equal the in-process engine's (which
    equal HF's, above). In a subprocess: a second engine in this process would tear down the first's groups."""
    _, _, vm, v_tok = loaded["llama"]
    ids = [v_tok(t)["input_ids"] for t in tiny.CORPUS[:8]]
    g = torch.Generator().manual_seed(0)
    args = {
        "ids": ids,
        "dirs": torch.randn(2, 3, 128, generator=g),
        "adds": {2: torch.randn(8, 128, generator=g) * torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0])[:, None]},
    }
    torch.save(args, tmp_path / "args.pt")
    script = tmp_path / "sub.py"
    script.write_text(_SUBPROCESS)
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1")
    env.pop("VLLM_ALLOW_INSECURE_SERIALIZATION", None)
    run = subprocess.run(
        [sys.executable, str(script), str(model_dirs["llama"]), str(tmp_path / "out.pt"), str(tmp_path / "args.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    got = torch.load(tmp_path / "out.pt")
    assert sum(r for *_, r in got) > 0, "no request was preempted: the test needs a smaller cache"
    kw = dict(max_new_tokens=40, read_layers=[1, 3], dirs=args["dirs"])
    ref = generate(vm, ids, additions=args["adds"], **kw)
    plain = generate(vm, ids, max_new_tokens=40)
    assert [o for o, *_ in got] == [r.output_ids for r in ref]
    assert any(r.output_ids != p.output_ids for r, p in zip(ref, plain))  # the steered rows changed
    assert all(ref[i].output_ids == plain[i].output_ids for i in (1, 3, 5, 7))  # the zero rows did not
    for (_, proj, norms, _), r in zip(got, ref):
        assert proj.shape == r.proj.shape
        assert parity("llama", "other process, preempted: readings", r.proj, proj) <= 1e-4
        assert parity("llama", "other process, preempted: norms", r.norms, norms) <= 1e-4
