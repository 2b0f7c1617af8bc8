"""What tracing costs: ``emofast.trace`` against plain ``model.generate`` with the same settings, on SmolLM2-135M
(CPU), with pytest-benchmark.

    pytest bench/bench_trace.py --benchmark-only -s

16 prompts, greedy, 48 new tokens, one batch; a probe of five pairs over a band of 4 layers per pair (random unit
directions: the cost does not depend on their values), at the default position (``last-8``: each reading is the
moving mean of its token's window). ``trace`` runs the same ``generate`` with hooks that project
each step's hidden states on the directions, plus one cached step that reads the last token, plus building the
table. The last test prints the overhead (both measured in this one run) and writes ``bench/results/trace.json``.
Target: at most 10% over plain ``generate``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

import emofast
from emofast.data import load_pairs
from emofast.generation.trace import encode_prompts, generation_kwargs
from emofast.probe import DEFAULT_POSITION, DEFAULT_SYSTEM_PROMPT, PairedProbe
from emofast.probe.calibration import Calibrator

HERE = Path(__file__).parent
RESULTS: dict = {}
N_PROMPTS, NEW_TOKENS = 16, 48


@pytest.fixture(scope="module")
def setup():
    model, tok = emofast.load_model("smollm2")
    L, D = model.config.num_hidden_layers, model.config.hidden_size
    pairs = [(p.left, p.right) for p in load_pairs().pairs]
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(len(pairs), L + 1, D, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    chosen = {f"{a}_vs_{b}": list(range(11 + 3 * i, 15 + 3 * i)) for i, (a, b) in enumerate(pairs)}
    probe = PairedProbe(
        pairs,
        list(range(L + 1)),
        dirs,
        torch.zeros_like(dirs),
        chosen,
        {k: Calibrator("platt", 1.0) for k in chosen},
        meta={"position": DEFAULT_POSITION, "chat_template": True, "system_prompt": DEFAULT_SYSTEM_PROMPT},
    )
    prompts = [f"Write two sentences about day {i} of a trip to the coast." for i in range(N_PROMPTS)]
    return model, tok, probe, prompts


def test_generate(benchmark, setup):
    model, tok, probe, prompts = setup
    ids, mask = encode_prompts(tok, prompts, chat_template=True, system_prompt=DEFAULT_SYSTEM_PROMPT, device="cpu")
    kw = generation_kwargs(tok, max_new_tokens=NEW_TOKENS, do_sample=False)
    kw["min_new_tokens"] = NEW_TOKENS

    def run():
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, **kw)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    RESULTS["generate_s"] = benchmark.stats.stats.min


def test_trace(benchmark, setup):
    model, tok, probe, prompts = setup
    kw = {"min_new_tokens": NEW_TOKENS}
    trace_mod = importlib.import_module("emofast.generation.trace")  # the module (the package exports the function)

    orig = trace_mod.generation_kwargs
    trace_mod.generation_kwargs = lambda *a, **k: {**orig(*a, **k), **kw}  # the same fixed length as above
    try:
        t = benchmark.pedantic(
            lambda: emofast.trace(model, tok, prompts, probe, max_new_tokens=NEW_TOKENS),
            rounds=3,
            iterations=1,
            warmup_rounds=1,
        )
    finally:
        trace_mod.generation_kwargs = orig
    assert t.num_rows > N_PROMPTS * NEW_TOKENS
    RESULTS["trace_s"] = benchmark.stats.stats.min
    RESULTS["rows"] = t.num_rows
    if "generate_s" not in RESULTS:
        return
    RESULTS["overhead"] = RESULTS["trace_s"] / RESULTS["generate_s"] - 1
    RESULTS.update({"prompts": N_PROMPTS, "new_tokens": NEW_TOKENS, "layers_read": 16, "pairs": 5})
    print(json.dumps(RESULTS, indent=1))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "trace.json").write_text(json.dumps(RESULTS, indent=1) + "\n")
