"""emofast.extract against the study's reference loop on SmolLM2-135M (CPU), with pytest-benchmark.

    pytest bench/bench_extract.py --benchmark-only -s

Times: 200 bundled texts with the chat template, batch 16: the reference loop (``generate(max_new_tokens=1,
output_hidden_states=True)``), ``extract`` at all layers, and ``extract`` at layers 0..L/2. Memory: extra peak
RSS over the loaded model at batch 64, each method in a fresh subprocess. The last test prints the ratios (all
measured in this one run) and writes them to ``bench/results/extract.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import emofast
from emofast.data import load_pairs
from emofast.probe import DEFAULT_SYSTEM_PROMPT

HERE = Path(__file__).parent
RESULTS: dict = {}
N_TEXTS = 200


def bench_texts(n: int = N_TEXTS) -> list[str]:
    """The first texts of every pair and side of the bundled train split, in turn (deterministic)."""
    ds = load_pairs()
    pools = [p.split("train")[i] for p in ds.pairs for i in (0, 1)]
    out = []
    k = 0
    while len(out) < n:
        for pool in pools:
            if k < len(pool) and len(out) < n:
                out.append(pool[k])
        k += 1
    return out


def prompts_of(tok, texts):
    return [
        tok.apply_chat_template(
            [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": t}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for t in texts
    ]


def reference_loop(model, tok, prompts, batch_size):
    """The original study's extraction."""
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i : i + batch_size], padding=True, return_tensors="pt")
        with torch.no_grad():
            o = model.generate(
                **enc, max_new_tokens=1, output_hidden_states=True, return_dict_in_generate=True, do_sample=False
            )
        out.append(torch.stack([h[:, -1, :] for h in o.hidden_states[0]], dim=1).float())
    return torch.cat(out)


@pytest.fixture(scope="module")
def smollm2():
    model, tok = emofast.load_model("smollm2")
    texts = bench_texts()
    return model, tok, texts, prompts_of(tok, texts)


def _time(benchmark, name, fn):
    result = benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    RESULTS[name] = benchmark.stats.stats.min
    return result


def test_reference_loop(benchmark, smollm2):
    model, tok, _, prompts = smollm2
    _time(benchmark, "reference", lambda: reference_loop(model, tok, prompts, 16))


def test_extract_all_layers(benchmark, smollm2):
    model, tok, texts, _ = smollm2
    _time(
        benchmark,
        "all_layers",
        lambda: emofast.extract(
            model, tok, texts, chat_template=True, system_prompt=DEFAULT_SYSTEM_PROMPT, batch_size=16
        ),
    )


def test_extract_half_depth(benchmark, smollm2):
    model, tok, texts, _ = smollm2
    half = model.config.num_hidden_layers // 2
    _time(
        benchmark,
        "half_depth",
        lambda: emofast.extract(
            model,
            tok,
            texts,
            layers=range(half + 1),
            chat_template=True,
            system_prompt=DEFAULT_SYSTEM_PROMPT,
            batch_size=16,
        ),
    )


def test_extract_no_prefix_sharing(benchmark, smollm2):
    model, tok, texts, _ = smollm2
    _time(
        benchmark,
        "all_layers_no_prefix",
        lambda: emofast.extract(
            model,
            tok,
            texts,
            chat_template=True,
            system_prompt=DEFAULT_SYSTEM_PROMPT,
            batch_size=16,
            share_prefix=False,
        ),
    )


@pytest.mark.parametrize("position", ["last", "mean"])
@pytest.mark.parametrize("kernel", ["torch", "cpp"])
def test_extract_per_kernel(benchmark, smollm2, monkeypatch, kernel, position):
    """The end-to-end extraction with each CPU kernel forced (Triton needs a GPU: bench/gpu_check.py)."""
    model, tok, texts, _ = smollm2
    monkeypatch.setenv("EMOFAST_KERNEL", kernel)
    _time(
        benchmark,
        f"kernel_{kernel}_{position}",
        lambda: emofast.extract(
            model, tok, texts, position=position, chat_template=True, system_prompt=DEFAULT_SYSTEM_PROMPT, batch_size=16
        ),
    )


@pytest.mark.parametrize("method", ["reference", "extract"])
def test_peak_memory_batch64(benchmark, method):
    def measure():
        out = subprocess.run(
            [sys.executable, str(HERE / "peak_memory.py"), method, "64", str(N_TEXTS)],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    res = benchmark.pedantic(measure, rounds=1, iterations=1)
    RESULTS[f"extra_peak_mb_{method}"] = res["extra_peak_mb"]
    benchmark.extra_info.update(res)


def test_zz_summary(benchmark):
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # a benchmark test, so that --benchmark-only runs it
    need = {"reference", "all_layers", "half_depth", "extra_peak_mb_reference", "extra_peak_mb_extract"}
    if not need <= set(RESULTS):
        pytest.skip("run the whole file to get the ratios")
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": {k: round(v, 3) for k, v in RESULTS.items() if not k.startswith("extra")},
        "speedup_all_layers": RESULTS["reference"] / RESULTS["all_layers"],
        "speedup_half_depth": RESULTS["reference"] / RESULTS["half_depth"],
        "extra_peak_mb_batch64": {
            "reference": RESULTS["extra_peak_mb_reference"],
            "extract": RESULTS["extra_peak_mb_extract"],
        },
        "memory_ratio": RESULTS["extra_peak_mb_extract"] / RESULTS["extra_peak_mb_reference"],
    }
    per_kernel = {k: round(v, 3) for k, v in RESULTS.items() if k.startswith("kernel_")}
    if per_kernel:
        summary["seconds_per_kernel"] = per_kernel
    if "all_layers_no_prefix" in RESULTS:
        summary["speedup_all_layers_no_prefix"] = RESULTS["reference"] / RESULTS["all_layers_no_prefix"]
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "extract.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n" + json.dumps(summary, indent=2))
