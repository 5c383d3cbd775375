"""Rotary embedding of query and key, then the store of the rotated key and the value into the paged
KV cache, in ONE Triton launch (a decode step's rotary and cache write, fused): Triton on CUDA, pure
torch elsewhere.

Layouts, numerics and position rules are those of `kernels.elementwise.rotary`; cache layout and slot rules those
of `kernels.elementwise.kv_write`. Together: query `[T, Hq, D]` (token and head strides free), key and value
`[T, Hkv, D]` (token stride free, each token's `Hkv * D` channels contiguous), so q/k/v may be the
views of a packed qkv projection; query and key are rotated IN PLACE. A negative slot skips that
token's cache write, but its query and key are still rotated. Results equal `rotary_embedding`
followed by `write_kv` bit for bit. The Triton path reads no tensor on the host (CUDA-graph safe).
"""
from __future__ import annotations

import torch

from kernels.elementwise import kv_write, rotary
from kernels.runtime.backend import use_triton


def rotary_and_write_kv(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                        cos_sin_cache: torch.Tensor, rotary_dim: int) -> None:
    """Rotate `query`/`key` in place at `positions [T]`, then store key/value at `slot_mapping [T]`."""
    rotary._check(positions, query, key, cos_sin_cache, rotary_dim)
    kv_write._check(key, value, k_cache, v_cache, slot_mapping)
    if use_triton(positions, query, key, value, k_cache, v_cache, slot_mapping, cos_sin_cache):
        _triton_impl(positions, query, key, value, k_cache, v_cache, slot_mapping, cos_sin_cache, rotary_dim)
    else:
        _torch_impl(positions, query, key, value, k_cache, v_cache, slot_mapping, cos_sin_cache, rotary_dim)


def _torch_impl(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                cos_sin_cache: torch.Tensor, rotary_dim: int) -> None:
    """The reference: the two unfused references, one after the other."""
    rotary._torch_impl(positions, query, key, cos_sin_cache, rotary_dim)
    kv_write._torch_impl(key, value, k_cache, v_cache, slot_mapping)


def _triton_impl(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                 cos_sin_cache: torch.Tensor, rotary_dim: int) -> None:
    """The Triton path (`kernels/elementwise/triton_kernels.py`, imported on first use)."""
    from kernels.elementwise.triton_kernels import rotary_and_write_kv_triton

    rotary_and_write_kv_triton(positions, query, key, value, k_cache, v_cache, slot_mapping, cos_sin_cache,
                               rotary_dim)
