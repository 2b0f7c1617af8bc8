"""Tests of the fused select-reduce kernels (C++ and Triton) against the torch reference, and of the dispatch.

The Triton kernels run through the interpreter on CPU tensors where there is no GPU (tests/conftest.py sets
TRITON_INTERPRET=1), so sizes stay small; the ``gpu`` tests run the compiled kernels on CUDA.

Every implementation converts fp16/bf16 inputs to fp32 exactly and accumulates in fp32, like the reference,
so results differ only by summation order and one tolerance serves all input dtypes (a kernel accumulating in
16-bit would be off by ~1e-3 and fail).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import emofast.kernels as kernels
from emofast.kernels.reference import select_reduce_reference

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Triton runs on CUDA where the compiled kernels are in use, else through the interpreter on the CPU.
TRITON_DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _load(name):
    if name == "cpp":
        # Skip only when the extension was not built; a built one that fails to load is an error.
        pytest.importorskip("emofast._C", exc_type=ModuleNotFoundError)
        from emofast.kernels._cpp import select_reduce_cpp

        return select_reduce_cpp, "cpu"
    pytest.importorskip("triton", exc_type=ModuleNotFoundError)
    from emofast.triton_kernels.select_reduce import select_reduce_triton

    return select_reduce_triton, TRITON_DEVICE


@pytest.fixture(params=["cpp", "triton"])
def impl(request):
    """(kernel function, device it runs on)."""
    return _load(request.param)


def make_x(b, t, d, dtype, layout, device, gen):
    """A [b, t, d] tensor with the given memory layout (its values do not depend on the layout)."""
    base = torch.randn(b, t, d, generator=gen).to(dtype)
    if layout == "contiguous":
        x = base.clone()
    elif layout == "transposed":  # [T, B, D] storage seen as [B, T, D]
        x = base.transpose(0, 1).contiguous().transpose(0, 1)
    elif layout == "sliced":  # every other token of a wider buffer, with an offset into the hidden size
        big = torch.zeros(b, 2 * t, d + 7, dtype=dtype)
        big[:, ::2, 3 : 3 + d] = base
        x = big[:, ::2, 3 : 3 + d]
    elif layout == "strided_last":  # non-unit stride on the hidden dimension
        x = base.transpose(1, 2).contiguous().transpose(1, 2)
    else:
        raise ValueError(layout)
    assert torch.equal(x, base)
    return x.to(device)


def make_case(
    *,
    dtype=torch.float32,
    b=3,
    t=7,
    d=40,
    rows=37,
    classes=5,
    k=0,
    weighted=True,
    layout="contiguous",
    device="cpu",
    seed=0,
    labels=None,
):
    """Keyword arguments of one select-reduce call (random rows, labels, weights and directions)."""
    gen = torch.Generator().manual_seed(seed)
    case = dict(
        x=make_x(b, t, d, dtype, layout, device, gen),
        batch_index=torch.randint(0, b, (rows,), generator=gen).to(device),
        token_index=torch.randint(0, t, (rows,), generator=gen).to(device),
        labels=(torch.randint(0, classes, (rows,), generator=gen) if labels is None else labels).to(device),
        num_classes=classes,
    )
    if weighted:
        case["weights"] = (torch.rand(rows, generator=gen) + 0.5).to(device)
    if k:
        case["directions"] = torch.randn(k, d, generator=gen).to(dtype).to(device)
    return case


def assert_close(got, ref, what):
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{what}: {m}")


def check(fn, case, **kw):
    """Run ``fn`` and the reference on ``case``; compare (sums, proj). Returns fn's results."""
    sums, proj = fn(**case, **kw)
    ref = {k: v for k, v in kw.items() if k not in ("out", "proj_out")}
    ref_sums, ref_proj = select_reduce_reference(**case, **ref)
    assert sums.dtype == torch.float32 and sums.shape == ref_sums.shape
    assert_close(sums, ref_sums, "sums")
    if ref_proj is None:
        assert proj is None
    else:
        assert proj.dtype == torch.float32 and proj.shape == ref_proj.shape
        assert_close(proj, ref_proj, "proj")
    return sums, proj


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced", "strided_last"])
@pytest.mark.parametrize("weighted,k", [(False, 0), (True, 1), (True, 5)])
def test_matches_reference(impl, dtype, layout, weighted, k):
    fn, device = impl
    check(fn, make_case(dtype=dtype, layout=layout, weighted=weighted, k=k, device=device))


