"""The kernel dispatch's fail-safe: the first-call check against the torch reference, fallback to torch, and
what is not the kernel's to take over (issue 20): device faults (fatal), out-of-memory errors, TF32 rounding.
GPU conditions are simulated on the CPU: the Triton kernel runs through the interpreter, launches and the
device synchronisation are replaced by stand-ins that fail as a GPU would."""

from __future__ import annotations

import pytest
import torch
from test_kernels import DTYPES, TRITON_DEVICE, assert_close, check, make_case

import emofast.kernels as kernels
from emofast.kernels.reference import select_reduce_reference

# ------------------------------------------------------------------------------ fail-safe dispatch (issue 12)


class _Launcher:
    """Stands in for a @triton.jit kernel: ``kernel[grid](...)`` raises ``exc`` or does nothing (so the sums
    keep whatever the wrapper zeroed them to: wrong numbers). Counts launches."""

    def __init__(self, exc=None):
        self.exc, self.launches = exc, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1
            if self.exc is not None:
                raise self.exc

        return launch


@pytest.fixture
def auto_triton(monkeypatch):
    """Automatic dispatch that picks Triton (through the interpreter) for CPU tensors, with fresh fail-safe
    state; returns the Triton module for patching its launch."""
    pytest.importorskip("triton", exc_type=ModuleNotFoundError)
    if TRITON_DEVICE != "cpu":
        pytest.skip("the interpreter twin of the GPU fail-safe runs on CPU tensors")
    import emofast.triton_kernels.select_reduce as module

    monkeypatch.delenv(kernels.KERNEL_ENV, raising=False)
    monkeypatch.setattr(kernels, "_auto", lambda x, rows, k: "triton")
    monkeypatch.setattr(kernels, "_verified", set())
    monkeypatch.setattr(kernels, "_disabled", {})
    return module


def _oor():
    from triton.runtime.errors import OutOfResources

    return OutOfResources(278528, 232448, "shared memory")


def test_failing_launch_warns_once_and_torch_serves_the_rest(auto_triton, monkeypatch):
    launcher = _Launcher(_oor())
    monkeypatch.setattr(auto_triton, "_select_reduce_kernel", launcher)
    case = make_case(k=3)
    ref_sums, ref_proj = select_reduce_reference(**case)
    with pytest.warns(RuntimeWarning, match=r"triton kernel on cpu \(float32 x.*OutOfResources.*shared memory"):
        sums, proj = kernels.select_reduce(**case)
    assert_close(sums, ref_sums, "sums")
    assert_close(proj, ref_proj, "proj")
    assert "OutOfResources" in kernels.disabled()["triton"]
    assert kernels.choose(case["x"], 37, 3) == "torch"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        again, _ = kernels.select_reduce(**make_case(k=3, seed=1, dtype=torch.bfloat16))
    assert launcher.launches == 1
    assert_close(again, select_reduce_reference(**make_case(k=3, seed=1, dtype=torch.bfloat16))[0], "again")


@pytest.mark.parametrize("accumulate", [False, True])
def test_wrong_numbers_on_first_call_are_caught(auto_triton, monkeypatch, accumulate):
    """A kernel that returns without writing anything: the first-call check sees it, the reference's numbers
    are returned (into the caller's out, accumulated onto what it held)."""
    monkeypatch.setattr(auto_triton, "_select_reduce_kernel", _Launcher())
    case = make_case()
    start = torch.randn(5, 40, generator=torch.Generator().manual_seed(3))
    out = start.clone()
    with pytest.warns(RuntimeWarning, match="differs from the torch reference"):
        sums, _ = kernels.select_reduce(**case, out=out, accumulate=accumulate)
    ref, _ = select_reduce_reference(**case)
    assert sums.data_ptr() == out.data_ptr()
    assert_close(out, start + ref if accumulate else ref, "sums")
    assert "triton" in kernels.disabled()


def test_a_later_failure_falls_back_too(auto_triton, monkeypatch):
    """The first call passes its check; a later call of the same variant raises: torch answers it."""
    case = make_case(k=2)
    kernels.select_reduce(**case)  # the real (interpreted) kernel: verified
    assert not kernels.disabled()
    monkeypatch.setattr(auto_triton, "_select_reduce_kernel", _Launcher(RuntimeError("device kernel image is invalid")))
    with pytest.warns(RuntimeWarning, match="device kernel image is invalid"):
        sums, _ = kernels.select_reduce(**case)
    assert_close(sums, select_reduce_reference(**case)[0], "sums")


