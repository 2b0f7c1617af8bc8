"""Benchmarks of the fused select-reduce: the torch reference against the C++ kernel on the CPU (and the Triton
kernel, on CUDA only: the interpreter is no speed test), on the shapes of real models.

    pytest bench/bench_kernels.py --benchmark-only --benchmark-json kernels.json
    python bench/bench_kernels.py kernels.json ...  # the markdown table of bench/README.md, from such JSONs

Cases, for hidden states of B x T = 32 x 512 tokens:

* ``last``: one row per sequence (R = B, its last token), C = 32 labels;
* ``mean``: every token (R = B * T) with weights 1/T, C = 2 labels (the label of its sequence).

D in {576, 896, 2560, 4096} (SmolLM2-135M, Qwen2.5-0.5B, Qwen3-4B/Phi-2, 7-8B models), K in {0, 5, 10}
directions, fp32 and bf16 hidden states.
"""

from __future__ import annotations

import functools
import json
import sys
from collections import defaultdict

import pytest
import torch

from emofast.kernels.reference import select_reduce_reference

B, T = 32, 512
DIMS = (576, 896, 2560, 4096)
CASES = {"last": 32, "mean": 2}  # case -> number of labels C
KS = (0, 5, 10)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("torch", "cpp", "triton")


@functools.lru_cache(maxsize=1)
def hidden_states(d: int, dtype_name: str, device: str) -> torch.Tensor:
    """One [B, T, d] tensor at a time (the largest is 256 MB)."""
    gen = torch.Generator().manual_seed(d)
    return torch.randn(B, T, d, generator=gen).to(DTYPES[dtype_name]).to(device)


def make_call(case: str, d: int, k: int, dtype_name: str, device: str) -> dict:
    classes = CASES[case]
    if case == "last":
        batch_index = torch.arange(B)
        token_index = torch.full((B,), T - 1)
        weights = None
    else:
        batch_index = torch.arange(B).repeat_interleave(T)
        token_index = torch.arange(T).repeat(B)
        weights = torch.full((B * T,), 1.0 / T, device=device)
    gen = torch.Generator().manual_seed(k)
    return dict(
        x=hidden_states(d, dtype_name, device),
        batch_index=batch_index.to(device),
        token_index=token_index.to(device),
        labels=(batch_index % classes).to(device),
        num_classes=classes,
        weights=weights,
        directions=torch.randn(k, d, generator=gen).to(device) if k else None,
    )


def kernel(impl: str):
    """(function, device) of an implementation; skips what this machine cannot run."""
    if impl == "torch":
        return select_reduce_reference, "cpu"
    if impl == "cpp":
        pytest.importorskip("emofast._C", exc_type=ModuleNotFoundError)
        from emofast.kernels._cpp import select_reduce_cpp

        return select_reduce_cpp, "cpu"
    if not torch.cuda.is_available():
        pytest.skip("Triton is benchmarked on CUDA only")
    from emofast.triton_kernels.select_reduce import select_reduce_triton

    def synced(**call):
        result = select_reduce_triton(**call)
        torch.cuda.synchronize()
        return result

    return synced, "cuda"


@pytest.mark.benchmark(max_time=0.5, min_rounds=3, warmup=True)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype_name", DTYPES)  # varies slower than k: one x per (d, dtype) at a time
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("case", CASES)
def test_select_reduce(benchmark, case, d, dtype_name, k, impl):
    fn, device = kernel(impl)
    call = make_call(case, d, k, dtype_name, device)
    rows = call["batch_index"].shape[0]
    benchmark.group = f"{case} D={d} K={k} {dtype_name}"
    benchmark.extra_info.update(case=case, d=d, k=k, dtype=dtype_name, impl=impl, rows=rows, c=CASES[case])
    benchmark(fn, **call)


def markdown_table(paths: list[str]) -> str:
    """Per shape, over one or more ``--benchmark-json`` files: the fastest round of torch and of C++, the C++
    speed-up and the C++ throughput in gathered bytes per second. Fastest rounds, because on a shared machine
    the medians drift with the other jobs."""
    by_shape: dict[tuple, dict[str, float]] = defaultdict(dict)
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for bench in data["benchmarks"]:
            info = bench["extra_info"]
            shape = (info["case"], info["d"], info["rows"], info["c"], info["k"], info["dtype"])
            best = by_shape[shape].get(info["impl"], float("inf"))
            by_shape[shape][info["impl"]] = min(best, bench["stats"]["min"])
    order = {name: i for i, name in enumerate(CASES)}
    lines = [
        "| case | D | R | C | K | dtype | torch ms | C++ ms | C++ speed-up | C++ GB/s |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for shape in sorted(by_shape, key=lambda s: (order[s[0]], s[1], s[5], s[4])):
        times = by_shape[shape]
        if "torch" not in times or "cpp" not in times:
            continue
        case, d, rows, c, k, dtype = shape
        gathered = rows * d * DTYPES[dtype].itemsize
        lines.append(
            f"| {case} | {d} | {rows} | {c} | {k} | {dtype} | {times['torch'] * 1e3:.3f} | "
            f"{times['cpp'] * 1e3:.3f} | {times['torch'] / times['cpp']:.1f}x | {gathered / times['cpp'] / 1e9:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table(sys.argv[1:]))
