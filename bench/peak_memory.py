"""Extra peak memory (RSS above the loaded model) of one extraction method, in its own process.

    python bench/peak_memory.py reference|extract BATCH N_TEXTS

Prints one JSON line: the method, the batch size, the baseline RSS after loading, the peak during the run
(sampled every millisecond by a thread) and their difference.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from bench_extract import bench_texts, prompts_of, reference_loop  # noqa: E402

import emofast  # noqa: E402
from emofast.probe import DEFAULT_SYSTEM_PROMPT  # noqa: E402


def main() -> None:
    method, batch, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model, tok = emofast.load_model("smollm2")
    texts = bench_texts(n)
    prompts = prompts_of(tok, texts)
    proc = psutil.Process()
    # a warm-up on two texts, so that one-off allocations (thread pools, caches) count in the baseline
    if method == "reference":
        reference_loop(model, tok, prompts[:2], 2)
    else:
        emofast.extract(model, tok, texts[:2], chat_template=True, system_prompt=DEFAULT_SYSTEM_PROMPT)
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    if method == "reference":
        reference_loop(model, tok, prompts, batch)
    else:
        emofast.extract(model, tok, texts, chat_template=True, system_prompt=DEFAULT_SYSTEM_PROMPT, batch_size=batch)
    stop.set()
    t.join()
    mb = 1024 * 1024
    print(
        json.dumps(
            {
                "method": method,
                "batch": batch,
                "baseline_mb": round(base / mb, 1),
                "peak_mb": round(peak[0] / mb, 1),
                "extra_peak_mb": round((peak[0] - base) / mb, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
