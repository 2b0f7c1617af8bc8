"""Corpus scoring at scale: texts/s and peak memory against corpus size.

    python bench/bench_corpus.py smollm2 --probe runs/smollm2 --sizes 1000 10000 100000
    python bench/bench_corpus.py tiny --sizes 10000 200000

Each size runs ``emofast score`` (streaming, chunks of 4,096) in a fresh process on a JSONL corpus of short texts
(sentences of the bundled data with a running number, so that no two texts are equal) and reports wall time,
texts/s and the process's peak RSS. ``smollm2`` uses the embedded model and a probe from ``emofast run``
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
    """Score in this process and print wall time and peak RSS (ru_maxrss) as JSON."""
    import emofast
    from emofast.commands.score import score_corpus
    from emofast.probe import load_probe

    probe = load_probe(args.probe)
    model, tok = emofast.load_model(args.model)
    t0 = time.perf_counter()
    s = score_corpus(probe, model, tok, args.input, args.out, chunk_size=4096, progress=False)
    dt = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "rows": s.rows,
                "seconds": dt,
                "texts_per_s": s.rows / dt,
                "peak_rss_mb": peak_mb,
                "deepest_layer": max(probe.scoring_layers()),
            }
        )
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
            res = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "child",
                    "--probe",
                    probe,
                    "--model",
                    model,
                    "--input",
                    str(src),
                    "--out",
                    str(work / f"scores-{n}.parquet"),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            r = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append({"texts": n, **r})
            print(
                f"{n:>8} texts: {r['seconds']:8.1f} s  {r['texts_per_s']:8.1f} texts/s  "
                f"peak RSS {r['peak_rss_mb']:7.0f} MB  (layers up to {r['deepest_layer']})",
                flush=True,
            )
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        (out / f"corpus-{args.which}.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
