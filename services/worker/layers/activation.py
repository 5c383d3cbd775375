"""Gated activations for MLPs whose gate and up projections are packed in one matmul."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    """`[T, 2I]` (gate | up) -> `silu(gate) * up`, `[T, I]`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)  # [T, I] each
        return F.silu(gate) * up