def test_forced_triton_still_raises(auto_triton, monkeypatch):
    from triton.runtime.errors import OutOfResources

    monkeypatch.setenv(kernels.KERNEL_ENV, "triton")
    monkeypatch.setattr(auto_triton, "_select_reduce_kernel", _Launcher(_oor()))
    with pytest.raises(OutOfResources):
        kernels.select_reduce(**make_case())
    monkeypatch.setattr(auto_triton, "_select_reduce_kernel", _Launcher())
    with pytest.raises(RuntimeError, match="EMOFAST_KERNEL=triton.*wrong results"):
        kernels.select_reduce(**make_case())
    assert not kernels.disabled()


def test_correct_kernel_passes_the_check_silently(auto_triton):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype in DTYPES:
            check(kernels.select_reduce, make_case(dtype=dtype, k=2))
    assert len(kernels._verified) == 3 and not kernels.disabled()


# ------------------------------------------------- device faults, the check's memory, TF32 (issue 20, simulated)

_FAULTS = [
    "CUDA error: an illegal memory access was encountered",
    "Triton Error [CUDA]: misaligned address",
    "CUDA error: unspecified launch failure",
]


@pytest.mark.parametrize("message", _FAULTS)
def test_a_device_fault_at_the_checks_sync_is_fatal(auto_triton, monkeypatch, message):
    """The launch returns (CUDA launches are asynchronous); the fault shows at the synchronisation inside the
    check: DeviceFaultError naming the variant, no fallback warning, the kernel neither verified nor disabled."""
    syncs = []

    def faulting_sync(device):
        syncs.append(device)
        raise RuntimeError(message)

    monkeypatch.setattr(kernels, "_sync", faulting_sync)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "falling back" would be a RuntimeWarning
        with pytest.raises(kernels.DeviceFaultError, match=r"FATAL.*triton kernel on cpu \(float32 x.*has to end"):
            kernels.select_reduce(**make_case(k=2))
    assert syncs and not kernels.disabled() and not kernels._verified


def test_a_device_fault_in_a_launch_is_fatal_on_any_call(auto_triton, monkeypatch):
    monkeypatch.setattr(auto_triton, "_select_reduce_kernel", _Launcher(RuntimeError(_FAULTS[1])))
    with pytest.raises(kernels.DeviceFaultError, match="misaligned address"):
        kernels.select_reduce(**make_case())
    monkeypatch.undo()
    monkeypatch.delenv(kernels.KERNEL_ENV, raising=False)
    monkeypatch.setattr(kernels, "_auto", lambda x, rows, k: "triton")
    case = make_case()
    kernels.select_reduce(**case)  # verified
    monkeypatch.setattr(auto_triton, "_select_reduce_kernel", _Launcher(RuntimeError(_FAULTS[0])))
    with pytest.raises(kernels.DeviceFaultError, match="illegal memory access"):
        kernels.select_reduce(**case)
    assert not kernels.disabled()


def test_is_device_fault_tells_faults_from_recoverable_errors():
    assert all(kernels.is_device_fault(RuntimeError(m)) for m in _FAULTS)
    assert kernels.is_device_fault(RuntimeError("CUDA error: device-side assert triggered"))
    for m in ("device kernel image is invalid", "out of resource: shared memory", "CUDA out of memory"):
        assert not kernels.is_device_fault(RuntimeError(m))


def _spy_reference(monkeypatch, oom_above=None):
    """Record the x shapes the check hands the reference; raise OutOfMemoryError for more than ``oom_above``
    values of x."""
    seen = []
    real = kernels.select_reduce_reference

    def spy(x, *args, **kwargs):
        seen.append(tuple(x.shape))
        if oom_above is not None and x.numel() > oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x, *args, **kwargs)

    monkeypatch.setattr(kernels, "select_reduce_reference", spy)
    return seen


