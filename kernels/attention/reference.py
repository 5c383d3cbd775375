"""Paged attention in pure torch: the reference for the Triton kernels and the CPU path.

KV-cache layout, per layer and for K and V alike: `[num_blocks, block_size, num_kv_heads, head_dim]`.
Token `p` of a sequence lives in block `block_table[p // block_size]` at offset `p % block_size`;
its flat slot is `block_id * block_size + p % block_size`.

A step is a flat, variable-length batch of T tokens from B sequences. Sequence b owns query rows
`query_start_loc[b]:query_start_loc[b + 1]`; they are the LAST tokens of that sequence, whose full
length (context plus the new tokens) is `seq_lens[b]`. Attention is causal: the query at position p
sees keys 0..p. Query head h reads KV head `h // (num_heads // num_kv_heads)` (GQA, as HF repeat_kv).
Scores, softmax and the weighted sum run in float32; the output has the query's dtype.
"""
from __future__ import annotations

import torch


def write_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store key/value `[T, Hkv, D]` into the caches at the flat slots `slot_mapping [T]` (all valid)."""
    num_tokens, num_kv_heads, head_dim = key.shape
    assert value.shape == key.shape, (value.shape, key.shape)
    assert k_cache.shape == v_cache.shape and k_cache.dim() == 4, (k_cache.shape, v_cache.shape)
    assert k_cache.shape[2:] == (num_kv_heads, head_dim), (k_cache.shape, key.shape)
    assert key.dtype == value.dtype == k_cache.dtype == v_cache.dtype, (key.dtype, k_cache.dtype)
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    assert slot_mapping.shape == (num_tokens,) and not slot_mapping.is_floating_point()
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping.long(), key)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping.long(), value)


def paged_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """Causal attention of `query [T, Hq, D]` over each sequence's cached K/V -> `[T, Hq, D]`.

    `query_start_loc [B+1]` (0 first, T last), `seq_lens [B]` (context incl. the new tokens),
    `block_tables [B, max_blocks]` int32; entries past a sequence's blocks are ignored but must be
    valid block ids (pad with 0). The K/V of the new tokens must already be in the cache.
    A batch where every sequence has one new token (pure decode) takes a vectorised path.
    """
    num_tokens, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, cache_head_dim = k_cache.shape
    num_seqs = seq_lens.shape[0]
    assert v_cache.shape == k_cache.shape, (v_cache.shape, k_cache.shape)
    assert cache_head_dim == head_dim and num_heads % num_kv_heads == 0, (query.shape, k_cache.shape)
    assert query.dtype == k_cache.dtype == v_cache.dtype, (query.dtype, k_cache.dtype)
    assert query_start_loc.shape == (num_seqs + 1,), (query_start_loc.shape, num_seqs)
    assert block_tables.dim() == 2 and block_tables.shape[0] == num_seqs, block_tables.shape
    assert block_tables.dtype == torch.int32, block_tables.dtype
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    assert starts[0] == 0 and starts[-1] == num_tokens, (starts, num_tokens)
    assert all(0 < starts[b + 1] - starts[b] <= lens[b] for b in range(num_seqs)), (starts, lens)
    assert max(lens, default=0) <= block_tables.shape[1] * block_size, (lens, block_tables.shape)
    if num_tokens == num_seqs:
        return _decode_attention(query, k_cache, v_cache, seq_lens, block_tables, scale)
    out = torch.empty_like(query)
    for b in range(num_seqs):
        start, end, seq_len = starts[b], starts[b + 1], lens[b]
        keys, values = _gather_kv(k_cache, v_cache, block_tables[b], seq_len)  # [L, Hkv, D]
        out[start:end] = _attend(query[start:end], keys, values, scale)
    return out


def _gather_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
               seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `seq_len` cached keys and values of one sequence, each `[seq_len, Hkv, D]`."""
    block_size = k_cache.shape[1]
    block_ids = block_table[: (seq_len + block_size - 1) // block_size].long()
    keys = k_cache[block_ids].flatten(0, 1)[:seq_len]
    values = v_cache[block_ids].flatten(0, 1)[:seq_len]
    return keys, values


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """Query `[Q, Hq, D]` = the last Q positions of a sequence whose K/V are `[L, Hkv, D]`."""
    num_queries, num_heads, _ = query.shape
    seq_len, num_kv_heads, _ = keys.shape
    group = num_heads // num_kv_heads
    q = query.float().unflatten(1, (num_kv_heads, group)).permute(1, 2, 0, 3)  # [Hkv, G, Q, D]
    k = keys.float().permute(1, 0, 2).unsqueeze(1)  # [Hkv, 1, L, D]
    v = values.float().permute(1, 0, 2).unsqueeze(1)  # [Hkv, 1, L, D]
    scores = (q @ k.transpose(-1, -2)) * scale  # [Hkv, G, Q, L]
    query_pos = torch.arange(seq_len - num_queries, seq_len, device=query.device)
    key_pos = torch.arange(seq_len, device=query.device)
    scores.masked_fill_(key_pos[None, :] > query_pos[:, None], float("-inf"))
    out = scores.softmax(-1) @ v  # [Hkv, G, Q, D]
    return out.permute(2, 0, 1, 3).flatten(1, 2).to(query.dtype)  # [Q, Hq, D]


def _decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      seq_lens: torch.Tensor, block_tables: torch.Tensor, scale: float) -> torch.Tensor:
    """One query per sequence (`query [B, Hq, D]`): pad every context to the longest and mask."""
    num_heads = query.shape[1]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    max_len = int(seq_lens.max())
    block_ids = block_tables[:, : (max_len + block_size - 1) // block_size].long()  # [B, NB]
    keys = k_cache[block_ids].flatten(1, 2).float().permute(0, 2, 3, 1)  # [B, Hkv, D, L]
    values = v_cache[block_ids].flatten(1, 2).float().transpose(1, 2)  # [B, Hkv, L, D]
    q = query.float().unflatten(1, (num_kv_heads, num_heads // num_kv_heads))  # [B, Hkv, G, D]
    scores = (q @ keys) * scale  # [B, Hkv, G, L]
    key_pos = torch.arange(scores.shape[-1], device=query.device)
    pad = key_pos[None, :] >= seq_lens[:, None].to(query.device)  # [B, L]
    scores.masked_fill_(pad[:, None, None, :], float("-inf"))
    values = values.masked_fill(pad[:, None, :, None], 0.0)  # padded slots may hold non-finite data
    out = scores.softmax(-1) @ values  # [B, Hkv, G, D]
    return out.flatten(1, 2).to(query.dtype)  # [B, Hq, D]
