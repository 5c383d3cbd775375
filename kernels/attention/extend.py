"""Prefill/extend attention in Triton: causal, variable-length, over a paged cache with a cached prefix.

Layouts (see `kernels/attention/reference.py`): a step is a flat batch of T new tokens from B sequences;
`query [T, Hq, D]` and output `[T, Hq, D]`; sequence b owns rows `query_start_loc[b] ..
query_start_loc[b + 1]`, the last `q_len` of its `seq_lens[b]` tokens. Its context has two parts:

- the prefix, positions `0 .. prefix_len - 1` with `prefix_len = seq_len - q_len`, read from
  `k_cache`/`v_cache [num_blocks, block_size, Hkv, D]` through `block_tables [B, max_blocks]`;
- the new tokens, read from the contiguous `key`/`value [T, Hkv, D]` of this step (the same values
  the step also wrote into the cache), under the causal mask: new token i sees new tokens 0 .. i.

Grid `(Hq, num_m_blocks, B)`: one program per (query head, BLOCK_M query rows, sequence); program
axis 1 runs in reverse so the longest (last) row blocks of a causal sequence start first. Online
softmax in the log2 domain, float32 accumulation, `tl.dot` on the input dtype. Per program three
loops: the prefix (gathered, masked at its end), the new tokens before the row block (no mask), and
the diagonal tiles (causal mask). Tiles entirely above the diagonal are never visited.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.attention.checks import check_paged_inputs

LOG2E = 1.4426950408889634

# (BLOCK_M, BLOCK_N, num_warps, num_stages) by (head_dim, is_fp32); BLOCK_M % BLOCK_N == 0.
_CONFIGS = {
    (64, False): (128, 64, 4, 3),
    (128, False): (128, 64, 8, 3),
    (64, True): (64, 32, 4, 2),
    (128, True): (64, 32, 4, 2),
}


def extend_attention_fwd(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         k_cache: torch.Tensor, v_cache: torch.Tensor, query_start_loc: torch.Tensor,
                         seq_lens: torch.Tensor, block_tables: torch.Tensor, scale: float, out: torch.Tensor,
                         max_query_len: int | None = None,
                         config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Causal attention of `query [T, Hq, D]` over prefix (cache) + new tokens (`key`/`value`) into `out`.

    `max_query_len` (a host int the caller knows, no device sync) sizes the grid; without it the
    grid covers T rows per sequence and the surplus programs exit at once. `config` overrides
    `(BLOCK_M, BLOCK_N, num_warps, num_stages)` (benchmarks and interpreter tests).
    """
    _check(query, key, value, k_cache, v_cache, query_start_loc, seq_lens, block_tables, scale, out)
    num_tokens, num_heads, head_dim = query.shape
    num_seqs = seq_lens.shape[0]
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    is_fp32 = query.dtype == torch.float32
    block_m, block_n, num_warps, num_stages = config or _CONFIGS.get((head_dim, is_fp32), (64, 32, 4, 2))
    assert block_m % block_n == 0 and block_n >= 16 and block_n & (block_n - 1) == 0, (block_m, block_n)
    if max_query_len is None:
        max_query_len = num_tokens
    assert 0 <= max_query_len <= num_tokens, (max_query_len, num_tokens)
    if num_tokens == 0 or num_seqs == 0:
        return out
    grid = (num_heads, triton.cdiv(max_query_len, block_m), num_seqs)
    _extend_kernel[grid](
        query, key, value, k_cache, v_cache, out, query_start_loc, seq_lens, block_tables,
        scale * LOG2E,
        query.stride(0), query.stride(1),
        key.stride(0), key.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=block_n, IS_FP32=is_fp32,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


def _check(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
           v_cache: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
           block_tables: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    check_paged_inputs(query, k_cache, v_cache, block_tables, seq_lens, scale, out)
    assert key.dim() == 3, key.shape
    num_tokens, _, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    assert key.shape == value.shape == (num_tokens, num_kv_heads, head_dim), \
        (key.shape, value.shape, query.shape)
    assert key.stride() == value.stride() and key.stride(-1) == 1, (key.stride(), value.stride())
    assert key.dtype == value.dtype == query.dtype, (key.dtype, value.dtype, query.dtype)
    assert query_start_loc.dtype == torch.int32 and query_start_loc.shape == (seq_lens.shape[0] + 1,) \
        and query_start_loc.is_contiguous(), (query_start_loc.dtype, query_start_loc.shape, seq_lens.shape)
    assert {key.device, value.device, query_start_loc.device} == {query.device}, "mixed devices"
    assert num_tokens * max(query.stride(0), key.stride(0), out.stride(0)) < 2 ** 31, "int32 row offsets"


@triton.jit
def _online_softmax_step(qk, m_i, l_i, acc, v, IS_FP32: tl.constexpr):
    """Fold one tile of log2-domain scores `qk [M, N]` (-inf where masked) and `v [N, D]` in."""
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if IS_FP32:
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _scores(q, k, IS_FP32: tl.constexpr):
    """Raw scores `q [M, D] @ k [N, D]^T` in float32."""
    if IS_FP32:
        qk = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        qk = tl.dot(q, tl.trans(k))
    return qk


# Nothing that changes from step to step may pick a compiled variant (a ~1 s JIT stall each,
# mid-serving): not the block-table width (== 1, % 16), nor the alignment of the scalar-only
# pointers (mixed steps pass slices of seq_lens and block_tables that start at the first prompt).
@triton.jit(do_not_specialize=["stride_bt"],
            do_not_specialize_on_alignment=["query_start_loc_ptr", "seq_lens_ptr", "block_tables_ptr"])
def _extend_kernel(
    q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, out_ptr, query_start_loc_ptr, seq_lens_ptr,
    block_tables_ptr,
    qk_scale,  # softmax scale * log2(e)
    stride_qt, stride_qh,
    stride_kt, stride_kh,  # key and value of the new tokens (same strides)
    stride_cache_block, stride_cache_tok, stride_cache_head,
    stride_bt,
    stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_FP32: tl.constexpr,
):
    head = tl.program_id(0)
    m_block = tl.num_programs(1) - 1 - tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    m_start = m_block * BLOCK_M
    if m_start >= q_len:
        return
    prefix_len = tl.load(seq_lens_ptr + seq) - q_len
    kv_head = head // GROUP

    offs_m = m_start + tl.arange(0, BLOCK_M)  # query rows, relative to the sequence's new tokens
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < q_len
    q_rows = q_start + offs_m
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=mask_m[:, None], other=0.0)  # [BLOCK_M, D]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Prefix from the paged cache: visible to every row, masked only past prefix_len.
    table = block_tables_ptr + seq * stride_bt
    cache_head = kv_head * stride_cache_head
    for n_start in range(0, prefix_len, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < prefix_len
        block_ids = tl.load(table + offs_n // BLOCK_SIZE, mask=mask_n, other=0).to(tl.int64)
        rows = block_ids * stride_cache_block + (offs_n % BLOCK_SIZE) * stride_cache_tok + cache_head
        k = tl.load(k_cache_ptr + rows[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        qk = tl.where(mask_n[None, :], _scores(q, k, IS_FP32) * qk_scale, float("-inf"))
        v = tl.load(v_cache_ptr + rows[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        m_i, l_i, acc = _online_softmax_step(qk, m_i, l_i, acc, v, IS_FP32)

    # New tokens before this row block: visible to every row, no mask (m_start < q_len).
    kv_base = kv_head * stride_kh
    for n_start in range(0, m_start, BLOCK_N):
        kv_rows = (q_start + n_start + tl.arange(0, BLOCK_N)) * stride_kt + kv_base
        k = tl.load(k_ptr + kv_rows[:, None] + offs_d[None, :])
        qk = _scores(q, k, IS_FP32) * qk_scale
        v = tl.load(v_ptr + kv_rows[:, None] + offs_d[None, :])
        m_i, l_i, acc = _online_softmax_step(qk, m_i, l_i, acc, v, IS_FP32)

    # Diagonal tiles: new token j is visible to row i when j <= i (and j < q_len).
    diag_end = tl.minimum(m_start + BLOCK_M, q_len)
    for n_start in range(m_start, diag_end, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < q_len
        kv_rows = (q_start + offs_n) * stride_kt + kv_base
        k = tl.load(k_ptr + kv_rows[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        visible = (offs_n[None, :] <= offs_m[:, None]) & mask_n[None, :]
        qk = tl.where(visible, _scores(q, k, IS_FP32) * qk_scale, float("-inf"))
        v = tl.load(v_ptr + kv_rows[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        m_i, l_i, acc = _online_softmax_step(qk, m_i, l_i, acc, v, IS_FP32)

    result = acc / l_i[:, None]  # l_i > 0: every row sees at least key m_start
    out_ptrs = out_ptr + q_rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :]
    tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=mask_m[:, None])
