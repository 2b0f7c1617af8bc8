"""bench/gpu_check.py's kernel sections: the Triton kernel's correctness on the device, its bandwidth against a
device-to-device copy (buffers of at least 4x the L2 cache), the matmul peak, and the offline compile for
sm_75/sm_90 (dry run). The correctness and bandwidth sections run in child processes of gpu_check.py: a device
fault (which leaves the CUDA context unusable) ends only that child."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import time

import torch
from gpu_check_common import BANDWIDTH_TARGET, HERE, KERNELS, Table, native_bf16
from gpu_check_common import dtype_name as _name

__all__ = ["correctness", "bandwidth", "matmul_peak", "compile_rows", "compile_only", "make_call", "l2_bytes"]


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


def l2_bytes(device: str) -> tuple[int, str]:
    """The device's L2 cache size in bytes, and how it was found."""
    if device == "cuda":
        size = int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0)
        return (size, "queried") if size else (50 * 2**20, "not reported: 50 MiB (an H100's) assumed")
    return 16 * 2**10, "dry run: 16 KiB stands in for a GPU's L2"


def bandwidth(t: Table, device: str, dry: bool) -> None:
    """The segment-sum kernel ("mean" over b sequences) against a device-to-device copy; every buffer is at least
    4x the L2 cache (an H100's L2 of 50 MB would hold a D=576 fp32 layer of 32 x 512 tokens), so that both read
    from device memory, not from L2."""
    fn = importlib.import_module(KERNELS).select_reduce_triton
    ms = timer(device)
    l2, how = l2_bytes(device)
    floor = 4 * l2
    t.add("bandwidth", "L2 cache", "info", f"{l2 / 2**20:.2f} MiB ({how}); every buffer >= {floor / 2**20:.1f} MiB")
    copy_gbs = None
    with t.case("bandwidth", "device copy"):
        n = max(floor, 64 * 2**20 if not dry else floor)
        src = torch.empty(n, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        c_ms = ms(lambda src=src, dst=dst: dst.copy_(src))
        copy_gbs = 2 * n / c_ms / 1e6  # read + write
        del src, dst
        t.add("bandwidth", "device copy", "info", f"{n / 2**20:.1f} MiB: {copy_gbs:.1f} GB/s (read + write)",
              gbs=copy_gbs)  # fmt: skip
    if copy_gbs is None:
        return
    b = 2 if dry else 32
    dtypes = (torch.bfloat16 if native_bf16(device) else torch.float16, torch.float32)
    for d in (64,) if dry else (576, 2048, 2560, 4096, 4544):
        for dtype in dtypes[:1] if dry else dtypes:
            for det in (False, True) if d == 4096 or dry else (False,):
                elem = torch.finfo(dtype).bits // 8
                t_len = max(16 if dry else 512, math.ceil(floor / (b * d * elem) / 16) * 16)
                rows = b * t_len
                label = f"{_name(dtype)} D={d} R={rows} C={b}{' det' if det else ''}"
                with t.case("bandwidth", label):
                    x = torch.randn(b, t_len, d, device=device).to(dtype)
                    bi = torch.arange(b, device=device).repeat_interleave(t_len)
                    ti = torch.arange(t_len, device=device).repeat(b)
                    out = torch.empty(b, d, device=device)
                    kw = dict(weights=None, out=out, accumulate=True, deterministic=det)
                    k_ms = ms(lambda x=x, bi=bi, ti=ti, kw=kw: fn(x, bi, ti, bi, b, **kw))
                    n_bytes = rows * d * elem + b * d * 4 + rows * 8 * 3
                    gbs = n_bytes / k_ms / 1e6
                    ratio = gbs / copy_gbs
                    result = "info" if d < 2048 or dry else ("ok" if ratio >= BANDWIDTH_TARGET else "LOW")
                    detail = (
                        f"{k_ms * 1e3:.0f} us, {gbs:.0f} GB/s = {100 * ratio:.0f}% of the measured copy "
                        f"({copy_gbs:.0f} GB/s); x is {rows * d * elem / l2:.1f}x L2"
                    )
                    t.add("bandwidth", label, result, detail, ratio=ratio, gbs=gbs, x_over_l2=rows * d * elem / l2)
                    del x, bi, ti, out


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


# -------------------------------------------------------------------------------- offline compile (dry run)


def compile_rows(t: Table) -> None:
    """Compile what the launcher launches, for sm_75/80/90, in a subprocess without the interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(HERE / "gpu_check.py"), "--compile-only"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
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
