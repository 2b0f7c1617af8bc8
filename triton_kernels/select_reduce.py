"""Triton kernels of the fused select-reduce op (contract: :mod:`emofast.kernels.reference`).

One program owns a chunk of ``rows_per_prog`` consecutive rows and one ``BLOCK_D`` slice of the hidden size.
It walks its chunk ``BLOCK_R`` rows at a time; each ``[BLOCK_R, BLOCK_D]`` tile is gathered straight from the
strided ``x`` (never materialised; the next tile's loads are issued before the current tile is reduced),
converted to fp32, and for each distinct label of the tile its weighted column sum is taken. The sum of the
current label is carried over tiles and flushed only when the label changes, so a run of rows with one label
(all tokens of a sequence, the usual layout) costs one flush per chunk, not one per tile. Labels in random
order still work, at one masked pass per distinct label of a tile. Rows are selected with ``tl.where``, so an
``inf`` in one row never turns another label's sum into NaN.

Projections are not fused: they are linear, so ``proj = (w * x[b, t]) @ directions.T`` is taken by torch on the
gathered rows (fp32, in chunks of rows), with no limit on ``K`` and no register or shared-memory cost in the
kernel. The capture path never asks for them (it projects per-text vectors, one matmul per layer and batch).

Default mode flushes with fp32 atomics into ``out`` (zeroed first, unless ``accumulate``).

``deterministic=True`` uses no atomics. The rows are visited in label order (a stable sort), so every label
other than the first and the last of a chunk lies entirely inside that chunk, and that chunk alone adds it
into ``out``. The first/last-label sums of each chunk go to a small ``[chunks, 2, D]`` buffer, which
:func:`_finalize_sums_kernel` adds up per label, chunk by chunk in order. Everything depends on the inputs and
shapes alone, so results are bit-identical run to run.

The arguments that change from batch to batch (``R``, ``B``, ``T``, ``C``, ``rows_per_prog``) are marked
``do_not_specialize``: a new batch size or length never triggers a recompile.

Rows whose batch/token index or label is out of range are skipped (the device cannot raise without a host
sync; skipping keeps every access in bounds). The torch reference raises for them.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from emofast.kernels.reference import check_select_reduce_args, select_reduce_reference

__all__ = ["select_reduce_triton", "select_reduce_reference"]

# One configuration for every GPU (no autotune: it fails under the interpreter). A [32, 128] tile over 8 warps
# is 16 values a thread, loaded as 16-byte vectors when the row strides allow; with the next tile in flight,
# 32 values a thread, in x's dtype until used.
BLOCK_R = 32
BLOCK_D = 128
NUM_WARPS = 8
# Rows per program grow (up to MAX_ROW_BLOCKS tiles) until about TARGET_PROGRAMS programs remain: several
# waves on an H200 (132 SMs) or a T4 (40), and few flushes and partials.
TARGET_PROGRAMS = 2048
MAX_ROW_BLOCKS = 64
# Rows a torch projection takes at a time (bounds the gathered fp32 copy to PROJ_CHUNK x D).
PROJ_CHUNK = 8192


@triton.jit
def _load_rows(
    start,
    end,
    bidx_ptr,
    tidx_ptr,
    lab_ptr,
    w_ptr,
    perm_ptr,
    B,
    T,
    C,
    stride_xb,
    stride_xt,
    HAS_W: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Row data of positions ``start + [0, BLOCK_R)``: (row, offset of x[b, t] in elements, label, weight, valid).

    In deterministic mode position ``i`` is row ``perm[i]`` and ``lab_ptr`` holds the sorted labels. Invalid
    rows (past ``end`` or out of range) get weight 0 and ``valid`` False.
    """
    pos = start + tl.arange(0, BLOCK_R).to(tl.int64)
    valid = pos < end
    row = tl.load(perm_ptr + pos, mask=valid, other=0) if DETERMINISTIC else pos
    b = tl.load(bidx_ptr + row, mask=valid, other=0)
    t = tl.load(tidx_ptr + row, mask=valid, other=0)
    lab = tl.load(lab_ptr + pos, mask=valid, other=0)
    valid = valid & (b >= 0) & (b < B) & (t >= 0) & (t < T) & (lab >= 0) & (lab < C)
    if HAS_W:
        w = tl.load(w_ptr + row, mask=valid, other=0.0)
    else:
        w = valid.to(tl.float32)
    return row, b * stride_xb + t * stride_xt, lab, w, valid


