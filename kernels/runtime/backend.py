"""Which implementation a kernel entry point runs: Triton on CUDA tensors, pure torch otherwise.

`SLUICE_KERNELS=torch` forces the torch reference everywhere (for bisecting a numerical difference
to a kernel). The variable is read at every call, so tests can flip it with `monkeypatch.setenv`.
"""
from __future__ import annotations

import os

import torch


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when every tensor is on a CUDA device and `SLUICE_KERNELS` is not "torch"."""
    if os.environ.get("SLUICE_KERNELS", "triton") == "torch":
        return False
    return all(t.is_cuda for t in tensors)
