"""Gated activations for MLPs whose gate and up projections are packed in one matmul."""
from __future__ import annotations

import torch
from torch import nn

from kernels.activation import silu_and_mul


class SiluAndMul(nn.Module):
    """`[T, 2I]` (gate | up) -> `silu(gate) * up`, `[T, I]`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return silu_and_mul(x)
