"""Kernel dispatch for the fused select-reduce op (see :mod:`emofast.kernels.reference` for its contract).

* CUDA tensors go to the Triton kernel (``emofast.triton_kernels.select_reduce``), or to torch if Triton is
  missing.
* CPU tensors go to the C++ kernel (``emofast._C``) where it was measured faster than the torch reference
  (``bench/README.md``), else to torch.
* ``EMOFAST_KERNEL=torch|cpp|triton`` forces one implementation for every call.

Fail-safe: the first call of each kernel variant (kernel, device, x dtype, weights or not, directions dtype,
deterministic, accumulate) on a device waits for the kernel to finish (so that an asynchronous fault surfaces
inside the check), then runs the torch reference on that call's gathered rows (at most ``CHECK_ELEMENTS`` values:
a larger call is checked on an evenly spaced sample of its rows, through a second kernel call on them) and
compares (tolerance from x's dtype and, for fp32 on CUDA, torch's matmul precision: TF32 rounds at ~1e-3). Any
exception (a compile error, ``OutOfResources``, an invalid device image, a failed launch) or a mismatch, on that
call or a later one, gives one ``RuntimeWarning`` naming the cause, and torch serves every later call of the
process. With ``EMOFAST_KERNEL`` set, an exception or a mismatch raises instead.

Two kinds of error are not the kernel's to take over:

* a **device fault** (an illegal or misaligned address, an unspecified launch failure, a device-side assert...)
  leaves the process's CUDA context unusable: nothing can run on that GPU again in this process, torch included.
  It raises :class:`DeviceFaultError` naming the kernel variant; the process has to end (rerun with
  ``EMOFAST_KERNEL=torch`` to keep the kernel out). The first-call check exists to meet every other failure
  before real work depends on the kernel;
* **out of memory**: in the kernel call itself it is raised as is (the engine halves the batch, as for any
  batch); inside the check it only makes the check's sample smaller (it never halves the caller's batch).

Nothing here imports triton or the compiled extension until a kernel is first needed.

Example:
    >>> import torch, emofast.kernels as K
    >>> x = torch.randn(2, 5, 8)
    >>> sums, proj = K.select_reduce(x, torch.tensor([0, 1]), torch.tensor([4, 4]), torch.tensor([0, 1]), 2,
    ...                              directions=torch.randn(3, 8))
    >>> sums.shape, proj.shape
    (torch.Size([2, 8]), torch.Size([2, 3]))
"""

from __future__ import annotations

import os
import threading
import warnings

import torch

from .reference import check_select_reduce_args, select_reduce_reference

__all__ = [
    "available",
    "select_reduce",
    "select_reduce_reference",
    "choose",
    "disabled",
    "tolerance",
    "is_device_fault",
    "DeviceFaultError",
    "KERNEL_ENV",
    "CHECK_ELEMENTS",
]

KERNEL_ENV = "EMOFAST_KERNEL"
_NAMES = ("torch", "cpp", "triton")
_lock = threading.Lock()
_loaded: dict[str, object] = {}
_failed: dict[str, str] = {}
_verified: set[tuple] = set()  # kernel variants whose first call matched the reference
_disabled: dict[str, str] = {}  # kernel -> why it was turned off at run time (torch serves its calls)
# Largest |kernel - reference| allowed on the first-call check, relative to the sum of the magnitudes of the
# terms (the reference run on |x|, |w|, |directions|): the kernels read 16-bit values exactly and accumulate in
# fp32, so they differ from the reference by summation order only; these leave room for that and for tf32
# products, and catch garbage, missing rows and zeros.
_RTOL = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# fp32 matmuls on CUDA round their inputs when torch allows it: TF32 keeps 10 of fp32's 23 mantissa bits (each
# product off by up to ~2^-10 of its magnitude), bf16 ("medium") 7. The reference's projections are such matmuls.
_MATMUL_RTOL = {"high": 2e-3, "medium": 8e-3}
# Values of x the first-call check gathers at most (rows x D): 16M, 64 MB in fp32 (the check's transient copies
# are about three times that). A larger call is checked on an evenly spaced sample of its rows.
CHECK_ELEMENTS = 1 << 24
_CHECK_MIN_ROWS = 16
# Substrings of CUDA errors after which the context is unusable ("sticky" errors): no fallback can run.
_DEVICE_FAULTS = (
    "illegal memory access",
    "illegal address",
    "misaligned address",
    "unspecified launch failure",
    "illegal instruction",
    "device-side assert",
    "hardware stack error",
    "invalid program counter",
    "uncorrectable ecc",
    "launch timed out",
    "cuda_error_illegal_address",
    "cuda_error_misaligned_address",
    "cuda_error_launch_failed",
)


