"""Store one step's K and V into the paged KV cache, both in one Triton launch.

Layouts: key and value `[T, Hkv, D]` (each token's `Hkv * D` channels contiguous; the token stride
is free, so the K/V views of a packed qkv projection need no copy); caches
`[num_blocks, block_size, Hkv, D]`, contiguous; `slot_mapping [T]` int32/int64 with
`slot = block_id * block_size + offset`. A negative slot skips its token (CUDA-graph padding).
The Triton path reads no tensor on the host, so it can be captured in a CUDA graph.
"""
from __future__ import annotations

import torch

from kernels.attention import reference as attention_ref
from kernels.runtime.backend import use_triton


def write_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Copy `key`/`value [T, Hkv, D]` into `k_cache`/`v_cache` at `slot_mapping [T]`; slot < 0 skips."""
    _check(key, value, k_cache, v_cache, slot_mapping)
    if use_triton(key, value, k_cache, v_cache, slot_mapping):
        _triton_impl(key, value, k_cache, v_cache, slot_mapping)
    else:
        _torch_impl(key, value, k_cache, v_cache, slot_mapping)


def _torch_impl(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                slot_mapping: torch.Tensor) -> None:
    """The reference: drop negative slots (a host sync), then `attention_ref.write_kv`."""
    keep = slot_mapping >= 0
    attention_ref.write_kv(key[keep], value[keep], k_cache, v_cache, slot_mapping[keep])


def _check(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           slot_mapping: torch.Tensor) -> None:
    assert key.dim() == 3 and value.shape == key.shape, (key.shape, value.shape)
    num_tokens, num_kv_heads, head_dim = key.shape
    assert k_cache.dim() == 4 and v_cache.shape == k_cache.shape, (k_cache.shape, v_cache.shape)
    assert k_cache.shape[2:] == (num_kv_heads, head_dim), (k_cache.shape, key.shape)
    assert key.dtype == value.dtype == k_cache.dtype == v_cache.dtype, (key.dtype, value.dtype, k_cache.dtype)
    assert k_cache.is_contiguous() and v_cache.is_contiguous(), (k_cache.stride(), v_cache.stride())
    for t in (key, value):
        assert t.stride(2) == 1 and t.stride(1) == head_dim, ("token rows must be contiguous", t.stride())
    assert slot_mapping.shape == (num_tokens,), (slot_mapping.shape, num_tokens)
    assert slot_mapping.dtype in (torch.int32, torch.int64), slot_mapping.dtype
    assert len({t.device for t in (key, value, k_cache, v_cache, slot_mapping)}) == 1, "mixed devices"


def _triton_impl(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    """The Triton path (`kernels/elementwise/triton_kernels.py`, imported on first use)."""
    from kernels.elementwise.triton_kernels import write_kv_triton

    write_kv_triton(key, value, k_cache, v_cache, slot_mapping)
