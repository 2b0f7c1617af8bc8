"""Kernel dispatch for the fused select-reduce op (see :mod:`emofast.kernels.reference` for its contract).

* CUDA tensors go to the Triton kernel (``emofast.triton_kernels.select_reduce``), or to torch if Triton is
  missing.
* CPU tensors go to the C++ kernel (``emofast._C``) where it was measured faster than the torch reference
  (``bench/README.md``), else to torch.
* ``EMOFAST_KERNEL=torch|cpp|triton`` forces one implementation for every call.

Fail-safe: the first call of each kernel variant (kernel, device, x dtype, weights or not, directions dtype,
deterministic, accumulate) on a device also runs the torch reference on that call's data and compares (tolerance
from x's dtype). Any exception (a compile error, ``OutOfResources``, an invalid device image, a failed launch)
or a mismatch, on that call or a later one, gives one ``RuntimeWarning`` naming the cause, and torch serves every
later call of the process. With ``EMOFAST_KERNEL`` set, an exception or a mismatch raises instead.

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

__all__ = ["available", "select_reduce", "select_reduce_reference", "choose", "disabled", "tolerance", "KERNEL_ENV"]

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


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the first-call check for hidden states of ``dtype`` (see ``_RTOL``)."""
    return _RTOL.get(dtype, 1e-4)


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
    """Run kernel ``name`` and the reference on this call's data; keep the kernel if they agree (see the module
    docstring for what happens if not)."""
    x, batch_index, token_index, labels, num_classes = args
    start = out.clone() if (out is not None and kw["accumulate"]) else None
    try:
        sums, proj = fn(*args, out=out, proj_out=proj_out, **kw)
        cause = None
    except Exception as exc:  # noqa: BLE001 - reported below
        if forced:
            raise
        sums = proj = None
        cause = f"{type(exc).__name__}: {exc}"
    if cause is None:
        # The reference raises on bad input (out-of-range rows), which is the caller's error, not the kernel's.
        ref_out = None if start is None else start.clone()
        ref_sums, ref_proj = select_reduce_reference(*args, **{**kw, "deterministic": True}, out=ref_out)
        w, d = kw["weights"], kw["directions"]
        bound_sums, bound_proj = select_reduce_reference(
            x.abs(),
            batch_index,
            token_index,
            labels,
            num_classes,
            weights=None if w is None else w.abs(),
            directions=None if d is None else d.abs(),
            deterministic=True,
        )
        if start is not None:
            bound_sums = bound_sums + start.abs()
        rtol = tolerance(x.dtype)
        cause = _mismatch(sums, ref_sums, bound_sums, rtol, "sums") or _mismatch(
            proj, ref_proj, bound_proj, rtol, "projections"
        )
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
