"""Token embedding and the LM head, which may share (tie) the embedding's weight."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.gemm import gemv
from services.worker.layers.linear import default_weight_loader


class VocabEmbedding(nn.Module):
    """ids `[T]` -> `[T, H]` from weight `[V, H]`."""

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)
        self.weight.weight_loader = default_weight_loader

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class LMHead(nn.Module):
    """hidden `[N, H]` -> logits `[N, V]` in the model dtype.

    With `tied_to`, the head's weight IS the embedding's parameter (same storage), so it is loaded
    and counted once, under the embedding's name.
    """

    def __init__(self, vocab_size: int, hidden_size: int, tied_to: VocabEmbedding | None = None):
        super().__init__()
        if tied_to is not None:
            self.weight = tied_to.weight
        else:
            self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)
            self.weight.weight_loader = default_weight_loader

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return gemv.linear(hidden, self.weight)
