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
