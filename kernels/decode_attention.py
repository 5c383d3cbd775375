"""Paged-KV decode attention in Triton: one new query token per sequence, split over the context.

Layouts (see `kernels/attention_ref.py`): query and output `[B, Hq, D]`; `k_cache`, `v_cache`
`[num_blocks, block_size, Hkv, D]`; `block_tables [B, max_blocks]` int32; `seq_lens [B]` int32 is
the context length including the new token, whose K/V are already in the cache.

Flash-decoding in two launches, both free of host synchronisation and of value-dependent shapes, so
the pair can be captured in a CUDA graph:

- stage 1, grid `(B, Hkv, num_splits)`: every program takes all `G = Hq // Hkv` query heads of one
  KV head (GQA: each K/V tile is read once for the whole group, padded to `BLOCK_H >= 16` rows for
  `tl.dot`) and one split of its sequence. Sequence b cuts its own `seq_lens[b]` into `num_splits`
  pieces of `split_len = roundup(cdiv(seq_len, num_splits), BLOCK_N)` tokens, so a short sequence
  leaves its last splits empty; those programs return at once and write nothing. A non-empty split
  writes its normalised partial output and its log2-sum-exp to the workspace.
- stage 2, grid `(B, Hq)`: recomputes the same `split_len`, reads only the non-empty splits and
  merges them. With `num_splits == 1`, stage 1 writes the output itself and stage 2 is skipped.

A sequence with `seq_len == 0` (a padded CUDA-graph slot) gets a zero output.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
MIN_SPLIT_TOKENS = 128  # a split shorter than this costs more in set-up and merge than it hides

# (BLOCK_N, num_warps, num_stages) by (head_dim, is_fp32); BLOCK_N tokens span several cache blocks.
_CONFIGS = {
    (64, False): (64, 4, 2),
    (128, False): (64, 4, 2),
    (64, True): (32, 4, 2),
    (128, True): (32, 4, 2),
}


def choose_num_splits(batch_size: int, num_kv_heads: int, max_seq_len: int, num_sms: int) -> int:
    """Splits per sequence so that stage 1 has about 8 programs per SM, each >= 128 tokens long.

    `max_seq_len` may be an upper bound (max_model_len under CUDA graphs): splits that a shorter
    sequence leaves empty cost one early-exiting program each.
    """
    target = -(-8 * num_sms // max(batch_size * num_kv_heads, 1))
    most = max(1, max_seq_len // MIN_SPLIT_TOKENS)
    return max(1, min(target, most, 64))


def alloc_workspace(batch_size: int, num_heads: int, head_dim: int, num_splits: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1 partials: outputs `[B, Hq, S, D]` and log2-sum-exps `[B, Hq, S]`, both float32.

    One workspace made for the largest batch serves every smaller one (rows `[:B]` are used).
    """
    mid_out = torch.empty(batch_size, num_heads, num_splits, head_dim, dtype=torch.float32, device=device)
    mid_lse = torch.empty(batch_size, num_heads, num_splits, dtype=torch.float32, device=device)
    return mid_out, mid_lse


