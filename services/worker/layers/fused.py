"""The elementwise step and the projection that a decoder layer runs back to back, as one call.

At decode batch sizes (`kernels.gemv.fits`) each pair is one Triton launch: RMSNorm (with the
residual add) fused into the projection after it, SiLU-and-mul fused into the down projection.
Elsewhere (prefill, larger batches, the CPU) they run as the two layers they are.
"""
from __future__ import annotations

import torch

from kernels import gemv
from services.worker.layers.activation import SiluAndMul
from services.worker.layers.linear import Linear
from services.worker.layers.norm import RMSNorm


def norm_then_linear(norm: RMSNorm, linear: Linear, x: torch.Tensor, residual: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(linear(norm(x + residual)), x + residual)`; without a residual `(linear(norm(x)), x)`."""
    if gemv.fits(x):
        return gemv.rms_norm_linear(x, residual, norm.weight, norm.eps, linear.weight, linear.bias)
    if residual is None:
        return linear(norm(x)), x
    normed, residual = norm(x, residual)
    return linear(normed), residual


def act_then_linear(act: SiluAndMul, linear: Linear, x: torch.Tensor) -> torch.Tensor:
    """`linear(act(x))` for `x [T, 2I]` (gate | up)."""
    if gemv.fits(x):
        return gemv.silu_and_mul_linear(x, linear.weight, linear.bias)
    return linear(act(x))