@triton.jit
def _flush(
    acc,
    label,
    offs_d,
    dmask,
    out_ptr,
    stride_oc,
    stride_od,
    part_ptr,
    chunk,
    first,
    last,
    D,
    DETERMINISTIC: tl.constexpr,
):
    """Add the finished sum ``acc`` of the rows labelled ``label`` (-1: none yet) into ``out``."""
    # Scalar conditions are branches rather than mask terms: the interpreter turns a scalar bool broadcast
    # into a mask into int32, which its atomic_add rejects.
    if label >= 0:
        out_ptrs = out_ptr + label * stride_oc + offs_d * stride_od
        if DETERMINISTIC:
            if (label == first) | (label == last):
                # May continue in the neighbouring chunks: park it (slot 0 first, 1 last) for the finalize.
                slot = chunk * 2 + (label != first).to(tl.int64)
                tl.store(part_ptr + slot * D + offs_d, acc, mask=dmask)
            else:
                # Lies in this chunk only, so this program alone adds into its row of `out`.
                tl.store(out_ptrs, tl.load(out_ptrs, mask=dmask, other=0.0) + acc, mask=dmask)
        else:
            tl.atomic_add(out_ptrs, acc, mask=dmask, sem="relaxed")


@triton.jit(do_not_specialize=["R", "B", "T", "C", "rows_per_prog"])
def _select_reduce_kernel(
    x_ptr,
    bidx_ptr,
    tidx_ptr,
    lab_ptr,
    w_ptr,
    perm_ptr,
    out_ptr,
    part_ptr,
    R,
    B,
    T,
    D,
    C,
    rows_per_prog,
    stride_xb,
    stride_xt,
    stride_xd,
    stride_oc,
    stride_od,
    HAS_W: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Offsets are int64 throughout (B*T*D and the partial buffers can exceed 2**31 elements). tl.cast, not
    # .to(): the JIT turns an int argument equal to 1 into a Python constant.
    stride_xb = tl.cast(stride_xb, tl.int64)
    stride_xt = tl.cast(stride_xt, tl.int64)
    stride_xd = tl.cast(stride_xd, tl.int64)
    stride_oc = tl.cast(stride_oc, tl.int64)
    stride_od = tl.cast(stride_od, tl.int64)
    R = tl.cast(R, tl.int64)
    rows_per_prog = tl.cast(rows_per_prog, tl.int64)
    chunk = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    dmask = offs_d < D
    start = chunk * rows_per_prog
    end = tl.minimum(start + rows_per_prog, R)

    if DETERMINISTIC:
        first = tl.load(lab_ptr + start)
        last = tl.load(lab_ptr + end - 1)
    else:
        first = -1
        last = -1

    acc = tl.zeros([BLOCK_D], dtype=tl.float32)  # running sum of label `cur`
    cur = tl.full([], -1, tl.int64)  # -1: nothing accumulated yet
    _row, off, lab, w, valid = _load_rows(
        start,
        end,
        bidx_ptr,
        tidx_ptr,
        lab_ptr,
        w_ptr,
        perm_ptr,
        B,
        T,
        C,
        stride_xb,
        stride_xt,
        HAS_W,
        DETERMINISTIC,
        BLOCK_R,
    )
    tile = tl.load(x_ptr + off[:, None] + offs_d[None, :] * stride_xd, mask=valid[:, None] & dmask[None, :], other=0.0)
    for blk in range(start, end, BLOCK_R):
        # The next tile (its row indices, then its values) loads while this one is reduced.
        _nrow, noff, nlab, nw, nvalid = _load_rows(
            blk + BLOCK_R,
            end,
            bidx_ptr,
            tidx_ptr,
            lab_ptr,
            w_ptr,
            perm_ptr,
            B,
            T,
            C,
            stride_xb,
            stride_xt,
            HAS_W,
            DETERMINISTIC,
            BLOCK_R,
        )
        nxt_tile = tl.load(
            x_ptr + noff[:, None] + offs_d[None, :] * stride_xd, mask=nvalid[:, None] & dmask[None, :], other=0.0
        )
        wtile = tile.to(tl.float32) * w[:, None]

        # One masked pass per distinct label of the tile, smallest first (label order when rows are sorted).
        # tl.where, not a multiplication by a 0/1 mask: inf * 0 would put NaN into the other labels' sums.
        remaining = valid
        while tl.max(remaining.to(tl.int32), axis=0) > 0:
            c = tl.min(tl.where(remaining, lab, C), axis=0)
            sel = remaining & (lab == c)
            s = tl.sum(tl.where(sel[:, None], wtile, 0.0), axis=0)
            changed = c != cur
            if changed:
                _flush(
                    acc,
                    cur,
                    offs_d,
                    dmask,
                    out_ptr,
                    stride_oc,
                    stride_od,
                    part_ptr,
                    chunk,
                    first,
                    last,
                    D,
                    DETERMINISTIC,
                )
            acc = tl.where(changed, s, acc + s)
            cur = c
            remaining = remaining & (lab != c)
        lab, w, valid, tile = nlab, nw, nvalid, nxt_tile
    _flush(acc, cur, offs_d, dmask, out_ptr, stride_oc, stride_od, part_ptr, chunk, first, last, D, DETERMINISTIC)


@triton.jit(do_not_specialize=["R", "rows_per_prog"])
def _finalize_sums_kernel(
    part_ptr, out_ptr, slab_ptr, bounds_ptr, R, D, rows_per_prog, stride_oc, stride_od, BLOCK_D: tl.constexpr
):
    """Deterministic mode: add label ``c``'s parked chunk partials into ``out[c]``, chunk by chunk in order.

    ``slab_ptr`` holds the sorted labels, ``bounds_ptr[c]:bounds_ptr[c + 1]`` the positions of label ``c``.
    """
    R = tl.cast(R, tl.int64)
    rows_per_prog = tl.cast(rows_per_prog, tl.int64)
    c = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    dmask = offs_d < D
    lo = tl.load(bounds_ptr + c)
    hi = tl.load(bounds_ptr + c + 1)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    # The chunks that hold rows of label c; where c is neither first nor last it was added by the main kernel.
    for j in range(lo // rows_per_prog, (hi + rows_per_prog - 1) // rows_per_prog):
        start = j * rows_per_prog
        first = tl.load(slab_ptr + start)
        last = tl.load(slab_ptr + tl.minimum(start + rows_per_prog, R) - 1)
        if (first == c) | (last == c):
            slot = 2 * j + (first != c).to(tl.int64)
            acc += tl.load(part_ptr + slot * D + offs_d, mask=dmask, other=0.0)
    out_ptrs = out_ptr + c * tl.cast(stride_oc, tl.int64) + offs_d * tl.cast(stride_od, tl.int64)
    tl.store(out_ptrs, tl.load(out_ptrs, mask=dmask, other=0.0) + acc, mask=dmask)


def _rows_per_program(rows: int, d_blocks: int) -> int:
    """Rows of one program: ``BLOCK_R`` times a tile count chosen from the shape alone (deterministic)."""
    row_blocks = triton.cdiv(rows, BLOCK_R)
    tiles = triton.cdiv(row_blocks * d_blocks, TARGET_PROGRAMS)
    return BLOCK_R * max(1, min(MAX_ROW_BLOCKS, tiles, row_blocks))


def select_reduce_triton(
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
    """Triton select-reduce; arguments and results as in :func:`select_reduce_reference`.

    Runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before this module was
    imported. ``x`` may have any strides; nothing of it is copied.
    """
    check_select_reduce_args(
        x, batch_index, token_index, labels, num_classes, weights, directions, out, proj_out, accumulate
    )
    dev = x.device
    if dev.type != "cuda" and isinstance(_select_reduce_kernel, triton.runtime.JITFunction):
        raise ValueError(
            f"the Triton kernel needs CUDA tensors (x is on {dev}), or TRITON_INTERPRET=1 set before triton is "
            "first imported, to run it on the CPU through the interpreter"
        )
    n_b, n_t, d = x.shape
    rows = batch_index.shape[0]
    f32 = torch.float32
    if out is None:
        sums = torch.zeros(num_classes, d, dtype=f32, device=dev)
    else:
        sums = out
        if not accumulate:
            sums.zero_()
    proj = None
    if directions is not None:
        proj = _project(x, batch_index, token_index, labels, num_classes, weights, directions, proj_out)
    if rows == 0 or d == 0 or num_classes == 0:
        return sums, proj

    d_blocks = triton.cdiv(d, BLOCK_D)
    rows_per_prog = _rows_per_program(rows, d_blocks)
    n_chunks = triton.cdiv(rows, rows_per_prog)
    batch_index, token_index, labels = batch_index.contiguous(), token_index.contiguous(), labels.contiguous()
    w = None if weights is None else weights.to(f32).contiguous()
    dummy = sums  # stands in for the pointers that a constexpr flag leaves unused
    perm = part = bounds = None
    if deterministic:
        labels, perm = torch.sort(labels, stable=True)
        bounds = torch.searchsorted(labels, torch.arange(num_classes + 1, device=dev))
        part = torch.zeros(n_chunks, 2, d, dtype=f32, device=dev)

    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        _select_reduce_kernel[(n_chunks, d_blocks)](
            x,
            batch_index,
            token_index,
            labels,
            dummy if w is None else w,
            dummy if perm is None else perm,
            sums,
            dummy if part is None else part,
            rows,
            n_b,
            n_t,
            d,
            num_classes,
            rows_per_prog,
            *x.stride(),
            *sums.stride(),
            HAS_W=w is not None,
            DETERMINISTIC=deterministic,
            BLOCK_R=BLOCK_R,
            BLOCK_D=BLOCK_D,
            num_warps=NUM_WARPS,
        )
        if deterministic:
            _finalize_sums_kernel[(num_classes, d_blocks)](
                part,
                sums,
                labels,
                bounds,
                rows,
                d,
                rows_per_prog,
                *sums.stride(),
                BLOCK_D=BLOCK_D,
                num_warps=4,  # one value of the [BLOCK_D] row a thread
            )
    return sums, proj


def _project(x, batch_index, token_index, labels, num_classes, weights, directions, proj_out):
    """``proj [R, K] = (w * x[b, t]) @ directions.T`` in fp32, ``PROJ_CHUNK`` rows at a time.

    Out-of-range rows (skipped by the kernel) get 0, as in the kernel's contract.
    """
    n_b, n_t, _ = x.shape
    rows, k = batch_index.shape[0], directions.shape[0]
    proj = torch.empty(rows, k, dtype=torch.float32, device=x.device) if proj_out is None else proj_out
    if rows == 0 or k == 0:
        return proj.zero_()
    dirs_t = directions.to(torch.float32).T
    for lo in range(0, rows, PROJ_CHUNK):
        b, t = batch_index[lo : lo + PROJ_CHUNK], token_index[lo : lo + PROJ_CHUNK]
        lab = labels[lo : lo + PROJ_CHUNK]
        ok = (b >= 0) & (b < n_b) & (t >= 0) & (t < n_t) & (lab >= 0) & (lab < num_classes)
        part = x[b.clamp(0, max(n_b - 1, 0)), t.clamp(0, max(n_t - 1, 0))].to(torch.float32)
        w = ok.to(torch.float32) if weights is None else torch.where(ok, weights[lo : lo + PROJ_CHUNK].float(), 0.0)
        part = torch.where(ok[:, None], part * w[:, None], 0.0)
        proj[lo : lo + PROJ_CHUNK].copy_(part @ dirs_t)
    return proj
