"""Kernel dispatch for the fused select-reduce op (see :mod:`emofast.kernels.reference` for its contract).

* CUDA tensors go to the Triton kernel (``emofast.triton_kernels.select_reduce``), or to torch if Triton is
  missing.
* CPU tensors go to the C++ kernel (``emofast._C``) where it was measured faster than the torch reference
  (``bench/README.md``), else to torch.
* ``EMOFAST_KERNEL=torch|cpp|triton`` forces one implementation for every call.

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

__all__ = ["available", "select_reduce", "select_reduce_reference", "choose", "KERNEL_ENV"]

KERNEL_ENV = "EMOFAST_KERNEL"
_NAMES = ("torch", "cpp", "triton")
_lock = threading.Lock()
_loaded: dict[str, object] = {}
_failed: dict[str, str] = {}


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

    Measured on a 2-vCPU AMD EPYC VM (torch 2.13 CPU, 2 threads), median call times for R = 1..16384 rows,
    D = 64..4096, K = 0..128, fp32 and bf16 hidden states: with K <= 32 directions C++ is faster everywhere,
    1.2-1.7x for a single row (less Python around one call), 2-4x at R = 32..256 and 6-28x for 16384-row
    "mean" calls (no gathered [R, D] copy, one pass). Its projection costs K multiply-adds per gathered value
    while torch uses a BLAS matmul, so at K >= 64 torch wins small calls (R * D below ~1M values: 0.7x at
    R = 256, D = 576) and C++ keeps only a small lead on large ones (1.1-1.4x at K = 128).
    """
    return k <= 32 or rows * d >= 1 << 20


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
    if x.device.type == "cuda":
        return "triton" if _load("triton") is not None else "torch"
    if x.device.type == "cpu" and _cpp_wins(rows, x.shape[-1], k) and _load("cpp") is not None:
        return "cpp"
    return "torch"


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
    fn = _load(name)
    return fn(
        x,
        batch_index,
        token_index,
        labels,
        num_classes,
        weights=weights,
        directions=directions,
        out=out,
        proj_out=proj_out,
        accumulate=accumulate,
        deterministic=deterministic,
    )
