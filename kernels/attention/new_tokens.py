"""The new token of each sequence in a decode step whose attention launch rotates it and writes it
into the KV cache itself (`kernels.attention.decode`, `ROTARY`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NewTokens:
    """The step's new token per sequence, for a decode launch that applies the rotary embedding
    and writes the KV cache itself: key and value `[B, Hkv, D]` (each token's channels
    contiguous) before rotation, positions and slot mapping `[B]` int64 (a negative slot writes
    nothing), the float32 rotary cos/sin cache `[max_position, rotary_dim]` (cos | sin halves)
    and rotary_dim. Numerics, position and slot rules: `kernels.elementwise.rotary_kv.rotary_and_write_kv`'s."""

    key: torch.Tensor
    value: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    cos_sin_cache: torch.Tensor
    rotary_dim: int

    def check(self, query: torch.Tensor, k_cache: torch.Tensor) -> None:
        batch_size, _, head_dim = query.shape
        num_kv_heads = k_cache.shape[2]
        for t in (self.key, self.value):
            assert t.shape == (batch_size, num_kv_heads, head_dim) and t.dtype == query.dtype, (t.shape, t.dtype)
            assert t.stride(2) == 1 and t.stride(1) == head_dim, t.stride()
        assert self.positions.shape == self.slot_mapping.shape == (batch_size,), \
            (self.positions.shape, self.slot_mapping.shape)
        assert self.positions.dtype == self.slot_mapping.dtype == torch.int64, (self.positions.dtype,)
        assert k_cache.is_contiguous(), "the new token's row is addressed as slot * Hkv * D"
        assert 0 < self.rotary_dim <= head_dim and self.rotary_dim % 2 == 0, (self.rotary_dim, head_dim)
        assert self.cos_sin_cache.dim() == 2 and self.cos_sin_cache.shape[1] == self.rotary_dim \
            and self.cos_sin_cache.is_contiguous(), self.cos_sin_cache.shape
        assert self.cos_sin_cache.dtype == torch.float32, "float32, as RotaryEmbedding builds it (one variant)"
