"""Texts/s of the vLLM backend against the HF backend on the same model and texts (CPU), in one process.

Run in the vLLM environment (``scripts/test-vllm.sh`` creates it)::

    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python bench/bench_vllm.py
    ... bench/bench_vllm.py --model ~/.cache/emofast/smollm2-135m-instruct-q4_1-0.1.2

``--model synthetic`` (the default) is a random 6-layer Llama, hidden 512, 8 heads of 64 (vLLM's CPU attention
needs head_dim 64), built from a config; a folder is any saved model (SmolLM2-135M-Instruct is converted there
by the main venv's ``emofast.load_model("smollm2")``). Texts: the bundled train texts with the chat template and
the default system prompt. Each case is timed ``--repeat`` times per backend, the backends in turn, after a
warm-up on 8 texts; best times kept. vLLM's prefix cache is emptied before each run (it shares the system
prompt within a run, as the HF engine does). Both backends use the same threads (``OMP_NUM_THREADS``, default:
every core). The table also gives the max abs difference between the backends' vectors, and their largest
magnitude.

What a vLLM user already has: plain vLLM prefill of the same token ids (``LLM.generate``, ``max_tokens=1``, no
hooks) runs in the same rounds as the first case (last token, all layers), so that one run gives the three
ratios: emofast-through-vLLM / plain vLLM (the capture's cost inside vLLM), emofast-through-vLLM / emofast HF,
and plain vLLM / emofast HF.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # vLLM would drop to 1 thread otherwise
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

import torch  # noqa: E402

import emofast  # noqa: E402
from emofast.capture.prompts import render_prompts, tokenize  # noqa: E402
from emofast.data import load_pairs  # noqa: E402
from emofast.probe import DEFAULT_SYSTEM_PROMPT  # noqa: E402


def synthetic_model(folder: Path) -> Path:
    """A random fp32 Llama (6 layers, hidden 512, 8 x 64 heads) and the test suite's offline tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import tiny

    cfg = LlamaConfig(
        vocab_size=320,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(folder)
    tiny.tokenizer().save_pretrained(folder)
    return folder


def bench_texts(n: int) -> list[str]:
    """The first ``n`` texts of the bundled train split, taking every pair and side in turn."""
    pools = [side for pair in load_pairs().pairs for side in pair.split("train")]
    return [pool[k] for k in range(max(map(len, pools))) for pool in pools if k < len(pool)][:n]


def best_times(runs: dict, texts: list[str], repeat: int) -> dict:
    """``{name: (best seconds, last output)}`` of ``runs = {name: (run, reset)}``: a warm-up of each on 8 texts,
    then ``repeat`` rounds running each in turn (so that load from other processes hits them alike), with
    ``reset()`` (or None) before each timed run."""
    for run, _ in runs.values():
        run(texts[:8])
    best = {name: (float("inf"), None) for name in runs}
    for _ in range(repeat):
        for name, (run, reset) in runs.items():
            if reset is not None:
                reset()
            t0 = time.perf_counter()
            out = run(texts)
            best[name] = (min(best[name][0], time.perf_counter() - t0), out)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="synthetic", help="'synthetic' or a folder with a saved causal LM")
    ap.add_argument("--texts", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = synthetic_model(Path(tmp) / "llama") if args.model == "synthetic" else Path(args.model).expanduser()
        vm, v_tok = emofast.load_model(str(path), backend="vllm", dtype="float32")
        hf, hf_tok = emofast.load_model(str(path), dtype="float32")
    L = vm.num_layers
    texts = bench_texts(args.texts)
    chat = dict(chat_template=True, system_prompt=DEFAULT_SYSTEM_PROMPT)
    cases = {
        f"last, layers 0..{L}": dict(position="last", **chat),
        f"last, layers 0..{L // 2}": dict(position="last", layers=range(L // 2 + 1), **chat),
        f"mean, layers 0..{L}": dict(position="mean", **chat),
    }
    encodings = tokenize(hf_tok, render_prompts(hf_tok, texts, True, DEFAULT_SYSTEM_PROMPT))
    tokens = sum(map(len, encodings))
    print(
        f"model {args.model} (L={L}, D={vm.config.hidden_size}), {len(texts)} texts, {tokens} tokens, "
        f"{torch.get_num_threads()} threads, fp32, best of {args.repeat}; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'case':24s} {'HF texts/s':>11s} {'vLLM texts/s':>13s} {'vLLM/HF':>8s} {'max abs diff':>13s} {'max |x|':>8s}"
    )
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
    by_text = {x: {"prompt_token_ids": ids} for x, ids in zip(texts, encodings)}  # a text -> its token ids
    plain_t = None
    rows = []
    for j, (name, kw) in enumerate(cases.items()):
        runs = {
            "hf": (lambda x, kw=kw: emofast.extract(hf, hf_tok, x, **kw), None),
            # vLLM's prefix cache emptied before each run: it shares prefixes within a run, as HF does.
            "vllm": (lambda x, kw=kw: emofast.extract(vm, v_tok, x, **kw), vm.llm.reset_prefix_cache),
        }
        if j == 0:  # plain vLLM prefill of the same token ids, in the same rounds
            runs["plain"] = (
                lambda x: vm.llm.generate([by_text[s] for s in x], params, use_tqdm=False),
                vm.llm.reset_prefix_cache,
            )
        best = best_times(runs, texts, args.repeat)
        if j == 0:
            plain_t = best["plain"][0]
        (t_hf, a), (t_v, b) = best["hf"], best["vllm"]
        row = {
            "case": name,
            "hf_texts_per_s": len(texts) / t_hf,
            "vllm_texts_per_s": len(texts) / t_v,
            "speedup": t_hf / t_v,
            "max_abs_diff": (a - b).abs().max().item(),
            "max_abs_value": a.abs().max().item(),
        }
        rows.append(row)
        print(
            f"{name:24s} {row['hf_texts_per_s']:11.1f} {row['vllm_texts_per_s']:13.1f} {row['speedup']:7.2f}x "
            f"{row['max_abs_diff']:13.2e} {row['max_abs_value']:8.1f}"
        )
    first = rows[0]
    plain = len(texts) / plain_t
    ratios = {
        "plain_vllm_texts_per_s": plain,
        "emofast_vllm_over_plain_vllm": first["vllm_texts_per_s"] / plain,
        "emofast_vllm_over_emofast_hf": first["speedup"],
        "plain_vllm_over_emofast_hf": plain / first["hf_texts_per_s"],
    }
    print(
        f"plain vLLM prefill (LLM.generate, max_tokens=1, same token ids, same rounds as '{first['case']}'): "
        f"{plain:.1f} texts/s\n"
        f"  emofast through vLLM / plain vLLM: {ratios['emofast_vllm_over_plain_vllm']:.2f}x "
        f"(capture cost {100 * (1 / ratios['emofast_vllm_over_plain_vllm'] - 1):+.0f}% time)\n"
        f"  emofast through vLLM / emofast HF: {ratios['emofast_vllm_over_emofast_hf']:.2f}x\n"
        f"  plain vLLM / emofast HF:           {ratios['plain_vllm_over_emofast_hf']:.2f}x\n"
        f"load average after: {os.getloadavg()[0]:.1f}"
    )
    if args.json:
        meta = {
            "model": args.model,
            "texts": len(texts),
            "tokens": tokens,
            "threads": torch.get_num_threads(),
            **ratios,
        }
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
