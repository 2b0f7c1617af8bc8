"""GPU check of the fused select-reduce Triton kernel; prints one table. On a CUDA machine, with emofast
installed (``pip install -e .``, which maps ``triton_kernels/`` to ``emofast.triton_kernels``):

    python bench/gpu_check.py            # a few minutes at most on an H100/H200

(a) correctness of the compiled kernel against the torch reference: fp32/fp16/bf16, D in {576, 769, 2560,
    4096}, contiguous and strided x, default (atomics) and deterministic mode (two runs bit-identical);
(b) bandwidth of the fused op on "mean"-style calls (every token of 32 x 512 sequences, weights 1/T): bytes of
    the gathered rows read plus the outputs written, over the kernel time (triton.testing.do_bench), against a
    device-to-device ``copy_`` of the same number of bytes (which reads and writes them: 2x the bytes over its
    time). The target for D >= 2048 is >= 70% of the copy bandwidth; lower is flagged LOW.

(c) end to end: ``emofast.extract`` against the study's reference loop on SmolLM2 in fp16 and bf16 (largest
    relative row error, speed ratio), and the vLLM backend's rate when vllm is installed.

``--dry-run`` needs no GPU: it compiles the kernels for sm_75/sm_80/sm_90 with triton's own ptxas (this catches
constructs that the interpreter accepts but the compiler rejects), in a subprocess (``--compile-only``, which
prints its rows as JSON: the interpreter needs TRITON_INTERPRET=1 before triton is first imported, the
compiler needs it unset), then runs (a) at tiny sizes on the CPU through the Triton interpreter, and (c) in
fp32 on 16 texts on the CPU. The exit status is 1 if any check FAILs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from emofast.kernels.reference import select_reduce_reference

KERNELS = "emofast.triton_kernels.select_reduce"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BANDWIDTH_TARGET = 0.70  # of the copy bandwidth, for D >= 2048


@dataclass
class Row:
    check: str
    case: str
    result: str  # "ok", "FAIL", "LOW" (below the bandwidth target) or "info"
    detail: str


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def make_case(dtype, b, t, d, rows, classes, k, strided, device, seed=0):
    """Keyword arguments of one call: random rows/labels/weights/directions (none for k=0), x contiguous or a
    strided slice."""
    gen = torch.Generator().manual_seed(seed)
    if strided:  # every other token of a wider buffer, offset into the hidden size
        x = torch.randn(b, 2 * t, d + 8, generator=gen).to(dtype)[:, ::2, 5 : 5 + d]
    else:
        x = torch.randn(b, t, d, generator=gen).to(dtype)
    return dict(
        x=x.to(device),
        batch_index=torch.randint(0, b, (rows,), generator=gen).to(device),
        token_index=torch.randint(0, t, (rows,), generator=gen).to(device),
        labels=torch.randint(0, classes, (rows,), generator=gen).to(device),
        num_classes=classes,
        weights=(torch.rand(rows, generator=gen) + 0.5).to(device),
        directions=torch.randn(k, d, generator=gen).to(dtype).to(device) if k else None,
    )


def max_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |got - ref| relative to max(1, max |ref|); inf where got has NaN/inf."""
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - ref).abs().max() / max(1.0, ref.abs().max().item())).item()


def correctness(fn, device: str, dims, rows: int, b: int, t: int) -> list[Row]:
    """(a): every dtype x D x layout x mode against the reference (1e-5 relative, as in tests/test_kernels.py)."""
    out = []
    for dtype in DTYPES:
        for d in dims:
            for strided in (False, True):
                case = make_case(dtype, b, t, d, rows, classes=6, k=10, strided=strided, device=device)
                ref_sums, ref_proj = select_reduce_reference(**case)
                for deterministic in (False, True):
                    label = (
                        f"{_name(dtype)} D={d} R={rows} {'strided' if strided else 'contiguous'} "
                        f"{'deterministic' if deterministic else 'atomic'}"
                    )
                    try:
                        sums, proj = fn(**case, deterministic=deterministic)
                        err = max(max_error(sums, ref_sums), max_error(proj, ref_proj))
                        ok = err <= 1e-5
                        detail = f"max rel err {err:.1e}"
                        if deterministic:
                            again = fn(**case, deterministic=True)
                            same = torch.equal(sums, again[0]) and torch.equal(proj, again[1])
                            ok = ok and same
                            detail += ", bit-identical rerun" if same else ", RERUN DIFFERS"
                    except Exception as exc:  # noqa: BLE001 - report every failure in the table
                        ok, detail = False, f"{type(exc).__name__}: {exc}"[:120]
                    out.append(Row("correct", label, "ok" if ok else "FAIL", detail))
    return out