@pytest.mark.parametrize(
    "d,rows,k",
    [(769, 1, 3), (769, 33, 0), (16, 64, 1), (40, 65, 17), (40, 0, 4), (40, 5, 0)],
    ids=["D769-R1", "D769-R33", "D16-R64", "D40-R65-K17", "R0", "K0-given"],
)
def test_odd_sizes(impl, d, rows, k):
    """Tails everywhere: D not a multiple of the block, one row, rows past a block, K padded past 16, R = 0,
    and an empty [0, D] directions tensor (K = 0 given)."""
    fn, device = impl
    case = make_case(d=d, rows=rows, k=k, dtype=torch.bfloat16, device=device)
    if k == 0 and rows == 5:
        case["directions"] = torch.zeros(0, d, device=device)
    sums, proj = check(fn, case)
    if rows == 0:
        assert not sums.any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_repeated_and_unused_labels(impl, dtype):
    """All rows into one class, the other classes unused: those must come back exactly zero."""
    fn, device = impl
    case = make_case(dtype=dtype, rows=70, classes=6, k=3, labels=torch.full((70,), 4), device=device)
    out = torch.full((6, 40), float("nan"), device=device)
    sums, _ = check(fn, case, out=out)
    assert sums.data_ptr() == out.data_ptr()
    assert not sums[[0, 1, 2, 3, 5]].any()


@pytest.mark.parametrize("k", [0, 5])
def test_nan_prefilled_outputs_are_overwritten(impl, k):
    """Given out/proj_out buffers (here non-contiguous views) hold NaN: every element must be rewritten."""
    fn, device = impl
    case = make_case(k=k, classes=7, device=device)
    out = torch.full((40, 7), float("nan"), device=device).t()
    proj_out = torch.full((k, 37), float("nan"), device=device).t() if k else None
    sums, proj = check(fn, case, out=out, proj_out=proj_out)
    assert sums.data_ptr() == out.data_ptr() and torch.isfinite(sums).all()
    if k:
        assert proj.data_ptr() == proj_out.data_ptr() and torch.isfinite(proj).all()


def test_accumulate_adds_into_out(impl):
    fn, device = impl
    case = make_case(k=2, device=device)
    start = torch.randn(5, 40, generator=torch.Generator().manual_seed(1)).to(device)
    out = start.clone()
    fn(**case, out=out, accumulate=True)
    fn(**case, out=out, accumulate=True)
    ref, _ = select_reduce_reference(**case)
    assert_close(out, start + 2 * ref, "twice accumulated sums")


@pytest.mark.parametrize("classes", [3, 40], ids=["labels-span-chunks", "labels-inside-chunks"])
def test_deterministic_is_bit_identical(impl, classes):
    """Two runs give the same bits; enough rows for several row chunks (and labels across their edges)."""
    fn, device = impl
    case = make_case(rows=300, classes=classes, k=4, d=300, device=device, dtype=torch.bfloat16)
    first = check(fn, case, deterministic=True)
    second = fn(**case, deterministic=True)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("max_tiles", [3, 64])
