"""Linear layers: `y = x W^T + b` with a Triton GEMV for one row on CUDA (`kernels/gemm/gemv_triton.py`,
the batch-1 decode step), cuBLAS (`F.linear`) for everything else.

`gated=True` takes x as `[M, 2K]` (gate | up) and multiplies `silu(gate) * up` (the arithmetic of
`kernels.elementwise.activation.silu_and_mul`), so an MLP's down projection fuses its activation at one row;
with more rows it runs the activation kernel, then cuBLAS.

Shapes: x `[M, K]` (`[M, 2K]` gated) with contiguous columns, weight `[N, K]`, bias `[N]` or None,
one floating dtype; the output is a new contiguous `[M, N]`. `SLUICE_GEMV=cublas` (read at every
call) sends every M to cuBLAS, for A/B runs and for bisecting a numerical difference.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from kernels.elementwise import activation
from kernels.runtime.backend import use_triton

MAX_ROWS = 1  # the Triton kernel reads W once per row; cuBLAS reads it once for all rows
_DTYPES = (torch.float16, torch.bfloat16)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gated: bool = False
           ) -> torch.Tensor:
    """`x W^T + b`; with `gated`, `silu(gate) * up` of x first. `[M, K]` -> `[M, N]`."""
    _check(x, weight, bias, gated)
    if use_gemv(x, weight):
        from kernels.gemm.gemv_triton import gemv_triton

        return gemv_triton(x, weight, bias, gated)
    if gated:
        x = activation.silu_and_mul(x)
    return F.linear(x, weight, bias)


def use_gemv(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear` takes the Triton path for these operands."""
    return (x.shape[0] <= MAX_ROWS and x.dtype in _DTYPES and weight.is_contiguous()
            and os.environ.get("SLUICE_GEMV", "triton") != "cublas" and use_triton(x, weight))


def _torch_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gated: bool = False
                ) -> torch.Tensor:
    """The reference: the activation's torch arithmetic, then `F.linear`."""
    if gated:
        x = activation._torch_impl(x)
    return F.linear(x, weight, bias)


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gated: bool) -> None:
    assert x.dim() == 2 and weight.dim() == 2, (x.shape, weight.shape)
    in_features = weight.shape[1] * (2 if gated else 1)
    assert x.shape[1] == in_features, (x.shape, weight.shape, gated)
    assert x.stride(1) == 1 and x.dtype == weight.dtype, (x.stride(), x.dtype, weight.dtype)
    if bias is not None:
        assert bias.shape == (weight.shape[0],) and bias.dtype == x.dtype, (bias.shape, bias.dtype)
