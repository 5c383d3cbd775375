"""The attention layer: write this step's K/V into the paged cache, then attend over the cache.

Given a `RotaryEmbedding`, the layer also rotates the query and key first, in the same kernel launch
as the cache write (`kernels.elementwise.rotary_kv`), or at batch 1 inside the decode-attention launch itself
(`kernels.attention.NewTokens`); the caller passes unrotated q/k and the positions.
The layer holds no weights. Its `kv_cache` (one `(k_cache, v_cache)` pair, each
`[num_blocks, block_size, Hkv, D]`) is bound by `kv_cache.bind_kv_cache` after allocation; the
step's `AttentionMetadata` arrives with every forward call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernels import attention
from kernels.elementwise.kv_write import write_kv
from kernels.elementwise.rotary_kv import rotary_and_write_kv
from services.worker.layers.rotary import RotaryEmbedding

# Decode steps up to this batch size rotate and write the new K/V inside the attention launch. On the
# H200 (Llama-3-8B shape, 1k context) that saves a launch at batch 1 (graph 4.006 vs 4.026 ms) but
# costs from batch 4 on (4.873 vs 4.802 ms; at 512 x 1.5k, 39.7 vs 35.6 ms): the rotary launch
# compiles without FP fusion (see kernels/attention/decode.py), which slows the attention math.
ROTARY_IN_DECODE_MAX_BATCH = 1


@dataclass
class AttentionMetadata:
    """Where a flat batch of T tokens from B sequences sits in the paged cache (see kernels/)."""

    slot_mapping: torch.Tensor  # [T] int64, flat cache slot of each new token
    query_start_loc: torch.Tensor  # [B+1] int32, sequence b's tokens are rows [b] .. [b+1]
    seq_lens: torch.Tensor  # [B] int32, context length of each sequence including the new tokens
    block_tables: torch.Tensor  # [B, max_blocks] int32, zero-padded
    max_query_len: int = 0  # most new tokens of one sequence (1: a decode-only batch); 0 = unknown
    max_seq_len: int = 0  # upper bound of seq_lens (host int; sizes the decode split); 0 = unknown
    # Mixed steps: the first `num_decodes` sequences compute one token each (their rows come first)
    # and go through the decode kernel; the rest through the extend kernel, with their
    # `query_start_loc` rebased to 0 in `extend_query_start_loc` ([B - num_decodes + 1] int32).
    num_decodes: int = 0
    extend_query_start_loc: torch.Tensor | None = None


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
                 rotary_emb: RotaryEmbedding | None = None):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        if rotary_emb is not None:
            assert rotary_emb.head_dim == head_dim, (rotary_emb.head_dim, head_dim)
        self.rotary_emb = rotary_emb  # may be shared by every layer; holds no parameters
        self.kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.max_seq_len_hint = 8192  # used when metadata gives no bound
        self._num_sms: int | None = None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                metadata: AttentionMetadata, positions: torch.Tensor | None = None) -> torch.Tensor:
        """query `[T, Hq*D]`, key and value `[T, Hkv*D]` -> `[T, Hq*D]`.

        With a `rotary_emb`, `positions [T]` is required. Query and key are rotated in place, except
        in a batch-1 decode step, whose attention launch rotates them as it loads them and stores
        the new K/V itself (`kernels.attention.NewTokens`, `ROTARY_IN_DECODE_MAX_BATCH`).
        """
        if self.kv_cache is None:
            raise RuntimeError("attention layer has no KV cache bound (call bind_kv_cache first)")
        k_cache, v_cache = self.kv_cache
        query = query.view(-1, self.num_heads, self.head_dim)  # [T, Hq, D]
        key = key.view(-1, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        value = value.view(-1, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        if self.rotary_emb is not None:
            assert positions is not None, "an attention layer with a rotary_emb needs positions"
        if metadata.max_query_len == 1 and self.rotary_emb is not None and query.shape[0] <= ROTARY_IN_DECODE_MAX_BATCH:
            # A batch-1 decode step: the attention launch rotates q and k and writes the new K/V itself.
            new = attention.NewTokens(key, value, positions, metadata.slot_mapping,
                                      self.rotary_emb.cos_sin_cache, self.rotary_emb.rotary_dim)
            return self._decode(query, metadata.block_tables, metadata.seq_lens, metadata.max_seq_len,
                                rotary=new).flatten(1)
        if self.rotary_emb is None:
            write_kv(key, value, k_cache, v_cache, metadata.slot_mapping)
        else:
            rotary_and_write_kv(positions, query, key, value, k_cache, v_cache, metadata.slot_mapping,
                                self.rotary_emb.cos_sin_cache, self.rotary_emb.rotary_dim)
        if metadata.max_query_len == 1:
            return self._decode(query, metadata.block_tables, metadata.seq_lens, metadata.max_seq_len).flatten(1)
        decodes = metadata.num_decodes if metadata.extend_query_start_loc is not None else 0
        if decodes == 0:
            return attention.extend_attention(query, key, value, k_cache, v_cache, metadata.query_start_loc,
                                              metadata.seq_lens, metadata.block_tables, self.scale,
                                              metadata.max_query_len or None).flatten(1)  # [T, Hq*D]
        # A mixed step: one-token rows through the GQA-grouped, context-split decode kernel (the
        # extend kernel would pad each to a full row tile per query head), the rest through extend.
        out = torch.empty_like(query)
        self._decode(query[:decodes], metadata.block_tables[:decodes], metadata.seq_lens[:decodes],
                     metadata.max_seq_len, out[:decodes])
        attention.extend_attention(query[decodes:], key[decodes:], value[decodes:], k_cache, v_cache,
                                   metadata.extend_query_start_loc, metadata.seq_lens[decodes:],
                                   metadata.block_tables[decodes:], self.scale,
                                   metadata.max_query_len or None, out[decodes:])
        return out.flatten(1)

    def _decode(self, query: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor,
                max_seq_len: int, out: torch.Tensor | None = None,
                rotary: attention.NewTokens | None = None) -> torch.Tensor:
        k_cache, v_cache = self.kv_cache
        num_splits = self._num_splits(query.shape[0], max_seq_len, query.device)
        return attention.decode_attention(query, k_cache, v_cache, block_tables, seq_lens, self.scale,
                                          num_splits, out, rotary=rotary)

    def _num_splits(self, batch_size: int, max_seq_len: int, device: torch.device) -> int:
        if device.type != "cuda":
            return 1
        if self._num_sms is None:
            self._num_sms = torch.cuda.get_device_properties(device).multi_processor_count
        return attention.choose_num_splits(batch_size, self.num_kv_heads,
                                           max_seq_len or self.max_seq_len_hint, self._num_sms)