@pytest.mark.parametrize("runs", [True, False], ids=["label-runs", "random-labels"])
def test_triton_chunks_of_many_tiles(monkeypatch, deterministic, max_tiles, runs):
    """Small calls give one tile per program; force chunks of several tiles (sums carried across tiles, and
    in deterministic mode labels across chunk edges) with the program-count target at 1."""
    import emofast.triton_kernels.select_reduce as module

    fn, device = _load("triton")
    monkeypatch.setattr(module, "TARGET_PROGRAMS", 1)
    monkeypatch.setattr(module, "MAX_ROW_BLOCKS", max_tiles)
    labels = torch.arange(300) // 70 if runs else None  # runs of 70 rows, like the tokens of a sequence
    case = make_case(rows=300, classes=6, k=3, device=device, labels=labels)
    first = check(fn, case, deterministic=deterministic)
    if deterministic:
        second = fn(**case, deterministic=True)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_cpp_does_not_depend_on_thread_count():
    fn, _ = _load("cpp")
    case = make_case(rows=2000, d=1000, k=6, classes=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fn(**case)
        torch.set_num_threads(4)
        four = fn(**case)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], four[0]) and torch.equal(one[1], four[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cpp_converts_every_16_bit_value_exactly(dtype):
    """All 65536 bit patterns (subnormals, infinities, NaNs) read as torch's own conversion does."""
    fn, _ = _load("cpp")
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype).reshape(1, 1, -1)
    one = torch.zeros(1, dtype=torch.int64)
    sums, _ = fn(x, one, one, one, 1)
    expected = 0.0 + x.float().reshape(1, -1)  # the sum starts from +0: -0 comes back as +0, like the reference
    nan = expected.isnan()
    assert torch.equal(sums.isnan(), nan)
    assert torch.equal(sums.view(torch.int32)[~nan], expected.view(torch.int32)[~nan])


def test_cpp_rejects_bad_input():
    fn, _ = _load("cpp")
    case = make_case()
    case["batch_index"] = case["batch_index"].clone()
    case["batch_index"][5] = 3  # B = 3
    out = torch.full((5, 40), 7.0)
    with pytest.raises(IndexError, match=r"batch_index\[5\] = 3"):
        fn(**case, out=out)
    assert (out == 7.0).all(), "nothing may be written before the error"
    case = make_case()
    case["labels"] = case["labels"].clone()
    case["labels"][0] = -1
    with pytest.raises(IndexError, match="labels"):
        fn(**case)
    meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in make_case().items()}
    with pytest.raises(ValueError, match="CPU"):
        fn(**meta)


def test_argument_errors(impl):
    fn, device = impl
    case = make_case(device=device)
    with pytest.raises(ValueError, match="accumulate"):
        fn(**case, accumulate=True)
    with pytest.raises(ValueError, match="out must be"):
        fn(**case, out=torch.zeros(5, 41, device=device))


def test_triton_skips_out_of_range_rows():
    """Out-of-range rows cannot raise on the device; they are skipped instead of read out of bounds."""
    fn, device = _load("triton")
    case = make_case(k=2, device=device)
    bad = case["batch_index"].clone()
    bad[[0, 9]] = 3
    labels = case["labels"].clone()
    labels[20] = 5
    sums, proj = fn(**{**case, "batch_index": bad, "labels": labels})
    keep = torch.ones(37, dtype=torch.bool)
    keep[[0, 9, 20]] = False
    sub = {k: v[keep] if isinstance(v, torch.Tensor) and k != "x" and v.dim() == 1 else v for k, v in case.items()}
    ref_sums, ref_proj = select_reduce_reference(**sub)
    assert_close(sums, ref_sums, "sums")
    assert_close(proj[keep], ref_proj, "proj")
    assert not proj[~keep].any()


