"""RMSNorm with the residual add fused in (`kernels/elementwise/rmsnorm.py`: Triton on CUDA, torch elsewhere).

Numerics follow HF's LlamaRMSNorm: the residual add happens in the input dtype, the normalisation
in float32, and the weight multiplies after casting back.
"""
from __future__ import annotations

import torch
from torch import nn

from kernels.elementwise.rmsnorm import rms_norm


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`norm(x)`; or with `residual`, `(norm(x + residual), x + residual)`. All `[T, H]`."""
        return rms_norm(x, self.weight, self.eps, residual)