def test_the_check_copies_the_gathered_rows_not_the_layer(auto_triton, monkeypatch):
    seen = _spy_reference(monkeypatch)
    case = make_case(b=6, t=50, rows=37, k=2)  # a [6, 50, 40] layer, 37 rows taken
    kernels.select_reduce(**case)
    assert seen == [(1, 37, 40), (1, 37, 40)]  # reference and bound, on the rows only
    # More rows than the budget: an evenly spaced sample, through a second kernel call on it.
    seen.clear()
    monkeypatch.setattr(kernels, "_verified", set())
    monkeypatch.setattr(kernels, "CHECK_ELEMENTS", 20 * 40)
    case = make_case(b=6, t=50, rows=300, k=2, seed=1)
    sums, proj = kernels.select_reduce(**case)
    assert seen == [(1, 20, 40), (1, 20, 40)] and kernels._verified and not kernels.disabled()
    ref_sums, ref_proj = select_reduce_reference(**case)
    assert_close(sums, ref_sums, "sums")
    assert_close(proj, ref_proj, "proj")


def test_the_sampled_check_still_catches_wrong_numbers(auto_triton, monkeypatch):
    monkeypatch.setattr(kernels, "CHECK_ELEMENTS", 20 * 40)
    monkeypatch.setattr(auto_triton, "_select_reduce_kernel", _Launcher())
    case = make_case(b=6, t=50, rows=300)
    with pytest.warns(RuntimeWarning, match="differs from the torch reference"):
        sums, _ = kernels.select_reduce(**case)
    assert_close(sums, select_reduce_reference(**case)[0], "sums")


def test_an_oom_inside_the_check_is_not_a_batch_oom(auto_triton, monkeypatch):
    """The check's reference runs out of memory on 300 rows: the check retries on fewer rows (no exception
    reaches the engine, which would halve its batch; no fallback); at 16 rows it fits and the kernel is kept."""
    seen = _spy_reference(monkeypatch, oom_above=16 * 40)
    case = make_case(b=6, t=50, rows=300, k=2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sums, _ = kernels.select_reduce(**case)
    assert seen[0] == (1, 300, 40) and seen[-1] == (1, 16, 40)
    assert kernels._verified and not kernels.disabled()
    assert_close(sums, select_reduce_reference(**case)[0], "sums")


def test_an_oom_that_leaves_no_room_for_the_check_defers_it(auto_triton, monkeypatch):
    _spy_reference(monkeypatch, oom_above=0)
    case = make_case(rows=37)
    sums, _ = kernels.select_reduce(**case)  # no exception, no warning, not yet verified
    assert not kernels._verified and not kernels.disabled()
    monkeypatch.setattr(kernels, "select_reduce_reference", select_reduce_reference)
    kernels.select_reduce(**case)
    assert kernels._verified


def test_an_oom_in_the_kernel_itself_is_the_batchs(auto_triton, monkeypatch):
    """Raised as is (the engine halves the batch), and the kernel stays on."""
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
    monkeypatch.setattr(auto_triton, "_select_reduce_kernel", _Launcher(oom))
    with pytest.raises(torch.OutOfMemoryError):
        kernels.select_reduce(**make_case())
    assert not kernels.disabled()


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to TF32 (10 mantissa bits), as a TF32 matmul rounds its inputs."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def test_fp32_tolerance_follows_the_matmul_precision(monkeypatch):
    """With TF32 on, a matmul rounds its fp32 inputs to 10 mantissa bits (up to 4.9e-4 of each value): a sum
    over few rows (a one-token text's segment, a one-hot matmul) or a projection dominated by one large
    dimension (LLMs have such) is off by that much, and the 1e-4 tolerance would call a correct kernel wrong and
    turn Triton off for fp32 models. Here: one row per label, the reference's sums through TF32."""
    rows = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    exact, tf32, bound = rows, _tf32(rows), rows.abs()
    matmul = torch.backends.cuda.matmul  # settings object without real attributes: set and restore by hand
    was = matmul.allow_tf32
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
    try:
        matmul.allow_tf32 = False
        assert kernels.tolerance(torch.float32, "cuda") == 1e-4
        assert "differs" in kernels._mismatch(exact, tf32, bound, kernels.tolerance(torch.float32, "cuda"), "sums")
        matmul.allow_tf32 = True
        assert kernels.tolerance(torch.float32, "cuda") == 2e-3
        assert kernels._mismatch(exact, tf32, bound, kernels.tolerance(torch.float32, "cuda"), "sums") is None
        assert kernels._mismatch(exact, _tf32(rows * 1.004), bound, 2e-3, "sums") is not None  # still catches errors
    finally:
        matmul.allow_tf32 = was
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")
    assert kernels.tolerance(torch.float32, "cuda") == 8e-3
    assert kernels.tolerance(torch.float32, "cpu") == 1e-4  # CPU matmuls stay fp32
    assert kernels.tolerance(torch.float16, "cuda") == 1e-3