_WORKSPACES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _cached_workspace(batch_size: int, num_heads: int, head_dim: int, num_splits: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept for the life of the process: a CUDA graph may have captured its address."""
    key = (device, batch_size, num_heads, head_dim, num_splits)
    if key not in _WORKSPACES:
        _WORKSPACES[key] = alloc_workspace(batch_size, num_heads, head_dim, num_splits, device)
    return _WORKSPACES[key]


def decode_attention_fwd(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float, num_splits: int,
                         out: torch.Tensor,
                         workspace: tuple[torch.Tensor, torch.Tensor] | None = None,
                         config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Attention of `query [B, Hq, D]` over each sequence's cached K/V, written into `out [B, Hq, D]`.

    `workspace` is `alloc_workspace(>= B, Hq, D, num_splits)`; without it one is cached per shape.
    `config` overrides `(BLOCK_N, num_warps, num_stages)` (benchmarks and interpreter tests).
    """
    batch_size, num_heads, head_dim = query.shape
    _check(query, k_cache, v_cache, block_tables, seq_lens, scale, num_splits, out)
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = num_heads // num_kv_heads
    is_fp32 = query.dtype == torch.float32
    block_n, num_warps, num_stages = config or _CONFIGS.get((head_dim, is_fp32), (32, 4, 2))
    assert block_n >= 16 and block_n & (block_n - 1) == 0, block_n
    if batch_size == 0:
        return out
    if num_splits > 1:
        if workspace is None:
            workspace = _cached_workspace(batch_size, num_heads, head_dim, num_splits, query.device)
        mid_out, mid_lse = workspace
        assert mid_out.shape[0] >= batch_size and mid_out.shape[1:] == (num_heads, num_splits, head_dim), \
            (mid_out.shape, query.shape, num_splits)
        assert mid_lse.shape[0] >= batch_size and mid_lse.shape[1:] == (num_heads, num_splits), mid_lse.shape
        assert mid_out.dtype == mid_lse.dtype == torch.float32 and mid_out.is_contiguous() \
            and mid_lse.is_contiguous(), (mid_out.dtype, mid_lse.dtype)
    else:
        mid_out, mid_lse = out, seq_lens  # unused by the kernel when NUM_SPLITS == 1
    _decode_stage1_kernel[(batch_size, num_kv_heads, num_splits)](
        query, k_cache, v_cache, block_tables, seq_lens, out, mid_out, mid_lse,
        scale * LOG2E,
        query.stride(0), query.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size, BLOCK_H=max(16, triton.next_power_of_2(group)),
        BLOCK_N=block_n, NUM_SPLITS=num_splits, IS_FP32=is_fp32,
        num_warps=num_warps, num_stages=num_stages,
    )
    if num_splits > 1:
        _decode_stage2_kernel[(batch_size, num_heads)](
            mid_out, mid_lse, out, seq_lens,
            out.stride(0), out.stride(1),
            NUM_HEADS=num_heads, HEAD_DIM=head_dim, NUM_SPLITS=num_splits,
            BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_N=block_n,
            num_warps=4, num_stages=1,
        )
    return out


def _check(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
           seq_lens: torch.Tensor, scale: float, num_splits: int, out: torch.Tensor) -> None:
    assert query.dim() == 3 and k_cache.dim() == 4, (query.shape, k_cache.shape)
    batch_size, num_heads, head_dim = query.shape
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
    assert block_tables.dtype == torch.int32 and block_tables.dim() == 2, \
        (block_tables.dtype, block_tables.shape)
    assert block_tables.shape[0] >= batch_size and block_tables.stride(1) == 1, \
        (block_tables.shape, block_tables.stride())
    assert seq_lens.dtype == torch.int32 and seq_lens.shape == (batch_size,) and seq_lens.is_contiguous(), \
        (seq_lens.dtype, seq_lens.shape)
    devices = {t.device for t in (query, k_cache, v_cache, block_tables, seq_lens, out)}
    assert len(devices) == 1, devices
    assert isinstance(num_splits, int) and 1 <= num_splits <= 1024, num_splits
    assert scale > 0 and math.isfinite(scale), scale


@triton.jit
def _decode_stage1_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr, mid_out_ptr, mid_lse_ptr,
    qk_scale,  # softmax scale * log2(e): scores live in the log2 domain
    stride_qb, stride_qh,
    stride_cache_block, stride_cache_tok, stride_cache_head,
    stride_bt,
    stride_ob, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, IS_FP32: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    if NUM_SPLITS > 1:  # noqa: SIM102 (a constexpr test; `and` would mix it with a tensor)
        if start >= end:
            return

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_DIM)
    head_mask = offs_h < GROUP
    heads = kv_head * GROUP + offs_h  # [BLOCK_H]
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=head_mask[:, None], other=0.0)  # [BLOCK_H, D]

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], dtype=tl.float32)
    table = block_tables_ptr + seq * stride_bt
    head_off = kv_head * stride_cache_head
    for tile_start in range(start, end, BLOCK_N):
        offs_n = tile_start + tl.arange(0, BLOCK_N)  # token positions of this tile
        mask_n = offs_n < end
        block_ids = tl.load(table + offs_n // BLOCK_SIZE, mask=mask_n, other=0).to(tl.int64)
        rows = block_ids * stride_cache_block + (offs_n % BLOCK_SIZE) * stride_cache_tok + head_off
        k = tl.load(k_cache_ptr + rows[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        if IS_FP32:
            qk = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(k))
        qk = tl.where(mask_n[None, :], qk * qk_scale, float("-inf"))  # [BLOCK_H, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(qk, 1))  # finite: every tile has a valid token
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + rows[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        if IS_FP32:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # l_i == 0 only for an empty sequence
    result = acc / l_safe[:, None]
    if NUM_SPLITS == 1:
        out_ptrs = out_ptr + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=head_mask[:, None])
    else:
        num_heads = tl.num_programs(1) * GROUP
        row = (seq * num_heads + heads) * NUM_SPLITS + split  # [BLOCK_H] into [B, Hq, S]
        tl.store(mid_out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], result, mask=head_mask[:, None])
        tl.store(mid_lse_ptr + row, m_i + tl.math.log2(l_safe), mask=head_mask)


@triton.jit
def _decode_stage2_kernel(
    mid_out_ptr, mid_lse_ptr, out_ptr, seq_lens_ptr,
    stride_ob, stride_oh,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    split_len = tl.maximum(tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N, BLOCK_N)
    num_active = tl.cdiv(seq_len, split_len)  # stage 1 wrote splits 0 .. num_active - 1 only

    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_s = offs_s < num_active
    row = (seq * NUM_HEADS + head) * NUM_SPLITS + offs_s  # [BLOCK_S]
    lse = tl.load(mid_lse_ptr + row, mask=mask_s, other=float("-inf"))
    lse_max = tl.max(lse, 0)
    lse_max = tl.where(lse_max > float("-inf"), lse_max, 0.0)
    weights = tl.math.exp2(lse - lse_max)  # [BLOCK_S], 0 for empty splits
    partial = tl.load(mid_out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], mask=mask_s[:, None],
                      other=0.0)  # [BLOCK_S, D]
    total = tl.sum(weights, 0)
    result = tl.sum(partial * weights[:, None], 0) / tl.where(total > 0.0, total, 1.0)  # [D]
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + offs_d, result.to(out_ptr.dtype.element_ty))
