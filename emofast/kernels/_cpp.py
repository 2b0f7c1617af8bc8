"""C++ (OpenMP) select-reduce for CPU tensors, from the compiled extension ``emofast._C``.

Importing this module loads the extension; :mod:`emofast.kernels` imports it only when the C++ kernel is first
chosen. ``x`` is read in place with its strides (fp32/fp16/bf16); the small index, weight and direction tensors
are made contiguous (directions and weights fp32) before their pointers are handed over.
"""

from __future__ import annotations

import torch

from emofast import _C

from .reference import check_select_reduce_args

__all__ = ["select_reduce_cpp"]

_DTYPE_CODES = {getattr(torch, name): code for name, code in _C.DTYPES.items()}


def select_reduce_cpp(
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
    """C++ select-reduce; arguments and results as in :func:`emofast.kernels.reference.select_reduce_reference`.

    Needs CPU tensors; runs on ``torch.get_num_threads()`` threads. Every call is deterministic (the reduction
    order is fixed by the shapes alone, whatever the thread count), so ``deterministic`` changes nothing.
    Out-of-range indices or labels raise ``IndexError`` before anything is written.
    """
    check_select_reduce_args(
        x, batch_index, token_index, labels, num_classes, weights, directions, out, proj_out, accumulate
    )
    if x.device.type != "cpu":
        raise ValueError(f"the C++ kernel needs CPU tensors, got x on {x.device}")
    n_b, n_t, d = x.shape
    rows = batch_index.shape[0]
    f32 = torch.float32
    # Keep the prepared tensors referenced until the call returns: the extension only sees their pointers.
    batch_index, token_index, labels = batch_index.contiguous(), token_index.contiguous(), labels.contiguous()
    w = None if weights is None else weights.to(f32).contiguous()
    dirs = None if directions is None else directions.to(f32).contiguous()
    sums = torch.empty(num_classes, d, dtype=f32) if out is None else out
    k = 0 if dirs is None else dirs.shape[0]
    proj = None
    if dirs is not None:
        proj = torch.empty(rows, k, dtype=f32) if proj_out is None else proj_out
    _C.select_reduce(
        x=x.data_ptr(),
        x_dtype=_DTYPE_CODES[x.dtype],
        B=n_b,
        T=n_t,
        D=d,
        sb=x.stride(0),
        st=x.stride(1),
        sd=x.stride(2),
        batch_index=batch_index.data_ptr(),
        token_index=token_index.data_ptr(),
        labels=labels.data_ptr(),
        R=rows,
        C=num_classes,
        weights=0 if w is None else w.data_ptr(),
        dirs=0 if dirs is None else dirs.data_ptr(),
        K=k,
        out=sums.data_ptr(),
        soc=sums.stride(0),
        sod=sums.stride(1),
        accumulate=accumulate,
        proj=0 if proj is None else proj.data_ptr(),
        spr=0 if proj is None else proj.stride(0),
        spk=0 if proj is None else proj.stride(1),
        threads=torch.get_num_threads(),
    )
    return sums, proj
