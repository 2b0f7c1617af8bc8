"""Triton GPU kernels of emofast, installed as ``emofast.triton_kernels`` (one op per module).

Importing this package does not import triton; each op module does, when it is imported.
"""