class DeviceFaultError(RuntimeError):
    """A kernel faulted on the GPU (e.g. an illegal memory access): the process's CUDA context is unusable, so no
    fallback can run; end the process (rerun with ``EMOFAST_KERNEL=torch`` to leave the kernel out)."""


def is_device_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA error that leaves the context unusable (an illegal or misaligned address, an
    unspecified launch failure, an illegal instruction, a device-side assert, an ECC error, a launch timeout).

    Example:
        >>> is_device_fault(RuntimeError("CUDA error: an illegal memory access was encountered"))
        True
        >>> is_device_fault(RuntimeError("device kernel image is invalid"))
        False
    """
    text = str(exc).lower()
    return any(f in text for f in _DEVICE_FAULTS)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _sync(device: torch.device) -> None:
    """Wait for the device's work (CUDA launches are asynchronous: a fault shows at the next sync)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fatal(key: tuple, exc: BaseException) -> DeviceFaultError:
    return DeviceFaultError(
        f"emofast: FATAL: the {_describe(key)} faulted on the device: {type(exc).__name__}: {str(exc)[:300]}. A "
        "device fault leaves this process's CUDA context unusable, so no fallback (torch included) can run on this "
        f"GPU again: the process has to end. Rerun with {KERNEL_ENV}=torch to leave the kernel out, and report "
        "the kernel variant above."
    )


