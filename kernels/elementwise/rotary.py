"""Rotary position embedding (NeoX / HF "rotate_half" layout), applied IN PLACE to query and key:
Triton on CUDA, pure torch elsewhere.

Layouts: query `[T, Hq, D]`, key `[T, Hkv, D]` (token and head strides free, channels contiguous, so
the q/k views of a packed qkv projection are rotated where they lie); `positions [T]` int32/int64;
`cos_sin_cache [max_position, rotary_dim]`, cos in the first half of each row and sin in the second
(the buffer `services.worker.layers.rotary.RotaryEmbedding` builds; every rope scaling type only
changes that buffer). The first `rotary_dim` channels of each head rotate, the rest stay untouched.
Query and key must not overlap, and positions must lie in `[0, max_position)` (the Triton path does
not check: CUDA-graph padding rows should carry position 0).

Numerics are those of the torch layer (and so HF's): cos/sin are cast to the activations' dtype,
and each product, then the sum, is rounded to that dtype, so half-precision results agree bit for bit.
"""
from __future__ import annotations

import torch

from kernels.runtime.backend import use_triton


def rotary_embedding(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                     cos_sin_cache: torch.Tensor, rotary_dim: int) -> None:
    """Rotate the first `rotary_dim` channels of every head of `query` and `key` in place."""
    _check(positions, query, key, cos_sin_cache, rotary_dim)
    if use_triton(positions, query, key, cos_sin_cache):
        _triton_impl(positions, query, key, cos_sin_cache, rotary_dim)
    else:
        _torch_impl(positions, query, key, cos_sin_cache, rotary_dim)


def _torch_impl(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                cos_sin_cache: torch.Tensor, rotary_dim: int) -> None:
    """The reference: the torch layer's arithmetic, written back into `query` and `key`."""
    cos, sin = cos_sin_cache[positions.long()].to(query.dtype).chunk(2, dim=-1)  # [T, R/2] each
    cos, sin = cos[:, None, :], sin[:, None, :]
    for x in (query, key):
        x1, x2 = x[..., : rotary_dim // 2], x[..., rotary_dim // 2: rotary_dim]  # [T, H, R/2] each
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        x[..., :rotary_dim] = rotated


def _check(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor,
           rotary_dim: int) -> None:
    assert query.dim() == 3 and key.dim() == 3, (query.shape, key.shape)
    num_tokens, _, head_dim = query.shape
    assert key.shape[0] == num_tokens and key.shape[2] == head_dim, (query.shape, key.shape)
    assert query.dtype == key.dtype and query.is_floating_point(), (query.dtype, key.dtype)
    assert query.stride(2) == 1 and key.stride(2) == 1, (query.stride(), key.stride())
    assert rotary_dim % 2 == 0 and 0 < rotary_dim <= head_dim, (rotary_dim, head_dim)
    assert cos_sin_cache.dim() == 2 and cos_sin_cache.shape[1] == rotary_dim, cos_sin_cache.shape
    assert cos_sin_cache.is_contiguous() and cos_sin_cache.is_floating_point(), cos_sin_cache.stride()
    assert positions.shape == (num_tokens,), (positions.shape, num_tokens)
    assert positions.dtype in (torch.int32, torch.int64), positions.dtype
    assert len({t.device for t in (positions, query, key, cos_sin_cache)}) == 1, "mixed devices"


def _triton_impl(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                 cos_sin_cache: torch.Tensor, rotary_dim: int) -> None:
    """The Triton path (`kernels/elementwise/triton_kernels.py`, imported on first use)."""
    from kernels.elementwise.triton_kernels import rotary_embedding_triton

    rotary_embedding_triton(positions, query, key, cos_sin_cache, rotary_dim)
