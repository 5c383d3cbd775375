"""Attention entry points for the worker: Triton on CUDA, the torch reference on the CPU.

`SLUICE_ATTENTION_BACKEND=torch` (or `SLUICE_KERNELS=torch`, see `kernels/runtime/backend.py`) forces the
reference on CUDA too; `SLUICE_ATTENTION_BACKEND=triton` forces Triton, which on CPU tensors needs
`TRITON_INTERPRET=1` set before the Triton modules are imported. Those modules are imported on
first use, so a CPU-only process never compiles them.

Shapes as in `kernels/attention/reference.py`; both functions write into `out` when given one.
"""
from __future__ import annotations

import os

import torch

from kernels.attention import reference as attention_ref
from kernels.attention.new_tokens import NewTokens
from kernels.runtime.backend import use_triton


def _triton_backend(*tensors: torch.Tensor) -> bool:
    choice = os.environ.get("SLUICE_ATTENTION_BACKEND", "auto")
    assert choice in ("auto", "torch", "triton"), f"SLUICE_ATTENTION_BACKEND={choice!r}"
    if choice == "triton":
        return True
    return choice == "auto" and use_triton(*tensors)


def choose_num_splits(batch_size: int, num_kv_heads: int, max_seq_len: int, num_sms: int) -> int:
    """Decode context splits for a launch (fix it per CUDA graph; see `decode_attention`)."""
    from kernels.attention.decode import choose_num_splits as choose

    return choose(batch_size, num_kv_heads, max_seq_len, num_sms)


def warm_up(num_heads: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype,
            device: torch.device) -> None:
    """Compile now every decode-kernel variant that serving can launch (none on the torch path)."""
    probe = torch.empty(0, device=device)
    if _triton_backend(probe) and device.type == "cuda":
        from kernels.attention.decode import warm_up as warm_up_decode

        warm_up_decode(num_heads, num_kv_heads, head_dim, block_size, dtype, device)


def decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float, num_splits: int,
                     out: torch.Tensor | None = None,
                     workspace: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                     rotary: NewTokens | None = None) -> torch.Tensor:
    """One new token per sequence: `query [B, Hq, D]` -> `[B, Hq, D]`.

    With `rotary` (`NewTokens`), query and the new key are rotated and
    the new K/V stored in the cache first, all inside the attention launch on the Triton path
    (the torch path runs `rotary_and_write_kv` on copies first); `query` is left unrotated.

    `seq_lens [B]` int32 includes the new token (already in the cache); `block_tables [B, max_blocks]`
    int32. `num_splits` is a host int fixed by the caller (`choose_num_splits`); `workspace` is
    `kernels.attention.decode.alloc_workspace(max_B, Hq, Hkv, D, num_splits)` or None (cached per
    shape); launches that share one must be ordered on one stream.
    The Triton path never synchronises with the host and is safe to capture in a CUDA graph.
    """
    if out is None:
        out = torch.empty_like(query)
    if _triton_backend(query, k_cache, v_cache, block_tables, seq_lens):
        from kernels.attention.decode import decode_attention_fwd

        return decode_attention_fwd(query, k_cache, v_cache, block_tables, seq_lens, scale, num_splits,
                                    out, workspace, rotary=rotary)
    if rotary is not None:
        from kernels.elementwise import rotary_kv

        query, key = query.clone(), rotary.key.clone()
        rotary_kv._torch_impl(rotary.positions, query, key, rotary.value, k_cache, v_cache, rotary.slot_mapping,
                              rotary.cos_sin_cache, rotary.rotary_dim)
    batch_size = query.shape[0]
    query_start_loc = torch.arange(batch_size + 1, dtype=torch.int32, device=query.device)
    result = attention_ref.paged_attention(query, k_cache, v_cache, query_start_loc, seq_lens,
                                           block_tables[:batch_size], scale)
    return out.copy_(result)


def extend_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                     block_tables: torch.Tensor, scale: float, max_query_len: int | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal varlen attention of the step's `query [T, Hq, D]` -> `[T, Hq, D]`, any mix of lengths.

    `key`/`value [T, Hkv, D]` are this step's new K/V, already written to the cache as well; the
    prefix (`seq_lens[b] - q_len_b` tokens) is read from the cache through `block_tables`.
    `max_query_len` (host int, longest new-token run) only sizes the grid; None means T.
    """
    if out is None:
        out = torch.empty_like(query)
    if _triton_backend(query, key, value, k_cache, v_cache, query_start_loc, seq_lens, block_tables):
        from kernels.attention.extend import extend_attention_fwd

        return extend_attention_fwd(query, key, value, k_cache, v_cache, query_start_loc, seq_lens,
                                    block_tables, scale, out, max_query_len)
    result = attention_ref.paged_attention(query, k_cache, v_cache, query_start_loc, seq_lens,
                                           block_tables[:seq_lens.shape[0]], scale)
    return out.copy_(result)