def _load(name: str):
    """Return the implementation function for ``name`` or None; report a load failure once."""
    if name == "torch":
        return select_reduce_reference
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name in _failed:
            return None
        try:
            if name == "cpp":
                from ._cpp import select_reduce_cpp as fn
            else:
                from emofast.triton_kernels.select_reduce import select_reduce_triton as fn
        except Exception as exc:  # ImportError, a broken .so, a triton without a driver...
            _failed[name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"emofast: the {name} kernel could not be loaded ({_failed[name]}); "
                "falling back to the torch reference kernel.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        _loaded[name] = fn
        return fn


def available() -> dict[str, bool]:
    """Which kernels load on this machine, as ``{"torch": bool, "cpp": bool, "triton": bool}``.

    Loading is attempted (once) for each; a failure is reported once as a warning.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {name: _load(name) is not None for name in _NAMES}


def _cpp_wins(rows: int, d: int, k: int) -> bool:
    """Where the C++ kernel beat the torch reference on this kind of CPU (``bench/README.md``, "Kernels").

    Measured on a 2-vCPU AMD EPYC VM (torch 2.13 CPU, 2 threads), fastest call times for R = 1..16384 rows,
    D = 576..4096, K = 0..64, bf16 and fp32 hidden states:

    * K <= 16 directions: C++ is faster or even everywhere: 1.5-2.3x for a single row (less Python around one
      call), 0.9-2.1x for 32 rows ("last" token of 32 sequences; even at D = 4096, K = 10), 6-42x for
      4096-16384 rows ("mean" over tokens: no gathered [R, D] copy, one pass).
    * More directions: the fused projection costs K multiply-adds per gathered value where torch runs a BLAS
      matmul. C++ still wins small calls (R * D * K up to ~2M: 1.1-1.8x) and large ones (R * D >= 2M, where
      it runs two threads: 2.0-4.3x at K = 32..64), and loses in between (0.3-0.9x at R = 256, K = 32..64).
    """
    work = rows * d
    return k <= 16 or work >= 1 << 21 or work * k <= 1 << 21


def choose(x: torch.Tensor, rows: int, k: int) -> str:
    """Name of the implementation :func:`select_reduce` would use for these inputs."""
    forced = os.environ.get(KERNEL_ENV, "").strip().lower()
    if forced:
        if forced not in _NAMES:
            raise ValueError(f"{KERNEL_ENV}={forced!r}: expected one of {', '.join(_NAMES)}")
        if forced == "triton" and x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"{KERNEL_ENV}=triton needs CUDA tensors, or TRITON_INTERPRET=1 for the CPU interpreter")
        if forced == "cpp" and x.device.type != "cpu":
            raise RuntimeError(f"{KERNEL_ENV}=cpp needs CPU tensors, got {x.device}")
        if _load(forced) is None:
            raise RuntimeError(f"{KERNEL_ENV}={forced} but that kernel failed to load: {_failed.get(forced)}")
        return forced
    name = _auto(x, rows, k)
    if name != "torch" and (name in _disabled or _load(name) is None):
        return "torch"
    return name


def _auto(x: torch.Tensor, rows: int, k: int) -> str:
    """The automatic choice before load failures and run-time failures are taken into account."""
    if x.device.type == "cuda":
        return "triton"
    if x.device.type == "cpu" and _cpp_wins(rows, x.shape[-1], k):
        return "cpp"
    return "torch"


def disabled() -> dict[str, str]:
    """Kernels turned off at run time in this process, with the cause: ``{"triton": "OutOfResources: ..."}``."""
    return dict(_disabled)


def tolerance(dtype: torch.dtype, device=None) -> float:
    """Relative tolerance of the first-call check for hidden states of ``dtype`` on ``device``.

    From the dtype (``_RTOL``); for fp32 on CUDA, no tighter than torch's fp32 matmul precision allows
    (``torch.backends.cuda.matmul.allow_tf32`` / ``torch.set_float32_matmul_precision``: TF32 2e-3, bf16 8e-3),
    since the reference's products round that way, so that a TF32 GPU does not turn Triton off for fp32 models.

    Example:
        >>> tolerance(torch.float16), tolerance(torch.float32, "cpu")
        (0.001, 0.0001)
    """
    rtol = _RTOL.get(dtype, 1e-4)
    if dtype == torch.float32 and device is not None and torch.device(device).type == "cuda":
        precision = torch.get_float32_matmul_precision()
        if precision == "highest" and torch.backends.cuda.matmul.allow_tf32:
            precision = "high"
        rtol = max(rtol, _MATMUL_RTOL.get(precision, rtol))
    return rtol


def select_reduce(
    x: torch.Tensor,
    batch_index: torch.Tensor,
    token_index: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weights: torch.Tensor | None = None,
    directions: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    proj_out: torch.Tensor | None = None,
    accumulate: bool = False,
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused gather + per-label sum + projection: ``[B, T, D]`` -> ``(sums [C, D], proj [R, K])``.

    Arguments and results as in :func:`emofast.kernels.reference.select_reduce_reference`; the implementation
    is chosen by :func:`choose`.
    """
    check_select_reduce_args(
        x, batch_index, token_index, labels, num_classes, weights, directions, out, proj_out, accumulate
    )
    name = choose(x, batch_index.shape[0], 0 if directions is None else directions.shape[0])
    kw = dict(weights=weights, directions=directions, accumulate=accumulate, deterministic=deterministic)
    args = (x, batch_index, token_index, labels, num_classes)
    if name == "torch":
        return select_reduce_reference(*args, out=out, proj_out=proj_out, **kw)
    fn = _load(name)
    forced = bool(os.environ.get(KERNEL_ENV, "").strip())
    key = (
        name,
        str(x.device),
        x.dtype,
        weights is not None,
        None if directions is None else directions.dtype,
        deterministic,
        accumulate,
    )
    if key not in _verified:
        return _first_call(name, fn, key, forced, args, out, proj_out, kw)
    if forced:
        return fn(*args, out=out, proj_out=proj_out, **kw)
    try:
        return fn(*args, out=out, proj_out=proj_out, **kw)
    except Exception as exc:  # noqa: BLE001 - any kernel failure falls back to torch (module docstring)
        if is_device_fault(exc):
            raise _fatal(key, exc) from exc
        if _is_oom(exc):
            raise  # the batch's, not the kernel's: the engine halves the batch
        _give_up(name, key, f"{type(exc).__name__}: {exc}")
        # A launch that raised wrote nothing into `out` (its zeroing aside, which the reference redoes).
        return select_reduce_reference(*args, out=out, proj_out=proj_out, **kw)


def _describe(key: tuple) -> str:
    name, device, dtype, has_w, dir_dtype, deterministic, accumulate = key
    parts = [f"{str(dtype).removeprefix('torch.')} x", "weights" if has_w else "no weights"]
    parts.append("no directions" if dir_dtype is None else f"{str(dir_dtype).removeprefix('torch.')} directions")
    parts += ["deterministic"] * deterministic + ["accumulate"] * accumulate
    return f"{name} kernel on {device} ({', '.join(parts)})"


def _give_up(name: str, key: tuple, cause: str) -> None:
    """Turn ``name`` off for the rest of the process, with one warning naming the cause."""
    with _lock:
        first = name not in _disabled
        _disabled.setdefault(name, cause)
    if first:
        warnings.warn(
            f"emofast: the {_describe(key)} failed: {cause[:400]}; the torch reference kernel serves every later "
            f"call in this process (set {KERNEL_ENV}={name} to make this an error instead)",
            RuntimeWarning,
            stacklevel=4,
        )


def _mismatch(got, ref, bound, rtol: float, what: str) -> str | None:
    """Why ``got`` is not ``ref`` within ``rtol * bound`` (elementwise), or None."""
    if ref is None or got is None:
        return None if ref is None and got is None else f"{what}: one of kernel/reference returned None"
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return f"{what}: got {got.dtype} {tuple(got.shape)}, the reference {ref.dtype} {tuple(ref.shape)}"
    fin = torch.isfinite(ref)
    if not torch.equal(fin, torch.isfinite(got)):
        return f"{what}: inf/NaN where the reference is finite, or the reverse"
    err = ((got - ref).abs() - rtol * bound - 1e-6)[fin]
    if err.numel() and err.max().item() > 0:
        worst = ((got - ref).abs() / (bound + 1e-6))[fin].max().item()
        return f"{what}: differs from the torch reference by {worst:.1e} of the magnitude (tolerance {rtol:g})"
    return None


def _first_call(name, fn, key, forced, args, out, proj_out, kw):
    """Run kernel ``name`` on this call and wait for it; check it against the reference on (a sample of) the
    call's rows; keep the kernel if they agree (see the module docstring for what happens if not)."""
    x = args[0]
    start = out.clone() if (out is not None and kw["accumulate"]) else None  # [C, D]: per text, not per row
    try:
        sums, proj = fn(*args, out=out, proj_out=proj_out, **kw)
        _sync(x.device)  # an asynchronous fault surfaces here, inside the check, not in a later host copy
        cause = None
    except Exception as exc:  # noqa: BLE001 - reported below
        if is_device_fault(exc):
            raise _fatal(key, exc) from exc
        if _is_oom(exc):
            raise  # the batch's, not the kernel's: the engine halves the batch
        if forced:
            raise
        sums = proj = None
        cause = f"{type(exc).__name__}: {exc}"
    if cause is None:
        budget = CHECK_ELEMENTS
        while True:
            try:
                cause = _check(fn, args, kw, start, sums, proj, budget)
                break
            except Exception as exc:  # noqa: BLE001 - sorted below
                if is_device_fault(exc):
                    raise _fatal(key, exc) from exc
                if not _is_oom(exc):
                    raise  # the reference raises on bad input (out-of-range rows): the caller's error
                if x.device.type == "cuda":
                    torch.cuda.empty_cache()
                rows = budget // x.shape[-1]
                if rows <= _CHECK_MIN_ROWS:  # no room even for a few rows: check again on a later call
                    return sums, proj
                budget = max(_CHECK_MIN_ROWS, rows // 4) * x.shape[-1]
        if cause is None:
            with _lock:
                _verified.add(key)
            return sums, proj
        if forced:
            raise RuntimeError(f"{KERNEL_ENV}={name}: the {_describe(key)} gave wrong results: {cause}")
    _give_up(name, key, cause)
    if start is not None:
        out.copy_(start)
    return select_reduce_reference(*args, out=out, proj_out=proj_out, **kw)


def _check(fn, args, kw, start, sums, proj, budget: int) -> str | None:
    """Why the kernel's ``(sums, proj)`` for ``args`` are wrong, or None.

    Memory is bounded by the gathered rows (at most ``budget`` values of x, never the whole ``[B, T, D]``): the
    reference runs on the rows gathered once (in x's dtype), and the bound on the same rows made absolute in
    place. A call with more rows than the budget allows is checked on an evenly spaced sample of them (first and
    last rows included, labels renumbered), through a second kernel call on the sample alone.
    """
    x, batch_index, token_index, labels, num_classes = args
    r, d = batch_index.shape[0], x.shape[-1]
    w, dirs = kw["weights"], kw["directions"]
    m = min(r, max(_CHECK_MIN_ROWS, budget // max(d, 1)))
    if m < r:
        pick = torch.linspace(0, r - 1, m, device=batch_index.device).round().long()
        classes, labels = torch.unique(labels[pick], return_inverse=True)
        batch_index, token_index, num_classes = batch_index[pick], token_index[pick], classes.numel()
        w = None if w is None else w[pick]
        start = None if start is None else start[classes]
        got_out = None if start is None else start.clone()
        sums, proj = fn(x, batch_index, token_index, labels, num_classes, **{**kw, "weights": w}, out=got_out)
        _sync(x.device)
    rows = x[batch_index, token_index][None]  # [1, m, D]: the only copy of x's values the check makes
    flat_b = torch.zeros_like(batch_index)
    flat_t = torch.arange(batch_index.shape[0], device=batch_index.device)
    ref_out = None if start is None else start.clone()
    ref_sums, ref_proj = select_reduce_reference(
        rows, flat_b, flat_t, labels, num_classes, weights=w, directions=dirs, out=ref_out, accumulate=start is not None
    )
    bound_sums, bound_proj = select_reduce_reference(
        rows.abs_(),
        flat_b,
        flat_t,
        labels,
        num_classes,
        weights=None if w is None else w.abs(),
        directions=None if dirs is None else dirs.abs(),
    )
    del rows
    if start is not None:
        bound_sums += start.abs()
    rtol = tolerance(x.dtype, x.device)
    return _mismatch(sums, ref_sums, bound_sums, rtol, "sums") or _mismatch(
        proj, ref_proj, bound_proj, rtol, "projections"
    )