def test_triton_refuses_cpu_tensors_when_compiled():
    """Without the interpreter the kernel is compiled for CUDA: CPU tensors get a clear error."""
    code = (
        "import torch\n"
        "from emofast.triton_kernels.select_reduce import select_reduce_triton as f\n"
        "i = torch.zeros(1, dtype=torch.int64)\n"
        "try:\n"
        "    f(torch.zeros(1, 1, 4), i, i, i, 1)\n"
        "except ValueError as e:\n"
        "    assert 'TRITON_INTERPRET' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [576, 769, 4096])
@pytest.mark.parametrize("deterministic", [False, True])
def test_triton_compiled_on_cuda(dtype, d, deterministic):
    from emofast.triton_kernels.select_reduce import select_reduce_triton

    case = make_case(dtype=dtype, b=4, t=300, d=d, rows=1000, classes=6, k=10, layout="sliced", device="cuda")
    first = check(select_reduce_triton, case, deterministic=deterministic)
    if deterministic:
        second = select_reduce_triton(**case, deterministic=True)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@needs_cuda
@pytest.mark.gpu
def test_dispatch_uses_triton_on_cuda(monkeypatch):
    monkeypatch.delenv(kernels.KERNEL_ENV, raising=False)
    x = torch.zeros(1, 1, 8, device="cuda")
    assert kernels.choose(x, 1, 0) == "triton"


def test_available_reports_every_kernel():
    assert kernels.available() == {"torch": True, "cpp": True, "triton": True}


@pytest.mark.parametrize("name", ["torch", "cpp", "triton"])
def test_env_forces_the_kernel(monkeypatch, name):
    monkeypatch.setenv(kernels.KERNEL_ENV, name)
    case = make_case(k=3, device=TRITON_DEVICE if name == "triton" else "cpu")
    assert kernels.choose(case["x"], 37, 3) == name
    sums, proj = kernels.select_reduce(**case)
    ref_sums, ref_proj = select_reduce_reference(**case)
    assert_close(sums, ref_sums, "sums")
    assert_close(proj, ref_proj, "proj")


def test_env_rejects_unknown_kernel(monkeypatch):
    monkeypatch.setenv(kernels.KERNEL_ENV, "fortran")
    with pytest.raises(ValueError, match="fortran"):
        kernels.choose(torch.zeros(1, 1, 8), 1, 0)


def test_default_choice_on_cpu(monkeypatch):
    """C++ for the usual shapes, even one row; torch's BLAS only for many directions on a small call."""
    monkeypatch.delenv(kernels.KERNEL_ENV, raising=False)
    assert kernels.choose(torch.zeros(1, 1, 576), 1, 0) == "cpp"
    assert kernels.choose(torch.zeros(1, 1, 4096), 16384, 10) == "cpp"
    assert kernels.choose(torch.zeros(1, 1, 576), 256, 32) == "torch"
    assert kernels.choose(torch.zeros(1, 1, 576), 4096, 64) == "cpp"


def test_importing_the_dispatch_loads_no_kernel():
    code = (
        "import emofast, emofast.kernels, sys; "
        "assert 'triton' not in sys.modules and 'emofast._C' not in sys.modules, "
        "[m for m in sys.modules if m.startswith(('triton', 'emofast._C'))]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_inf_stays_in_its_own_label(impl):
    """An inf in one row makes its label's sum inf and leaves the other labels of the same tile finite (the
    reference's behaviour; multiplying the tile by a 0/1 mask would put inf * 0 = NaN into them)."""
    fn, device = impl
    case = make_case(rows=40, classes=4, labels=torch.arange(40) % 4, weighted=False, device=device)
    x = case["x"].clone()
    b, t = int(case["batch_index"][0]), int(case["token_index"][0])
    x[b, t, 5] = float("inf")
    case["x"] = x
    sums, _ = fn(**case)
    ref, _ = select_reduce_reference(**case)
    assert torch.equal(torch.isfinite(sums), torch.isfinite(ref))
    fin = torch.isfinite(ref)
    assert fin.sum() >= 3 * 40 and torch.allclose(sums[fin], ref[fin], atol=1e-4)


@pytest.mark.parametrize("k", [64, 256])
def test_many_directions(impl, k):
    """No limit on K: Triton projects outside the kernel (the old fused dot needed BLOCK_K = K of shared memory)."""
    fn, device = impl
    check(fn, make_case(k=k, d=40, dtype=torch.bfloat16, device=device))
