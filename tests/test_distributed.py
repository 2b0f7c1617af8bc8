"""The process group of a torchrun job: backend and GPU by device (simulated GPU hosts on the CPU), refusals,
the group destroyed at the end and on error, and two torchrun agents (``--nnodes 2``) on one machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import tiny
import torch
import torch.distributed as dist
from test_corpus import _one_thread_reference, corpus_texts, run_args, write_jsonl
from test_workflow import write_pairs

import emofast
from emofast.capture.distributed import ReplicatedRunner, ShardedRunner, distributed_session, resolve_device
from emofast.cli import main
from emofast.probe import load_probe


@pytest.fixture
def torchrun(monkeypatch, tmp_path):
    """Pretend to be rank ``LOCAL_RANK`` of a torchrun job on a host with ``gpus`` GPUs; records what the session
    asks of torch.distributed and CUDA. The group it really creates is a one-process gloo group (a file store),
    so that barrier and destroy run for real."""
    calls: list = []
    real_init, real_barrier, real_destroy = dist.init_process_group, dist.barrier, dist.destroy_process_group

    def setup(world=2, local_world=2, local_rank=0, gpus=2):
        env = dict(WORLD_SIZE=world, RANK=local_rank, LOCAL_RANK=local_rank, LOCAL_WORLD_SIZE=local_world)
        for k, v in env.items():
            monkeypatch.setenv(k, str(v))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))

        def rendezvous(url):
            assert url == "env://"
            yield dist.FileStore(str(tmp_path / f"store{len(calls)}"), 1), local_rank, world

        def init(backend, *, store, rank, world_size, **kw):
            assert (rank, world_size) == (local_rank, world) and isinstance(store, dist.PrefixStore)
            calls.append(("init", backend, kw))
            real_init("gloo", store=store, rank=0, world_size=1)

        monkeypatch.setattr(dist, "rendezvous", rendezvous)
        monkeypatch.setattr(dist, "init_process_group", init)
        monkeypatch.setattr(dist, "barrier", lambda *a, **k: (calls.append(("barrier",)), real_barrier(*a, **k)))
        monkeypatch.setattr(dist, "destroy_process_group", lambda *a: (calls.append(("destroy",)), real_destroy(*a)))
        return calls

    yield setup
    if dist.is_initialized():  # a failed test must not leave a group to the next one
        real_destroy()


def test_cuda_host_gets_nccl_with_the_ranks_gpu_then_barrier_and_destroy(torchrun):
    calls = torchrun(local_rank=1, gpus=2)
    with distributed_session() as s:
        assert s.backend == "nccl" and s.device == torch.device("cuda", 1)
        assert isinstance(s.runner, ShardedRunner)
        assert dist.is_initialized()
    cuda1 = torch.device("cuda", 1)
    assert calls == [("set_device", cuda1), ("init", "nccl", {"device_id": cuda1}), ("barrier",), ("destroy",)]
    assert not dist.is_initialized()


def test_device_cpu_on_a_gpu_host_gets_gloo(torchrun):
    calls = torchrun(gpus=2)
    with distributed_session("cpu", tensor_parallel=True) as s:
        assert s.backend == "gloo" and s.device == torch.device("cpu")
        assert isinstance(s.runner, ReplicatedRunner)
    assert calls == [("init", "gloo", {}), ("barrier",), ("destroy",)]


def test_no_cuda_gets_gloo_and_device_cuda_is_refused(torchrun):
    calls = torchrun(gpus=0)
    with distributed_session() as s:
        assert s.backend == "gloo" and s.device == torch.device("cpu")
    assert calls[0] == ("init", "gloo", {})
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_more_processes_than_gpus_is_refused_before_any_group(torchrun):
    calls = torchrun(local_world=4, local_rank=3, gpus=2)
    with pytest.raises(ValueError, match=r"4 processes on this machine but 2 GPUs.*--nproc-per-node 2"):
        with distributed_session():
            pass
    assert calls == [] and not dist.is_initialized()
    with distributed_session("cpu") as s:  # gloo on the CPU has no such limit
        assert s.backend == "gloo"


def test_explicit_gpu_index_with_several_ranks_per_machine_is_refused(torchrun):
    torchrun(local_world=2, gpus=2)
    with pytest.raises(ValueError, match="same GPU"):
        resolve_device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda", 0)


def test_device_map_needs_one_rank_per_machine(torchrun):
    """``--device-map auto`` under torchrun: refused with two ranks on the machine (each would spread over every
    GPU); with one rank per machine (``--nnodes N --nproc-per-node 1``) the map is kept and NCCL uses cuda:0."""
    calls = torchrun(world=2, local_world=2, gpus=2)
    with pytest.raises(ValueError, match="--nproc-per-node 1"):
        resolve_device(None, device_map="auto")
    calls = torchrun(world=2, local_world=1, local_rank=0, gpus=2)
    with distributed_session(device_map="auto") as s:
        assert s.device == torch.device("cuda", 0) and s.backend == "nccl"
    assert calls[1] == ("init", "nccl", {"device_id": torch.device("cuda", 0)})
    assert resolve_device(None, device_map="auto") == torch.device("cuda", 0)


def test_error_in_the_command_destroys_the_group_without_a_barrier(torchrun):
    calls = torchrun(gpus=0)
    with pytest.raises(RuntimeError, match="boom"):
        with distributed_session():
            raise RuntimeError("boom")
    assert calls == [("init", "gloo", {}), ("destroy",)] and not dist.is_initialized()


def test_a_group_that_already_exists_is_used_and_left_to_its_owner(torchrun):
    calls = torchrun(gpus=0)
    with distributed_session() as outer:
        with distributed_session() as inner:
            assert inner.backend == "gloo" and inner.runner.world_size == 1
        assert dist.is_initialized() and calls == [("init", "gloo", {})]
        assert outer.backend == "gloo"
    assert calls[-1] == ("destroy",) and not dist.is_initialized()


def test_outside_torchrun_nothing_is_initialised(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed_session() as s:
        assert s.backend is None and s.device is None and s.runner.world_size == 1
    assert not dist.is_initialized()
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    tiny.model("llama").save_pretrained(base / "model")
    tiny.tokenizer().save_pretrained(base / "model")
    write_pairs(base / "data")
    assert main(["run", *run_args(base), "--out", str(base / "run")]) == 0
    model, tok = emofast.load_model(str(base / "model"))
    return base, load_probe(base / "run"), model, tok


def test_score_command_on_a_gpu_host_with_device_cpu_uses_gloo_and_cleans_up(fitted, torchrun, tmp_path):
    """``emofast score --device cpu`` as a rank on a (simulated) GPU host: gloo, a barrier, the group destroyed;
    the scores equal one process."""
    base, probe, model, tok = fitted
    calls = torchrun(gpus=2)
    src = tmp_path / "in.jsonl"
    write_jsonl(src, corpus_texts(9))
    out = tmp_path / "s.parquet"
    args = ["score", "--probe", str(base / "run"), "--input", str(src), "--out", str(out), "--no-progress"]
    assert main([*args, "--device", "cpu"]) == 0
    assert calls == [("init", "gloo", {}), ("barrier",), ("destroy",)]
    assert not dist.is_initialized()
    ref = probe.score(model, tok, corpus_texts(9))
    got = pq.read_table(out)
    for col, values in ref.items():
        assert np.allclose(got.column(col).to_numpy(), values, atol=1e-5), col
    calls.clear()
    assert main([*args, "--device", "cpu", "--device-map", "auto"]) == 2  # two ranks here: refused, clearly
    assert calls == [] and not dist.is_initialized()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(args, tmp_path) -> None:
    """Two torchrun agents on this machine, ``--nnodes 2 --nproc-per-node 1``, meeting at a c10d rendezvous on
    127.0.0.1 (as two machines would at the first one's address); both must exit 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    port, procs, logs = _free_port(), [], []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "emofast-test"]
        cmd += ["--rdzv-conf", f"is_host={1 - node}", "--local-addr", "127.0.0.1", "-m", "emofast", *args]
        logs.append(open(tmp_path / f"node{node}.log", "w+"))
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=logs[-1], stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = []
    for f in logs:
        f.seek(0)
        text.append(f.read()[-3000:])
        f.close()
    assert codes == [0, 0], "\n---\n".join(text)


def test_two_torchrun_agents_nnodes_2_score_like_one_process(fitted, tmp_path):
    base, probe, model, tok = fitted
    src = tmp_path / "in.jsonl"
    write_jsonl(src, corpus_texts(50, seed=3))
    out = tmp_path / "two.parquet"
    args = ["score", "--probe", str(base / "run"), "--input", str(src), "--out", str(out), "--no-progress"]
    _two_nodes(args, tmp_path)
    ref = _one_thread_reference(probe, model, tok, src, tmp_path / "one.parquet")
    assert pq.read_table(out).equals(ref)
    manifest = json.loads((tmp_path / "two.parquet.parts" / "manifest.json").read_text())
    assert manifest["rank_texts"] == [32, 18] and manifest["world_sizes"] == [2]


def test_two_torchrun_agents_nnodes_2_run_like_one_process(fitted, tmp_path):
    base, *_ = fitted
    common = run_args(base)
    assert main(["run", *common, "--out", str(tmp_path / "one")]) == 0
    _two_nodes(["run", *common, "--out", str(tmp_path / "two")], tmp_path)
    one, two = load_probe(tmp_path / "one"), load_probe(tmp_path / "two")
    assert (two.directions - one.directions).abs().max() <= 1e-6 and two.chosen == one.chosen
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert a["pairs_test"].keys() == b["pairs_test"].keys()
    for name in a["pairs_test"]:
        x, y = a["pairs_test"][name], b["pairs_test"][name]
        assert abs(x["auroc"]["value"] - y["auroc"]["value"]) <= 1e-6
        assert x["balanced_accuracy"] == y["balanced_accuracy"]
    assert json.loads((tmp_path / "two" / "timing.json").read_text())["ranks"] == 2