def bandwidth(fn) -> list[Row]:
    """(b): achieved bandwidth of "mean" calls against a device-to-device copy of the same bytes."""
    from triton.testing import do_bench

    out = []
    b, t, classes = 32, 512, 2
    rows = b * t
    batch_index = torch.arange(b, device="cuda").repeat_interleave(t)
    token_index = torch.arange(t, device="cuda").repeat(b)
    labels = batch_index % classes
    weights = torch.full((rows,), 1.0 / t, device="cuda")
    for d in (576, 896, 2560, 4096):
        for dtype in (torch.bfloat16, torch.float32):
            x = torch.randn(b, t, d, device="cuda").to(dtype)
            for k in (0, 10):
                directions = torch.randn(k, d, device="cuda") if k else None
                sums = torch.empty(classes, d, device="cuda")
                proj = torch.empty(rows, k, device="cuda") if k else None
                call = dict(
                    x=x,
                    batch_index=batch_index,
                    token_index=token_index,
                    labels=labels,
                    num_classes=classes,
                    weights=weights,
                    directions=directions,
                )
                ms = do_bench(lambda call=call, sums=sums, proj=proj: fn(**call, out=sums, proj_out=proj))
                ref_ms = do_bench(lambda call=call: select_reduce_reference(**call))
                n_bytes = rows * d * x.element_size() + sums.numel() * 4 + rows * k * 4
                src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
                dst = torch.empty_like(src)
                copy_ms = do_bench(lambda src=src, dst=dst: dst.copy_(src))
                del src, dst
                op_gbs, copy_gbs = n_bytes / ms / 1e6, 2 * n_bytes / copy_ms / 1e6
                ratio = op_gbs / copy_gbs
                result = "info" if d < 2048 else ("ok" if ratio >= BANDWIDTH_TARGET else "LOW")
                out.append(
                    Row(
                        "bandwidth",
                        f"{_name(dtype)} D={d} R={rows} C={classes} K={k}",
                        result,
                        f"{ms * 1e3:.0f} us, {op_gbs:.0f} GB/s = {100 * ratio:.0f}% of copy ({copy_gbs:.0f} GB/s); "
                        f"torch ref {ref_ms * 1e3:.0f} us ({ref_ms / ms:.1f}x)",
                    )
                )
    return out


def _record_launches(module, call: dict) -> list[tuple]:
    """Run the launcher with its kernels swapped for recorders: [(kernel, args, kwargs)] it would launch."""
    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

    names = ("_select_reduce_kernel", "_finalize_sums_kernel")
    saved = {n: getattr(module, n) for n in names}
    try:
        for n in names:
            setattr(module, n, Recorder(saved[n]))
        module.select_reduce_triton(**call)
    finally:
        for n, kernel in saved.items():
            setattr(module, n, kernel)
    return launches


