"""SiLU-and-mul for MLPs whose gate and up projections are packed in one matmul: Triton on CUDA,
pure torch elsewhere.

Layout: x `[T, 2I]`, gate in columns `[0, I)` and up in `[I, 2I)`; rows may be strided, columns must
be contiguous; the output is a new contiguous `[T, I]` in x's dtype. Numerics are those of HF's MLP
(`act_fn(gate_proj(x)) * up_proj(x)`): silu runs in float32 and is rounded
to x's dtype, then the product runs in float32 and is rounded again.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.runtime.backend import use_triton


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """`[T, 2I]` (gate | up) -> `silu(gate) * up`, `[T, I]`."""
    _check(x)
    if use_triton(x):
        return _triton_impl(x)
    return _torch_impl(x)


def _torch_impl(x: torch.Tensor) -> torch.Tensor:
    """The reference: the same arithmetic as HF's MLP."""
    gate, up = x.chunk(2, dim=-1)  # [T, I] each
    return F.silu(gate) * up


def _check(x: torch.Tensor) -> None:
    assert x.dim() == 2 and x.shape[1] % 2 == 0, x.shape
    assert x.is_floating_point() and x.stride(1) == 1, (x.dtype, x.stride())


def _triton_impl(x: torch.Tensor) -> torch.Tensor:
    """The Triton path (`kernels/elementwise/triton_kernels.py`, imported on first use)."""
    from kernels.elementwise.triton_kernels import silu_and_mul_triton

    return silu_and_mul_triton(x)
