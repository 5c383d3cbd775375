"""Linear layers at decode batch sizes (a few rows), with the elementwise step before them fused in.

At one to four rows a projection is a matrix-vector product: it only streams its weight once, and
what it costs beyond that stream is launch and ramp time. cuBLAS spends a split-K reduction launch on
the narrower projections and the elementwise kernel before each projection is one more launch, so at
batch 1 those small launches add up to ~15% of a Llama-3-8B decode step (see docs/benchmarks.md).
These entry points do the whole thing in one Triton launch:

- `linear(x, weight, bias)`: `x W^T + b`;
- `rms_norm_linear(x, residual, norm_weight, eps, weight, bias)`: RMSNorm with the residual add (the
  arithmetic of `kernels/rmsnorm.py`), then the projection; returns `(y, new_residual)`;
- `silu_and_mul_linear(x, weight, bias)`: SiLU-and-mul of `x [M, 2K]` (gate | up, the arithmetic of
  `kernels/activation.py`), then the projection.

Layouts: `x [M, K]` (`[M, 2K]` for silu) with rows strided and columns contiguous; `weight [N, K]`
contiguous; `bias [N]`; all one floating dtype. Outputs are new contiguous tensors. Use them when
`fits(x)` (`M <= MAX_ROWS` on CUDA); elsewhere each function runs its torch reference, which is the
unfused composition of the existing references, and so matches them exactly. The Triton results
differ from the references only by float32 summation order (tested within tolerance).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import activation, rmsnorm
from kernels.backend import use_triton

MAX_ROWS = 4  # a decode batch of at most this many rows takes the fused Triton path on CUDA


def fits(x: torch.Tensor) -> bool:
    """Whether the Triton path should run for this input (the CPU runs the references)."""
    return x.shape[0] <= MAX_ROWS and use_triton(x)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x [M, K] @ weight [N, K]^T + bias` -> `[M, N]`."""
    _check(x, weight, bias, x.shape[1])
    if use_triton(x, weight):
        return _triton("none", x, weight, bias)
    return F.linear(x, weight, bias)


def rms_norm_linear(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                    weight: torch.Tensor, bias: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(linear(rms_norm(x + residual)), x + residual)`; without a residual `(linear(rms_norm(x)), x)`."""
    _check(x, weight, bias, x.shape[1])
    rmsnorm._check(x, norm_weight, residual)
    if use_triton(x, weight, norm_weight):
        new_residual = x if residual is None else torch.empty((x.shape[0], x.shape[1]), dtype=x.dtype,
                                                              device=x.device)
        y = _triton("rms_norm", x, weight, bias, residual=residual, norm_weight=norm_weight, eps=eps,
                    new_residual=None if residual is None else new_residual)
        return y, new_residual
    if residual is None:
        return F.linear(rmsnorm._torch_impl(x, norm_weight, eps), weight, bias), x
    normed, new_residual = rmsnorm._torch_impl(x, norm_weight, eps, residual)
    return F.linear(normed, weight, bias), new_residual


def silu_and_mul_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`linear(silu(gate) * up)` of `x [M, 2K]` (gate | up) -> `[M, N]`."""
    activation._check(x)
    _check(x, weight, bias, x.shape[1] // 2)
    if use_triton(x, weight):
        return _triton("silu_and_mul", x, weight, bias)
    return F.linear(activation._torch_impl(x), weight, bias)


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int) -> None:
    assert x.dim() == 2 and weight.dim() == 2 and weight.shape[1] == k, (x.shape, weight.shape)
    assert x.is_floating_point() and x.dtype == weight.dtype, (x.dtype, weight.dtype)
    assert x.stride(1) == 1 and weight.is_contiguous(), (x.stride(), weight.stride())
    if bias is not None:
        assert bias.shape == (weight.shape[0],) and bias.dtype == x.dtype, (bias.shape, bias.dtype)
    assert weight.device == x.device, (x.device, weight.device)


def _triton(prologue: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            **kwargs) -> torch.Tensor:
    """The Triton path (`kernels/gemv_triton.py`, imported on first use)."""
    from kernels.gemv_triton import gemv_triton

    return gemv_triton(prologue, x, weight, bias, **kwargs)