def compile_for_targets(module, archs=(75, 80, 90)) -> list[Row]:
    """Compile what the launcher would launch for a few calls, for CUDA targets, without a GPU.

    The signature is specialised exactly as the JIT would (ints equal to 1 become constants, 16-divisible ints
    and 16-byte aligned pointers get divisibility hints), so the compiler sees what a real launch gives it.
    """
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource

    calls = {
        "bf16 weights K=10 atomic": (make_case(torch.bfloat16, 2, 40, 300, 70, 3, 10, False, "cpu"), False),
        "fp32 strided K=17 deterministic": (make_case(torch.float32, 2, 40, 300, 70, 3, 17, True, "cpu"), True),
        "fp16 K=0 atomic": (make_case(torch.float16, 2, 40, 256, 64, 3, 0, False, "cpu"), False),
        # B = T = R = C = K = 1: the JIT turns those ints into constants
        "fp32 all-ones deterministic": (make_case(torch.float32, 1, 1, 40, 1, 1, 1, False, "cpu"), True),
    }
    out = []
    for label, (call, deterministic) in calls.items():
        launches = _record_launches(module, {**call, "deterministic": deterministic})
        x, dirs = call["x"], call["directions"]
        for arch in archs:
            t0 = time.perf_counter()
            try:
                for kernel, args, kwargs in launches:
                    kwargs = dict(kwargs)
                    num_warps = kwargs.pop("num_warps")
                    if dirs is not None and "DOT_PRECISION" in kwargs:
                        kwargs["DOT_PRECISION"] = module._dot_precision(x.dtype, dirs.dtype, divmod(arch, 10))
                    signature, constexprs, attrs = {}, dict(kwargs), {}
                    for i, (name, value) in enumerate(zip(kernel.arg_names, args)):
                        kind, spec = native_specialize_impl(BaseBackend, value, False, True, True)
                        signature[name] = kind
                        if kind == "constexpr":
                            constexprs[name] = spec
                        elif spec:
                            attrs[(i,)] = BaseBackend.parse_attr(spec)
                    signature.update({name: "constexpr" for name in kwargs})
                    triton.compile(
                        ASTSource(kernel, signature, constexprs, attrs),
                        target=GPUTarget("cuda", arch, 32),
                        options={"num_warps": num_warps},
                    )
                result, detail = "ok", f"{len(launches)} kernel(s) in {time.perf_counter() - t0:.1f} s"
            except Exception as exc:  # noqa: BLE001 - report every failure in the table
                result, detail = "FAIL", f"{type(exc).__name__}: {exc}".replace("\n", " ")[:160]
            out.append(Row("compile", f"sm_{arch} {label}", result, detail))
    return out


def _reference_rows(model, tok, prompts, batch_size):
    """The original study's loop: generate one token with output_hidden_states, last position of each entry."""
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i : i + batch_size], padding=True, return_tensors="pt").to(model.device)
        with torch.no_grad():
            o = model.generate(
                **enc, max_new_tokens=1, output_hidden_states=True, return_dict_in_generate=True, do_sample=False
            )
        out.append(torch.stack([h[:, -1, :] for h in o.hidden_states[0]], dim=1).float().cpu())
    return torch.cat(out)


def _timed(fn, *args, **kwargs):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return res, time.perf_counter() - t0


