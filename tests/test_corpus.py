"""Streaming corpus scoring: chunks, shards + manifest, bad records, resuming after SIGKILL, checkpoint checks,
out-of-memory halving, and data parallelism on two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny
import torch
from test_workflow import write_pairs

import emofast
from emofast.cli import main
from emofast.commands.score import CheckpointError, score_corpus
from emofast.probe import load_probe

WORDS = ["tears", "sun", "laughed", "grey", "shouted", "tea", "lake", "door", "party", "alone"]


def corpus_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)]


def write_jsonl(path, texts, start=0):
    with open(path, "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"doc{start + i}", "text": t}) + "\n")


def run_args(base, method=None):
    """``emofast run`` arguments for the tiny model and data under ``base``: quick settings (no report)."""
    args = ["--model", str(base / "model"), "--pairs", str(base / "data"), "--width", "2", "--n-boot", "50"]
    args += ["--shuffled", "0", "--no-progress", "--no-report"]
    return args + (["--method", method] if method else [])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    tiny.model("llama").save_pretrained(base / "model")
    tiny.tokenizer().save_pretrained(base / "model")
    write_pairs(base / "data")
    assert main(["run", *run_args(base), "--out", str(base / "run")]) == 0
    model, tok = emofast.load_model(str(base / "model"))
    return base, load_probe(base / "run"), model, tok


def test_streaming_equals_direct_scoring_in_input_order(fitted, tmp_path):
    base, probe, model, tok = fitted
    texts = corpus_texts(53)
    write_jsonl(tmp_path / "in.jsonl", texts)
    out = tmp_path / "out.parquet"
    summary = score_corpus(probe, model, tok, tmp_path / "in.jsonl", out, chunk_size=10, progress=False)
    assert summary.rows == 53 and summary.errors == 0 and summary.chunks == 6
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [f"doc{i}" for i in range(53)]
    direct = probe.score(model, tok, texts)
    for col, values in direct.items():
        assert np.allclose(table.column(col).to_numpy(), values, atol=1e-5), col
    manifest = json.loads((tmp_path / "out.parquet.parts" / "manifest.json").read_text())
    assert manifest["rows"] == 53 and [s["rows"] for s in manifest["shards"]] == [10] * 5 + [3]


def test_folder_of_mixed_shards_and_bad_records(fitted, tmp_path, capsys):
    base, probe, model, tok = fitted
    src = tmp_path / "shards"
    src.mkdir()
    write_jsonl(src / "a.jsonl", corpus_texts(5))
    with open(src / "a.jsonl", "a") as f:
        f.write('{"id": "broken", "text": \n')  # invalid JSON, line 6
        f.write(json.dumps({"id": "empty", "text": "  "}) + "\n")  # empty text, line 7
    (src / "b.txt").write_text("tears and rain\n\nsun and tea\n")  # blank line 2
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["lake and door", None]}), src / "c.parquet")
    out = tmp_path / "scores"
    rc = main(
        [
            "score",
            "--probe",
            str(base / "run"),
            "--input",
            str(src),
            "--out",
            str(out),
            "--chunk-size",
            "4",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "scored 8 texts (4 bad records skipped)" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    rows = pa.concat_tables([pq.read_table(out / s["file"]) for s in manifest["shards"]])
    assert rows.column("id").to_pylist() == ["doc0", "doc1", "doc2", "doc3", "doc4", "1", "3", "p1"]
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(os.path.basename(e["source"]), e["line"]) for e in errors] == [
        ("a.jsonl", 6),
        ("a.jsonl", 7),
        ("b.txt", 2),
        ("c.parquet", 2),
    ]
    assert "invalid JSON" in errors[0]["problem"] and errors[1]["problem"] == "empty text"
    rc = main(
        [
            "score",
            "--probe",
            str(base / "run"),
            "--input",
            str(src),
            "--out",
            str(tmp_path / "strict"),
            "--strict",
            "--no-progress",
        ]
    )
    assert rc == 2
    assert "a.jsonl:6: invalid JSON" in capsys.readouterr().err


def test_interrupted_run_resumes_to_the_same_result(fitted, tmp_path):
    base, probe, model, tok = fitted
    write_jsonl(tmp_path / "in.jsonl", corpus_texts(47))
    whole = tmp_path / "whole.parquet"
    score_corpus(probe, model, tok, tmp_path / "in.jsonl", whole, chunk_size=6, progress=False)
    part = tmp_path / "part.parquet"
    first = score_corpus(probe, model, tok, tmp_path / "in.jsonl", part, chunk_size=6, progress=False, max_chunks=3)
    assert first.chunks == 3 and not part.exists()
    second = score_corpus(probe, model, tok, tmp_path / "in.jsonl", part, chunk_size=6, progress=False)
    assert second.resumed_chunks == 3 and second.chunks == 8
    assert pq.read_table(part).equals(pq.read_table(whole))


def test_sigkill_at_any_moment_then_rerun_is_identical(fitted, tmp_path):
    base, probe, model, tok = fitted
    src = tmp_path / "in.jsonl"
    write_jsonl(src, corpus_texts(400, seed=3))
    ref = tmp_path / "ref.parquet"
    score_corpus(probe, model, tok, src, ref, chunk_size=10, progress=False)
    out = tmp_path / "out.parquet"
    cmd = [
        sys.executable,
        "-m",
        "emofast",
        "score",
        "--probe",
        str(base / "run"),
        "--input",
        str(src),
        "--out",
        str(out),
        "--chunk-size",
        "10",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    work = tmp_path / "out.parquet.parts"
    kills = 0
    for step, delay in enumerate((0.3, 0.2)):  # kill once while loading or early, once mid-way through the chunks
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            done = len(list(work.glob("part-*.parquet"))) if work.exists() else 0
            if done >= (1 if step == 0 else 12):
                time.sleep(delay)
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # A kill counts only if it landed before the output was assembled, not while the process was exiting.
            kills += int(not out.exists())
        proc.wait()
    assert kills >= 1, "the scorer finished before it could be killed; make the corpus larger"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    assert pq.read_table(out).equals(pq.read_table(ref))
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["rows"] == 400 and len(manifest["shards"]) == 40


def test_corrupted_and_foreign_checkpoints_are_refused(fitted, tmp_path):
    base, probe, model, tok = fitted
    src = tmp_path / "in.jsonl"
    write_jsonl(src, corpus_texts(20))
    out = tmp_path / "o"
    score_corpus(probe, model, tok, src, out, chunk_size=5, progress=False, max_chunks=2)
    ckpt = out / "checkpoint.json"
    good = ckpt.read_text()
    ckpt.write_text(good.replace('"rows": 5', '"rows": 4', 1))
    with pytest.raises(CheckpointError, match="checksum does not match"):
        score_corpus(probe, model, tok, src, out, chunk_size=5, progress=False)
    ckpt.write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted checkpoint"):
        score_corpus(probe, model, tok, src, out, chunk_size=5, progress=False)
    ckpt.write_text(good)
    other = load_probe(base / "run")
    other.directions = -other.directions
    with pytest.raises(CheckpointError, match="another probe"):
        score_corpus(other, model, tok, src, out, chunk_size=5, progress=False)
    write_jsonl(src, corpus_texts(21))
    with pytest.raises(CheckpointError, match="another input"):
        score_corpus(probe, model, tok, src, out, chunk_size=5, progress=False)
    write_jsonl(src, corpus_texts(20))
    (out / "part-000001.parquet").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="missing or changed"):
        score_corpus(probe, model, tok, src, out, chunk_size=5, progress=False)
    (out / "checkpoint-rank1.json").write_text("{}")  # per-rank checkpoints of emofast before format 2
    with pytest.raises(CheckpointError, match="checkpoint-rank1.json: a checkpoint of an older emofast"):
        score_corpus(probe, model, tok, src, out, chunk_size=5, progress=False)


def test_out_of_memory_halves_the_batch_and_remembers(fitted):
    base, probe, model, tok = fitted
    texts = corpus_texts(12)
    ref = emofast.extract(model, tok, texts, batch_size=8)
    sizes = []

    def fake_oom(_mod, args):
        sizes.append(args[0].shape[0])
        if args[0].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    fresh, _ = emofast.load_model(str(base / "model"))
    h = fresh.model.layers[0].register_forward_pre_hook(fake_oom)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = emofast.extract(fresh, tok, texts, batch_size=8)
        assert any("retrying with 4" in str(w.message) for w in caught)
        assert torch.allclose(got, ref, atol=1e-5)
        assert sizes[:3] == [8, 4, 2]
        sizes.clear()
        emofast.extract(fresh, tok, texts, batch_size=8)
        assert max(sizes) == 2  # the size that worked is remembered for this model
    finally:
        h.remove()


def _torchrun(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "emofast", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.mark.parametrize("method, tol", [("mean-diff", 1e-6), ("lda", 1e-5)])
def test_two_cpu_processes_on_gloo_equal_one(fitted, tmp_path, method, tol):
    """``torchrun`` with two gloo processes: the same directions (mean-diff all-reduces fp64 sums: 1e-6; lda
    inverts a covariance of rows computed in other batches, which amplifies their float noise: 1e-5), the same
    layers and statistics, and row-by-row equal scores."""
    base, probe, model, tok = fitted
    common = run_args(base, method)
    single_run, dist_run = tmp_path / "run1", tmp_path / "run2"
    assert main(["run", *common, "--out", str(single_run)]) == 0
    _torchrun(["run", *common, "--out", str(dist_run)], tmp_path)
    single, dist = load_probe(single_run), load_probe(dist_run)
    assert (dist.directions - single.directions).abs().max() <= tol
    assert dist.chosen == single.chosen
    a = json.loads((single_run / "metrics.json").read_text())["pairs_test"]
    b = json.loads((dist_run / "metrics.json").read_text())["pairs_test"]
    for name in a:
        assert abs(a[name]["auroc"]["value"] - b[name]["auroc"]["value"]) <= 1e-6
        assert a[name]["balanced_accuracy"] == b[name]["balanced_accuracy"]
    if method != "lda":
        return
    src = tmp_path / "in.jsonl"
    write_jsonl(src, corpus_texts(37))
    out = tmp_path / "scores.parquet"
    _torchrun(
        [
            "score",
            "--probe",
            str(base / "run"),
            "--input",
            str(src),
            "--out",
            str(out),
            "--chunk-size",
            "5",
            "--no-progress",
        ],
        tmp_path,
    )
    parts = tmp_path / "scores.parquet.parts"
    assert sorted(f.name for f in parts.glob("checkpoint*")) == ["checkpoint.json"]  # rank 0 alone writes
    # Each chunk of 5 texts is one batch (16 on the CPU), so rank 1 has nothing to compute but joins every gather.
    assert json.loads((parts / "manifest.json").read_text())["rank_texts"] == [37, 0]
    got = pq.read_table(out)
    ref = probe.score(model, tok, corpus_texts(37))
    assert got.column("id").to_pylist() == [f"doc{i}" for i in range(37)]
    for col, values in ref.items():
        assert np.allclose(got.column(col).to_numpy(), values, atol=1e-5), col


def test_tensor_parallel_on_two_cpu_processes(fitted, tmp_path):
    """``--tp-plan auto``: transformers splits every layer over the two gloo ranks (weights become DTensors);
    both ranks run every batch, rank 0 writes; the numbers equal one process."""
    base, probe, model, tok = fitted
    common = run_args(base, "mean-diff")
    assert main(["run", *common, "--out", str(tmp_path / "run1")]) == 0
    _torchrun(["run", *common, "--tp-plan", "auto", "--out", str(tmp_path / "run2")], tmp_path)
    single, tp = load_probe(tmp_path / "run1"), load_probe(tmp_path / "run2")
    assert (tp.directions - single.directions).abs().max() <= 1e-4
    assert tp.chosen == single.chosen
    src = tmp_path / "in.jsonl"
    write_jsonl(src, corpus_texts(23))
    out = tmp_path / "scores.parquet"
    _torchrun(
        [
            "score",
            "--probe",
            str(base / "run"),
            "--input",
            str(src),
            "--out",
            str(out),
            "--chunk-size",
            "10",
            "--tp-plan",
            "auto",
            "--no-progress",
        ],
        tmp_path,
    )
    parts = tmp_path / "scores.parquet.parts"
    assert sorted(f.name for f in parts.glob("checkpoint*")) == ["checkpoint.json"]  # rank 0 alone writes
    got = pq.read_table(out)
    ref = probe.score(model, tok, corpus_texts(23))
    for col, values in ref.items():
        assert np.allclose(got.column(col).to_numpy(), values, atol=1e-4), col


def _one_thread_reference(probe, model, tok, src, out, **kw):
    """One process, one thread: the arithmetic of each torchrun rank (OMP_NUM_THREADS=1), so that rows compare
    bit for bit (two threads round fp32 sums differently, by ~1e-6)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        score_corpus(probe, model, tok, src, out, progress=False, **kw)
    finally:
        torch.set_num_threads(threads)
    return pq.read_table(out)


