#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run them all: lint, the main suite (CPU; the Triton
# kernels through the interpreter, the report test in headless Chromium), and the vLLM suite in its own venv.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1; then
  # Debian's Chromium, for the test that opens the HTML report in a real browser.
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/ruff check .
.venv/bin/python -m pytest -q
scripts/test-vllm.sh
