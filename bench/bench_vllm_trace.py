"""Tracing and steering on the vLLM backend against plain vLLM generation and the HF path (CPU), in one process.

Run in the vLLM environment (``scripts/test-vllm.sh`` creates it), under the shared lock on a shared machine::

    VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv-vllm/bin/python bench/bench_vllm_trace.py \\
        --model ~/.cache/emofast/smollm2-135m-instruct-q4_1-0.1.2 --probe /work/runs/smollm2-steer

The same bundled neutral prompts (chat template, the probe's system prompt), greedy, ``--new`` new tokens, every
case timed ``--repeat`` times in turn after a warm-up on 4 prompts (best kept; ``bench_vllm.best_times``):

* ``vLLM generate``: plain ``LLM.generate`` of the token ids (no emofast hooks), the anchor;
* ``vLLM trace``: ``emofast.trace`` on the vLLM handle (hooks read the probe's ``K + 1`` projections at its
  scoring layers; one extra token per prompt; the table assembled on the driver);
* ``HF trace``: ``emofast.trace`` on the HF model (batches of 32, KV cache);
* ``vLLM generate (emofast)``: ``emofast.steer`` with no steering (emofast's call path, hooks installed, nothing
  read or added) and ``vLLM steer``: the same with one pair steered at its chosen layers (the probe's directions,
  sigma 1: the cost does not depend on the direction).

The per-token reference of the ``tz_`` columns is measured once before timing. vLLM's prefix cache is emptied
before every run. Prints one table of seconds and ratios against plain vLLM generate; ``--json`` writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # vLLM would drop to 1 thread otherwise
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from bench_vllm import best_times  # noqa: E402

import emofast  # noqa: E402
from emofast.data.prompts import steer_prompts  # noqa: E402
from emofast.generation import steer  # noqa: E402
from emofast.generation.backend import tokenize  # noqa: E402
from emofast.generation.trace import token_reference  # noqa: E402
from emofast.probe.paired import load_probe  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a folder with a saved causal LM (SmolLM2: see bench_vllm.py)")
    ap.add_argument("--probe", required=True, help="a run folder with a probe fitted on that model")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new", type=int, default=32, help="new tokens per prompt")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    path = str(Path(args.model).expanduser())
    probe = load_probe(args.probe)
    load0 = os.getloadavg()
    vm, v_tok = emofast.load_model(path, backend="vllm", dtype="float32", max_model_len=args.max_model_len)
    hf, hf_tok = emofast.load_model(path, dtype="float32")
    prompts = [t for _, t in steer_prompts(args.prompts)]
    ex = probe.extraction()
    chat = bool(ex.get("chat_template", True))
    system = ex.get("system_prompt") if chat else None
    ids = tokenize(v_tok, prompts, chat_template=chat, system_prompt=system)
    ref = token_reference(vm, v_tok, probe)
    pair = probe.names[0]
    vecs = {pair: {int(k): (probe.directions_for([k])[0, 0], 1.0) for k in probe.chosen[pair]}}
    from vllm import SamplingParams

    plain_params = SamplingParams(max_tokens=args.new, temperature=0.0, detokenize=False)
    kw = dict(max_new_tokens=args.new)

    def plain(p):
        outs = vm.llm.generate([{"prompt_token_ids": i} for i in ids[: len(p)]], plain_params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    def gen_tokens(table):
        return int(sum(table.column("is_generated").to_pylist()))

    runs = {
        "vLLM generate": (plain, vm.llm.reset_prefix_cache),
        "vLLM trace": (lambda p: gen_tokens(emofast.trace(vm, v_tok, p, probe, reference=ref, **kw)), None),
        "HF trace": (lambda p: gen_tokens(emofast.trace(hf, hf_tok, p, probe, reference=ref, **kw)), None),
        "vLLM generate (emofast)": (lambda p: len(steer(vm, v_tok, p, probe, {}, **kw)), None),
        "vLLM steer": (lambda p: len(steer(vm, v_tok, p, probe, {pair: 4.0}, vectors=vecs, **kw)), None),
    }
    print(
        f"model {path} (L={vm.num_layers}), probe {args.probe} ({len(probe.scoring_layers())} scoring layers, "
        f"K={probe.directions_for(probe.scoring_layers()).shape[1]}), {len(prompts)} prompts of "
        f"{sum(map(len, ids)) / len(ids):.0f} tokens, {args.new} new, {torch.get_num_threads()} threads, fp32, "
        f"best of {args.repeat}; load average before {load0[0]:.2f}"
    )
    t0 = time.perf_counter()
    best = best_times(runs, prompts, args.repeat)
    load1 = os.getloadavg()
    base = best["vLLM generate"][0]
    rows = []
    print(f"{'case':26s} {'seconds':>8s} {'x plain vLLM':>13s} {'generated tokens':>17s}")
    for name, (secs, out) in best.items():
        rows.append({"case": name, "seconds": round(secs, 3), "ratio": round(secs / base, 3), "output": out})
        print(f"{name:26s} {secs:8.2f} {secs / base:13.2f} {out!s:>17s}")
    hf_t, v_t = best["HF trace"][0], best["vLLM trace"][0]
    print(
        f"vLLM trace / HF trace {v_t / hf_t:.2f}; vLLM steer / emofast unsteered on vLLM "
        f"{best['vLLM steer'][0] / best['vLLM generate (emofast)'][0]:.2f}; total {time.perf_counter() - t0:.0f} s; "
        f"load average after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "load_before": load0, "load_after": load1}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
