"""Launch checks shared by the paged attention kernels (`decode_attention`, `extend_attention`):
the query, the paged K/V cache, the block tables, the context lengths and the output agree with the
layouts of `kernels/attention/reference.py` and with what the Triton kernels assume."""
from __future__ import annotations

import math

import torch


def check_paged_inputs(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                       out: torch.Tensor) -> None:
    """query and out `[T, Hq, D]`; caches `[num_blocks, block_size, Hkv, D]`; `seq_lens [B]` and
    `block_tables [>= B, max_blocks]` int32. Raises AssertionError naming what disagrees."""
    assert query.dim() == 3 and k_cache.dim() == 4, (query.shape, k_cache.shape)
    _, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, cache_head_dim = k_cache.shape
    assert v_cache.shape == k_cache.shape and v_cache.stride() == k_cache.stride(), \
        (v_cache.shape, v_cache.stride(), k_cache.shape, k_cache.stride())
    assert cache_head_dim == head_dim and num_heads % num_kv_heads == 0, (query.shape, k_cache.shape)
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, f"head_dim {head_dim} must be a power of 2"
    assert block_size & (block_size - 1) == 0, f"block_size {block_size} must be a power of 2"
    assert query.dtype in (torch.float16, torch.bfloat16, torch.float32), query.dtype
    assert query.dtype == k_cache.dtype == v_cache.dtype == out.dtype, \
        (query.dtype, k_cache.dtype, v_cache.dtype, out.dtype)
    assert query.stride(2) == 1 and k_cache.stride(3) == 1 and out.stride(2) == 1, \
        (query.stride(), k_cache.stride(), out.stride())
    assert out.shape == query.shape, (out.shape, query.shape)
    assert seq_lens.dtype == torch.int32 and seq_lens.dim() == 1 and seq_lens.is_contiguous(), \
        (seq_lens.dtype, seq_lens.shape)
    assert block_tables.dtype == torch.int32 and block_tables.dim() == 2, (block_tables.dtype, block_tables.shape)
    assert block_tables.shape[0] >= seq_lens.shape[0] and block_tables.stride(1) == 1, \
        (block_tables.shape, block_tables.stride())
    devices = {t.device for t in (query, k_cache, v_cache, block_tables, seq_lens, out)}
    assert len(devices) == 1, devices
    assert scale > 0 and math.isfinite(scale), scale
