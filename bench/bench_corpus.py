"""Corpus scoring at scale: texts/s and peak memory against corpus size.

    python bench/bench_corpus.py smollm2 --probe runs/smollm2 --sizes 1000 10000 100000
    python bench/bench_corpus.py tiny --sizes 10000 200000
    python bench/bench_corpus.py smollm2 --probe runs/smollm2 --sizes 1000 --procs 1 2   # data parallel

Each size runs ``emofast score`` (streaming, chunks of 4,096) in a fresh process on a JSONL corpus of short texts
(sentences of the bundled data with a running number, so that no two texts are equal) and reports wall time,
texts/s and the process's peak RSS. With ``--procs 1 2`` each size is scored by one process (torch's default
threads) and then by ``torchrun --nproc_per_node=2`` (gloo on the CPU, one thread per rank unless
``OMP_NUM_THREADS`` says otherwise) on the same corpus, and the per-rank text counts are reported.
``smollm2`` uses the embedded model and a probe from ``emofast run``
(computing only the layers up to its deepest chosen layer); ``tiny`` a small random Llama and a probe fitted on a
tiny paired set, to show that memory stays flat over large corpora in little time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def write_corpus(path: Path, n: int) -> None:
    from emofast.data import load_pairs

    ds = load_pairs()
    pool = [t for p in ds.pairs for s in ("train", "val", "test") for side in p.split(s) for t in side]
    pool = [t for t in pool if len(t.split()) <= 20]
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"t{i}", "text": f"{pool[i % len(pool)]} ({i})"}) + "\n")


def child(args) -> None:
    """Score in this process (one rank of it under torchrun) and print wall time and peak RSS (ru_maxrss) as JSON."""
    import torch

    import emofast
    from emofast.capture.distributed import distributed_session
    from emofast.commands.score import score_corpus
    from emofast.probe import load_probe

    with distributed_session() as session:
        runner = session.runner
        probe = load_probe(args.probe)
        model, tok = emofast.load_model(args.model, device=session.device)
        runner.barrier()  # time the scoring only, from a common start
        t0 = time.perf_counter()
        s = score_corpus(probe, model, tok, args.input, args.out, chunk_size=4096, progress=False, runner=runner)
        dt = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            json.dumps(
                {
                    "rank": runner.rank,
                    "world_size": runner.world_size,
                    "threads": torch.get_num_threads(),
                    "rows": s.rows,
                    "seconds": dt,
                    "texts_per_s": s.rows / dt,
                    "peak_rss_mb": peak_mb,
                    "rank_texts": s.rank_texts,
                    "deepest_layer": max(probe.scoring_layers()),
                }
            ),
            flush=True,
        )


def tiny_setup(work: Path) -> tuple[str, str]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    import tiny
    from test_corpus import run_args
    from test_workflow import write_pairs

    from emofast.cli import main

    tiny.model("llama").save_pretrained(work / "model")
    tiny.tokenizer().save_pretrained(work / "model")
    write_pairs(work / "data")
    main(["run", *run_args(work), "--out", str(work / "run")])
    return str(work / "model"), str(work / "run")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=["smollm2", "tiny", "child"])
    ap.add_argument("--probe", default="runs/smollm2")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--procs", type=int, nargs="+", default=[1], help="processes per size (>1: torchrun, gloo)")
    ap.add_argument("--input")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.which == "child":
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, probe = (args.model, args.probe) if args.which == "smollm2" else tiny_setup(work)
        rows = []
        for n in args.sizes:
            src = work / f"corpus-{n}.jsonl"
            write_corpus(src, n)
            for procs in args.procs:
                rows.append({"texts": n, **measure(procs, probe, model, src, work / f"scores-{n}-{procs}.parquet")})
                r = rows[-1]
                if procs != args.procs[0]:
                    r["max_abs_diff_vs_first"] = max_abs_diff(
                        work / f"scores-{n}-{args.procs[0]}.parquet", work / f"scores-{n}-{procs}.parquet"
                    )
                print(
                    f"{n:>8} texts, {procs} process(es) x {r['threads']} thread(s): {r['seconds']:8.1f} s "
                    f"({r['command_seconds']:.1f} s with start-up)  {r['texts_per_s']:8.1f} texts/s  "
                    f"peak RSS {'/'.join(f'{m:.0f}' for m in r['peak_rss_mb'])} MB  texts per rank "
                    f"{'/'.join(map(str, r['rank_texts']))}  (layers up to {r['deepest_layer']})"
                    + (
                        f"  max |diff| vs {args.procs[0]}: {r['max_abs_diff_vs_first']:.2g}"
                        if r.get("procs") != args.procs[0]
                        else ""
                    ),
                    flush=True,
                )
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        name = f"corpus-{args.which}.json" if args.procs == [1] else f"corpus-{args.which}-procs.json"
        (out / name).write_text(json.dumps(rows, indent=1) + "\n")


def max_abs_diff(a: Path, b: Path) -> float:
    """Largest difference between two score files' numeric columns (the rows must be the same ids in order)."""
    import numpy as np
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    if ta.column("id").to_pylist() != tb.column("id").to_pylist():
        raise RuntimeError(f"{a} and {b} hold different rows")
    cols = [c for c in ta.column_names if c not in ("id", "source", "line") and ta.schema.field(c).type != "string"]
    return max(float(np.abs(ta.column(c).to_numpy() - tb.column(c).to_numpy()).max()) for c in cols)


def measure(procs: int, probe: str, model: str, src: Path, out: Path) -> dict:
    """Score ``src`` with ``procs`` processes (torchrun when more than one); rank 0's figures, every rank's RSS."""
    cmd = [sys.executable, __file__, "child", "--probe", probe, "--model", model, "--input", str(src)]
    if procs > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    t0 = time.perf_counter()
    res = subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True, text=True)
    command_seconds = time.perf_counter() - t0
    ranks = sorted((json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")), key=lambda r: r["rank"])
    if len(ranks) != procs:
        raise RuntimeError(f"{procs} process(es) reported {len(ranks)} results:\n{res.stdout}\n{res.stderr}")
    return {
        **ranks[0],
        "procs": procs,
        "command_seconds": command_seconds,
        "peak_rss_mb": [r["peak_rss_mb"] for r in ranks],
    }


if __name__ == "__main__":
    main()
