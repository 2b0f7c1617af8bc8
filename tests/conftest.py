"""Test configuration. TRITON_INTERPRET must be set before any @triton.jit function is defined, so that the
Triton kernels run on the CPU through the interpreter when no GPU is present."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
