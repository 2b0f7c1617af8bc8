"""Pure-torch reference of the fused select-reduce op: the test oracle and the fallback of every kernel.

The op, for one layer's hidden states ``x [B, T, D]``, takes ``R`` rows chosen by ``(batch_index[r],
token_index[r])``, scales each by ``weights[r]`` (1 when omitted), and in one pass

* adds them into per-label sums ``sums[labels[r]] += w_r * x[b_r, t_r]`` giving ``[C, D]`` (fp32), and
* projects them onto ``K`` directions, ``proj[r, k] = w_r * x[b_r, t_r] . directions[k]`` giving ``[R, K]`` (fp32).

Output buffers may be passed in (``out`` for the sums, ``proj_out`` for the projections). They are overwritten,
whatever they held before (tests pre-fill them with NaN), except that ``accumulate=True`` adds the sums into
``out``: that is how a running per-label total is kept on the device across batches.

Every implementation (this one, ``emofast.triton_kernels.select_reduce`` and the C++ ``emofast._C``) follows
exactly this contract.
"""

from __future__ import annotations

import torch

__all__ = ["select_reduce_reference", "check_select_reduce_args"]


def check_select_reduce_args(
    x, batch_index, token_index, labels, num_classes, weights, directions, out, proj_out=None, accumulate=False
):
    """Validate the op's arguments; raise ``ValueError``/``TypeError`` with a message naming the argument."""
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, D], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    r = batch_index.shape[0]
    for name, t in (("batch_index", batch_index), ("token_index", token_index), ("labels", labels)):
        if t.dim() != 1 or t.shape[0] != r:
            raise ValueError(f"{name} must be [R] with R={r}, got shape {tuple(t.shape)}")
        if t.dtype != torch.int64:
            raise TypeError(f"{name} must be int64, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if weights is not None:
        if weights.shape != (r,):
            raise ValueError(f"weights must be [R] with R={r}, got shape {tuple(weights.shape)}")
        if weights.device != x.device:
            raise ValueError(f"weights is on {weights.device} but x is on {x.device}")
    d = x.shape[2]
    if directions is not None:
        if directions.dim() != 2 or directions.shape[1] != d:
            raise ValueError(f"directions must be [K, D] with D={d}, got shape {tuple(directions.shape)}")
        if directions.device != x.device:
            raise ValueError(f"directions is on {directions.device} but x is on {x.device}")
    if out is not None:
        if out.shape != (num_classes, d) or out.dtype != torch.float32:
            raise ValueError(f"out must be float32 [C, D] = [{num_classes}, {d}], got {out.dtype} {tuple(out.shape)}")
        if out.device != x.device:
            raise ValueError(f"out is on {out.device} but x is on {x.device}")
    elif accumulate:
        raise ValueError("accumulate=True needs an out buffer to add into")
    if proj_out is not None:
        if directions is None:
            raise ValueError("proj_out given without directions")
        k = directions.shape[0]
        if proj_out.shape != (r, k) or proj_out.dtype != torch.float32 or proj_out.device != x.device:
            raise ValueError(
                f"proj_out must be float32 [R, K] = [{r}, {k}] on {x.device}, "
                f"got {proj_out.dtype} {tuple(proj_out.shape)} on {proj_out.device}"
            )


def select_reduce_reference(
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
    """Reference select-reduce.

    Args:
        x: ``[B, T, D]`` hidden states, fp32/fp16/bf16, any strides.
        batch_index, token_index: ``[R]`` int64, the rows to take.
        labels: ``[R]`` int64 in ``[0, num_classes)``, where each row is summed.
        num_classes: ``C``.
        weights: optional ``[R]`` per-row weights (e.g. ``1/length`` for a mean).
        directions: optional ``[K, D]``.
        out: optional fp32 ``[C, D]`` buffer for the sums; overwritten unless ``accumulate``.
        proj_out: optional fp32 ``[R, K]`` buffer for the projections; overwritten.
        accumulate: add the sums into ``out`` instead of overwriting it.
        deterministic: use a fixed-order reduction (a one-hot matmul) instead of ``index_add_``, whose CUDA
            implementation uses atomics.

    Returns:
        ``(sums [C, D] fp32, proj [R, K] fp32 or None)``.

    Example:
        >>> x = torch.arange(12.).reshape(1, 3, 4)
        >>> s, p = select_reduce_reference(x, torch.tensor([0, 0]), torch.tensor([0, 2]),
        ...                                torch.tensor([0, 0]), 1, directions=torch.eye(4)[:1])
        >>> s.tolist(), p.tolist()
        ([[8.0, 10.0, 12.0, 14.0]], [[0.0], [8.0]])
    """
    check_select_reduce_args(
        x, batch_index, token_index, labels, num_classes, weights, directions, out, proj_out, accumulate
    )
    rows = x[batch_index, token_index]  # [R, D]
    if rows.dtype != torch.float32:  # (a no-op .float() is still an op on the host)
        rows = rows.float()
    if weights is not None:
        rows = rows * weights.float()[:, None]
    if out is None:
        sums = torch.zeros(num_classes, x.shape[2], dtype=torch.float32, device=x.device)
    else:
        sums = out
        if not accumulate:
            sums.zero_()
    if rows.shape[0]:
        if deterministic:
            onehot = torch.zeros(num_classes, rows.shape[0], dtype=torch.float32, device=x.device)
            onehot[labels, torch.arange(rows.shape[0], device=x.device)] = 1.0
            sums += onehot @ rows
        else:
            sums.index_add_(0, labels, rows)
    proj = None
    if directions is not None:
        proj = rows @ directions.float().T
        if proj_out is not None:
            proj = proj_out.copy_(proj)
    return sums, proj