def end_to_end(rows: list[Row], dry_run: bool = False) -> None:
    """(c): emofast.extract against the reference loop on SmolLM2 (fp16 and bf16 on CUDA; fp32 on the CPU in
    --dry-run), 256 bundled texts with the chat template: largest relative row error and the speed ratio; and the
    vLLM backend's texts/s when vllm is importable."""
    import importlib.util

    import emofast
    from emofast.data import load_pairs
    from emofast.probe import DEFAULT_SYSTEM_PROMPT

    texts = [t for p in load_pairs().pairs for t in p.split("train")[0]][: 16 if dry_run else 256]
    dtypes = ("float32",) if dry_run else ("float16", "bfloat16")
    device = "cpu" if dry_run else "cuda"
    for dtype in dtypes:
        label = f"SmolLM2 {dtype} N={len(texts)}"
        try:
            model, tok = emofast.load_model("smollm2", dtype=dtype, device=device)
            prompts = [
                tok.apply_chat_template(
                    [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": t}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for t in texts
            ]
            kw = dict(chat_template=True, system_prompt=DEFAULT_SYSTEM_PROMPT, batch_size=32)
            emofast.extract(model, tok, texts[:8], **kw)  # warm-up (kernel compilation)
            ref, t_ref = _timed(_reference_rows, model, tok, prompts, 32)
            got, t_got = _timed(emofast.extract, model, tok, texts, **kw)
            rel = ((got - ref).norm(dim=-1) / ref.norm(dim=-1).clamp(min=1e-6)).max().item()
            bound = 1e-3 if dtype == "float32" else 3e-2  # half precision: different kernels, same math
            rows.append(
                Row(
                    "end-to-end",
                    label,
                    "ok" if rel <= bound else "FAIL",
                    f"max rel row error {rel:.1e} (bound {bound:g}); reference {t_ref:.2f} s, "
                    f"extract {t_got:.2f} s ({t_ref / t_got:.1f}x)",
                )
            )
            _, t_half = _timed(emofast.extract, model, tok, texts, layers=range(16), **kw)
            rows.append(
                Row(
                    "end-to-end",
                    label + " layers<=15",
                    "info",
                    f"extract {t_half:.2f} s ({t_ref / t_half:.1f}x the full reference loop)",
                )
            )
        except Exception as exc:  # noqa: BLE001 - report every failure in the table
            rows.append(Row("end-to-end", label, "FAIL", f"{type(exc).__name__}: {exc}"[:160]))
    if dry_run or importlib.util.find_spec("vllm") is None:
        return
    try:
        model_dir = str(emofast.capture.models.default_model_dir())
        vmodel, vtok = emofast.load_model(model_dir, backend="vllm", dtype="bfloat16")
        _, t_v = _timed(
            lambda: emofast.extract(vmodel, vtok, texts, chat_template=True, system_prompt=DEFAULT_SYSTEM_PROMPT)
        )
        rows.append(
            Row(
                "end-to-end",
                f"SmolLM2 vLLM bf16 N={len(texts)}",
                "info",
                f"{t_v:.2f} s, {len(texts) / t_v:.0f} texts/s",
            )
        )
    except Exception as exc:  # noqa: BLE001
        rows.append(Row("end-to-end", "SmolLM2 vLLM", "FAIL", f"{type(exc).__name__}: {exc}"[:160]))


def print_table(rows: list[Row]) -> None:
    head = Row("check", "case", "result", "detail")
    widths = [max(len(getattr(r, f)) for r in [head, *rows]) for f in ("check", "case", "result")]
    for r in [head, *rows]:
        print(f"{r.check:<{widths[0]}}  {r.case:<{widths[1]}}  {r.result:<{widths[2]}}  {r.detail}")


def compile_rows_from_subprocess() -> list[Row]:
    """Run ``--compile-only`` in a fresh interpreter without TRITON_INTERPRET and read back its rows."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, __file__, "--compile-only"], capture_output=True, text=True, env=env)
    rows = [Row(**json.loads(line)) for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode or not rows:
        rows.append(Row("compile", "subprocess", "FAIL", f"exit {res.returncode}: {res.stderr[-300:]}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="no GPU: offline compile + tiny interpreted (a)")
    mode.add_argument("--compile-only", action="store_true", help="offline compile only, rows as JSON lines")
    args = parser.parse_args(argv)

    rows: list[Row] = []
    if args.compile_only:
        for row in compile_for_targets(importlib.import_module(KERNELS)):
            print(json.dumps(dataclasses.asdict(row)), flush=True)
        return 0
    if args.dry_run:
        rows += compile_rows_from_subprocess()
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported, by the kernels module
        module = importlib.import_module(KERNELS)
        rows += correctness(module.select_reduce_triton, "cpu", dims=(40, 300), rows=70, b=3, t=30)
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run for the CPU checks", file=sys.stderr)
            return 2
        module = importlib.import_module(KERNELS)
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
        rows += correctness(module.select_reduce_triton, "cuda", dims=(576, 769, 2560, 4096), rows=4096, b=8, t=600)
        rows += bandwidth(module.select_reduce_triton)
    end_to_end(rows, dry_run=args.dry_run)
    print_table(rows)
    return 1 if any(r.result == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
