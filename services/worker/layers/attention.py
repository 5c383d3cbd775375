"""The attention layer: write this step's K/V into the paged cache, then attend over the cache.

The layer holds no weights. Its `kv_cache` (one `(k_cache, v_cache)` pair, each
`[num_blocks, block_size, Hkv, D]`) is bound by `kv_cache.bind_kv_cache` after allocation; the
step's `AttentionMetadata` arrives with every forward call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernels import attention_ref


@dataclass
class AttentionMetadata:
    """Where a flat batch of T tokens from B sequences sits in the paged cache (see kernels/)."""

    slot_mapping: torch.Tensor  # [T] int64, flat cache slot of each new token
    query_start_loc: torch.Tensor  # [B+1] int32, sequence b's tokens are rows [b] .. [b+1]
    seq_lens: torch.Tensor  # [B] int32, context length of each sequence including the new tokens
    block_tables: torch.Tensor  # [B, max_blocks] int32, zero-padded
    max_query_len: int = 0  # most new tokens of one sequence (1: a decode-only batch); 0 = unknown


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        self.kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                metadata: AttentionMetadata) -> torch.Tensor:
        """query `[T, Hq*D]`, key and value `[T, Hkv*D]` -> `[T, Hq*D]`."""
        if self.kv_cache is None:
            raise RuntimeError("attention layer has no KV cache bound (call bind_kv_cache first)")
        k_cache, v_cache = self.kv_cache
        query = query.view(-1, self.num_heads, self.head_dim)  # [T, Hq, D]
        key = key.view(-1, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        value = value.view(-1, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        attention_ref.write_kv(key, value, k_cache, v_cache, metadata.slot_mapping)
        out = attention_ref.paged_attention(query, k_cache, v_cache, metadata.query_start_loc,
                                            metadata.seq_lens, metadata.block_tables, self.scale)
        return out.flatten(1)  # [T, Hq*D]