def _plan_shares(n: int, chunk: int, batch: int, world: int) -> list[int]:
    """Texts per rank when every chunk's batches (full ones, then the rest) go to rank ``j % world``."""
    shares = [0] * world
    for c in range(0, n, chunk):
        size = min(chunk, n - c)
        for j, b in enumerate(range(0, size, batch)):
            shares[j % world] += min(batch, size - b)
    return shares


def test_two_gloo_ranks_score_any_corpus_size_like_one_process(fitted, tmp_path):
    """Corpora of 1, 7, 50 and 5,000 texts (two chunks of 4,096 at most) in one torchrun job of two gloo ranks:
    every output equals one process row by row and bit for bit; ranks with no batch in a chunk still take part;
    the manifest records what each rank computed; rank 0's bar counts the corpus once, at a whole-job rate."""
    base, probe, model, tok = fitted
    args = []
    for n in (1, 7, 50, 5000):
        write_jsonl(tmp_path / f"c{n}.jsonl", corpus_texts(n, seed=n))
        args += [str(tmp_path / f"c{n}.jsonl"), str(tmp_path / f"two-{n}.parquet")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    script = os.path.join(os.path.dirname(__file__), "score_many.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script]
    res = subprocess.run([*cmd, str(base / "run"), *args], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for n in (1, 7, 50, 5000):
        ref = _one_thread_reference(probe, model, tok, tmp_path / f"c{n}.jsonl", tmp_path / f"one-{n}.parquet")
        got = pq.read_table(tmp_path / f"two-{n}.parquet")
        assert got.num_rows == n and got.equals(ref), n
        manifest = json.loads((tmp_path / f"two-{n}.parquet.parts" / "manifest.json").read_text())
        assert manifest["rank_texts"] == _plan_shares(n, 4096, 16, 2), n
        assert manifest["world_sizes"] == [2] and len(manifest["shards"]) == (2 if n > 4096 else 1)
    assert _plan_shares(50, 4096, 16, 2) == [32, 18] and min(_plan_shares(5000, 4096, 16, 2)) > 2400
    assert "(texts per rank: 2,504 / 2,496)" in res.stdout
    # One bar (rank 0) per corpus: totals are the corpus sizes, counts never pass them, token rates are not zero.
    counts = [(int(a), int(b)) for a, b in re.findall(r"score: +\d+%\S* +(\d+)/(\d+) ", res.stderr)]
    assert {b for _, b in counts} == {1, 7, 50, 5000} and all(a <= b for a, b in counts)
    assert (5000, 5000) in counts
    rates = [float(r.replace(",", "")) for r in re.findall(r"([\d,.]+) tok/s", res.stderr)]
    assert rates and min(rates) > 0


def test_kill_9_of_the_torchrun_job_then_resume_with_any_world_size(fitted, tmp_path):
    """``kill -9`` of the whole torchrun job (agent and both ranks) mid-corpus; one process then resumes for a few
    chunks, and two ranks finish: the result is bit for bit one uninterrupted single-process run."""
    base, probe, model, tok = fitted
    src = tmp_path / "in.jsonl"
    write_jsonl(src, corpus_texts(1000, seed=5))
    ref = _one_thread_reference(probe, model, tok, src, tmp_path / "ref.parquet", chunk_size=10, batch_size=4)
    out, work = tmp_path / "out.parquet", tmp_path / "out.parquet.parts"
    args = ["score", "--probe", str(base / "run"), "--input", str(src), "--out", str(out)]
    args += ["--chunk-size", "10", "--batch-size", "4", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "emofast"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen([*cmd, *args], env=env, cwd=tmp_path, **quiet)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(work.glob("part-*.parquet"))) < 10:
        time.sleep(0.02)
    # The agent and both ranks (torchrun starts each rank in its own session), ranks first: nothing cleans up.
    job = psutil.Process(proc.pid)
    for p in [*job.children(recursive=True), job]:
        p.kill()
    psutil.wait_procs([*job.children(recursive=True), job], timeout=30)
    proc.wait()
    done = json.loads((work / "checkpoint.json").read_text())["body"]["chunks"]
    assert not out.exists() and 10 <= len(done) < 100, "the job finished before it could be killed"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = score_corpus(probe, model, tok, src, out, chunk_size=10, batch_size=4, progress=False, max_chunks=5)
    finally:
        torch.set_num_threads(threads)
    assert one.resumed_chunks == len(done) and one.chunks == len(done) + 5
    _torchrun(args, tmp_path)
    assert pq.read_table(out).equals(ref)
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["rows"] == 1000 and len(manifest["shards"]) == 100 and manifest["world_sizes"] == [1, 2]
    # Chunks of 10 in batches of 4, 4, 2: rank 0 computes 6 texts of a two-rank chunk, rank 1 the other 4.
    two = [s["rank_texts"] for s in manifest["shards"] if len(s["rank_texts"]) == 2]
    assert len(two) == 95 and all(r == [6, 4] for r in two)
    assert manifest["rank_texts"] == [6 * 95 + 50, 4 * 95]
