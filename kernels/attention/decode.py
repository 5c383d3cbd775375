"""Paged-KV decode attention in Triton: one new query token per sequence, split over the context.

Layouts (see `kernels/attention/reference.py`): query and output `[B, Hq, D]`; `k_cache`, `v_cache`
`[num_blocks, block_size, Hkv, D]`; `block_tables [B, max_blocks]` int32; `seq_lens [B]` int32 is
the context length including the new token, whose K/V are already in the cache.

Flash-decoding in one launch, free of host synchronisation and of value-dependent shapes, so it can
be captured in a CUDA graph. Grid `(B, Hkv, num_splits)`: every program takes all `G = Hq // Hkv`
query heads of one KV head (GQA: each K/V tile is read once for the whole group, padded to
`BLOCK_H >= 16` rows for `tl.dot`) and one split of its sequence. Sequence b cuts its own
`seq_lens[b]` into `num_splits` pieces of `split_len = roundup(cdiv(seq_len, num_splits), BLOCK_N)`
tokens, so a short sequence uses only its first `num_active = cdiv(seq_len, split_len)` splits; the
programs of the other splits return at once and touch nothing.

- `num_splits == 1`, or `num_active == 1`: the one non-empty program writes the output itself.
- otherwise each non-empty program writes its normalised partial output and log2-sum-exp to the
  workspace, then increments the int32 counter of its `(sequence, KV head)` with an acq_rel atomic.
  The program that reads `num_active - 1` back is the last: it merges the `num_active` partials of
  its G heads (weights `2^(lse - max lse)`), writes the output and resets the counter to 0, so
  every launch, and every CUDA-graph replay, starts from zeroed counters. No program waits on
  another, so the scheme needs no co-residency of programs; see `_merge_splits` for the ordering.

With `ROTARY` (a decode step's launch, given `NewTokens`) the kernel also does what
`rotary_and_write_kv` would have done before it: every program rotates its query heads as it loads
them (the channel and its rotation partner, cos/sin at the sequence's position, each product
rounded as that kernel rounds it), and the program whose split holds the last position rotates
the new key of its KV head and stores it and the value at the token's slot. That program attends
to the new token from registers in its first tile, or reads it back after a barrier in a later
tile. Only that program reads the last position, so no other program waits for the write, and a
decode step has one launch per layer fewer.

Under programmatic dependent launch (`kernels/runtime/pdl.py`) a program loads its block ids and its first
K/V tile before waiting for the kernels ahead of it: every position but the newest was written by
an earlier step. The newest token's row (`seq_len - 1`, written by this step's KV write) is loaded
after the wait. The later tiles are loaded in the loop, which Triton software-pipelines.

A sequence with `seq_len == 0` (a padded CUDA-graph slot) gets a zero output, written by split 0.
The workspace (partials and counters) belongs to one launch at a time: two launches that share it
must be ordered on one stream, as layers of a model are.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.attention.checks import check_paged_inputs
from kernels.attention.extend import _online_softmax_step, _scores
from kernels.attention.new_tokens import NewTokens
from kernels.elementwise.triton_kernels import _load_cos_sin, rotated
from kernels.runtime import pdl

LOG2E = 1.4426950408889634
MIN_SPLIT_TOKENS = 128  # a split shorter than this costs more in set-up and merge than it hides

# (BLOCK_N, num_warps, num_stages) by (head_dim, is_fp32); BLOCK_N tokens span several cache blocks.
_CONFIGS = {
    (64, False): (64, 4, 2),
    (128, False): (64, 4, 2),
    (64, True): (32, 4, 2),
    (128, True): (32, 4, 2),
}


MAX_SPLITS = 64


def warm_up(num_heads: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype,
            device: torch.device) -> None:
    """Compile every variant of the kernel that serving can launch (one per power-of-two bound
    on the split count, 1 .. MAX_SPLITS, with and without the rotary embedding and KV write of
    `NewTokens`), so that no step waits for the JIT."""
    query = torch.zeros(1, num_heads, head_dim, dtype=dtype, device=device)
    cache = torch.zeros(1, block_size, num_kv_heads, head_dim, dtype=dtype, device=device)
    block_tables = torch.zeros(1, 1, dtype=torch.int32, device=device)
    seq_lens = torch.ones(1, dtype=torch.int32, device=device)
    key = torch.zeros(1, num_kv_heads, head_dim, dtype=dtype, device=device)
    index = torch.zeros(1, dtype=torch.int64, device=device)
    new = NewTokens(key, key, index, index - 1, torch.zeros(1, head_dim, device=device), head_dim)
    num_splits = 1
    while num_splits <= MAX_SPLITS:
        for rotary in (None, new):
            decode_attention_fwd(query, cache, cache, block_tables, seq_lens, 1.0, num_splits,
                                 torch.empty_like(query), rotary=rotary)
        num_splits *= 2


def choose_num_splits(batch_size: int, num_kv_heads: int, max_seq_len: int, num_sms: int) -> int:
    """Splits per sequence so that stage 1 has about 8 programs per SM, each >= 128 tokens long.

    `max_seq_len` may be an upper bound (max_model_len under CUDA graphs): splits that a shorter
    sequence leaves empty cost one early-exiting program each.
    """
    target = -(-8 * num_sms // max(batch_size * num_kv_heads, 1))
    most = max(1, max_seq_len // MIN_SPLIT_TOKENS)
    return max(1, min(target, most, MAX_SPLITS))


def alloc_workspace(batch_size: int, num_heads: int, num_kv_heads: int, head_dim: int, num_splits: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partials of the splits and their merge counters.

    Returns outputs `[B, Hq, S, D]` and log2-sum-exps `[B, Hq, S]`, both float32, and per
    `(sequence, KV head)` counts of finished splits `[B, Hkv]` int32, zero between launches.
    One workspace made for the largest batch serves every smaller one (rows `[:B]` are used).
    """
    mid_out = torch.empty(batch_size, num_heads, num_splits, head_dim, dtype=torch.float32, device=device)
    mid_lse = torch.empty(batch_size, num_heads, num_splits, dtype=torch.float32, device=device)
    counters = torch.zeros(batch_size, num_kv_heads, dtype=torch.int32, device=device)
    return mid_out, mid_lse, counters


_WORKSPACES: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
_RETIRED: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # outgrown, maybe still in a graph


def _cached_workspace(batch_size: int, num_heads: int, num_kv_heads: int, head_dim: int, num_splits: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One workspace per shape, grown to the next power of two when a larger batch comes (eager
    steps see every batch size; one allocation per size would pile up). Never freed: a CUDA
    graph may have captured the address of an outgrown one."""
    key = (device, num_heads, num_kv_heads, head_dim, num_splits)
    cached = _WORKSPACES.get(key)
    if cached is None or cached[0].shape[0] < batch_size:
        if cached is not None:
            _RETIRED.append(cached)
        size = 1 << max(batch_size - 1, 0).bit_length()
        _WORKSPACES[key] = alloc_workspace(size, num_heads, num_kv_heads, head_dim, num_splits, device)
    return _WORKSPACES[key]


def decode_attention_fwd(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float, num_splits: int,
                         out: torch.Tensor,
                         workspace: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                         config: tuple[int, int, int] | None = None,
                         rotary: NewTokens | None = None) -> torch.Tensor:
    """Attention of `query [B, Hq, D]` over each sequence's cached K/V, written into `out [B, Hq, D]`.

    `workspace` is `alloc_workspace(>= B, Hq, Hkv, D, num_splits)` with zeroed counters (every
    launch leaves them zeroed); without it one is cached per shape.
    `config` overrides `(BLOCK_N, num_warps, num_stages)` (benchmarks and interpreter tests).
    With `rotary`, the query is not yet rotated and the new token's K/V are not yet in the cache:
    the kernel rotates the query as it loads it, and the program of each (sequence, KV head)
    whose split holds the last position rotates the new key and stores it and the value at the
    token's slot (see `NewTokens`); `query` itself is left as it was.
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
            workspace = _cached_workspace(batch_size, num_heads, num_kv_heads, head_dim, num_splits, query.device)
        mid_out, mid_lse, counters = workspace
        assert mid_out.shape[0] >= batch_size and mid_out.shape[1:] == (num_heads, num_splits, head_dim), \
            (mid_out.shape, query.shape, num_splits)
        assert mid_lse.shape[0] >= batch_size and mid_lse.shape[1:] == (num_heads, num_splits), mid_lse.shape
        assert mid_out.dtype == mid_lse.dtype == torch.float32 and mid_out.is_contiguous() \
            and mid_lse.is_contiguous(), (mid_out.dtype, mid_lse.dtype)
        assert counters.shape[0] >= batch_size and counters.shape[1:] == (num_kv_heads,) \
            and counters.dtype == torch.int32 and counters.is_contiguous(), (counters.shape, counters.dtype)
        assert {mid_out.device, mid_lse.device, counters.device} == {query.device}, \
            (mid_out.device, mid_lse.device, counters.device, query.device)
    else:
        mid_out, mid_lse, counters = out, seq_lens, seq_lens  # unused by the kernel with one split
    if rotary is not None:
        rotary.check(query, k_cache)
        new = rotary
    else:  # unused by the kernel without ROTARY
        new = NewTokens(query[:, 0], query[:, 0], seq_lens, seq_lens, seq_lens, 0)
    _decode_kernel[(batch_size, num_kv_heads, num_splits)](
        query, k_cache, v_cache, block_tables, seq_lens, out, mid_out, mid_lse, counters,
        new.key, new.value, new.positions, new.slot_mapping, new.cos_sin_cache, new.rotary_dim // 2,
        scale * LOG2E, num_splits,
        query.stride(0), query.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        new.key.stride(0), new.value.stride(0),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size, BLOCK_H=max(16, triton.next_power_of_2(group)),
        BLOCK_N=block_n, SPLIT=num_splits > 1, BLOCK_S=triton.next_power_of_2(num_splits), IS_FP32=is_fp32,
        ROTARY=rotary is not None,
        num_warps=num_warps, num_stages=num_stages, **pdl.launch_options(query.device),
        # With FP fusion the compiler turns the rotation's rounded product and sum into one bf16 FMA
        # (`fma.rn.bf16`), which rounds once where `rotary_and_write_kv` and torch round twice.
        enable_fp_fusion=rotary is None,
    )
    return out


def _check(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
           seq_lens: torch.Tensor, scale: float, num_splits: int, out: torch.Tensor) -> None:
    check_paged_inputs(query, k_cache, v_cache, block_tables, seq_lens, scale, out)
    assert seq_lens.shape == (query.shape[0],), (seq_lens.shape, query.shape)  # one new token per sequence
    assert isinstance(num_splits, int) and 1 <= num_splits <= MAX_SPLITS, num_splits


# What changes from step to step must not pick a compiled variant, or serving would JIT-compile
# new ones mid-run (a ~1 s stall each): the block-table width and the split count are not
# specialised on (== 1, % 16), nor is the alignment of the scalar-only pointers (a mixed step
# passes slices of them; with one split, mid_lse and counters are seq_lens). The variants left are
# SPLIT x BLOCK_S, all compiled by `warm_up`.
@triton.jit(do_not_specialize=["stride_bt", "num_splits", "half_rotary", "stride_kt", "stride_vt"],
            do_not_specialize_on_alignment=["block_tables_ptr", "seq_lens_ptr", "mid_lse_ptr", "counters_ptr",
                                            "key_ptr", "value_ptr", "positions_ptr", "slot_mapping_ptr",
                                            "cos_sin_ptr"])
def _decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr, mid_out_ptr, mid_lse_ptr,
    counters_ptr,
    key_ptr, value_ptr, positions_ptr, slot_mapping_ptr, cos_sin_ptr, half_rotary,  # ROTARY: `NewTokens`
    qk_scale,  # softmax scale * log2(e): scores live in the log2 domain
    num_splits,  # splits per sequence (the grid's third dimension), <= BLOCK_S
    stride_qb, stride_qh,
    stride_cache_block, stride_cache_tok, stride_cache_head,
    stride_bt,
    stride_ob, stride_oh,
    stride_kt, stride_vt,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, BLOCK_S: tl.constexpr, IS_FP32: tl.constexpr,
    ROTARY: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl.allow_next(USE_PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)  # step metadata: readable before the wait (kernels/runtime/pdl.py)
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N  # 0 only when seq_len == 0
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    offs_d = tl.arange(0, HEAD_DIM)
    table = block_tables_ptr + seq * stride_bt
    head_off = kv_head * stride_cache_head
    # The first tile, before the wait: its block ids are step metadata, and the K/V of every position
    # but the newest (seq_len - 1) were written by earlier steps. The newest is the previous
    # kernel's write; it is loaded after the wait.
    offs_n = start + tl.arange(0, BLOCK_N)
    tile_rows = _tile_rows(table, offs_n, offs_n < end, head_off, stride_cache_block, stride_cache_tok, BLOCK_SIZE)
    written = (offs_n < tl.minimum(end, seq_len - 1))[:, None]
    k = tl.load(k_cache_ptr + tile_rows[:, None] + offs_d[None, :], mask=written, other=0.0)
    v = tl.load(v_cache_ptr + tile_rows[:, None] + offs_d[None, :], mask=written, other=0.0)
    if ROTARY:  # metadata and the cos/sin table: readable before the wait
        partner, cos, sin_signed = _rotation(positions_ptr, cos_sin_ptr, seq, half_rotary, offs_d,
                                             q_ptr.dtype.element_ty)
        slot = tl.load(slot_mapping_ptr + seq)
    pdl.wait_previous(USE_PDL)  # q and the new token's K/V come from the kernels before

    offs_h = tl.arange(0, BLOCK_H)
    head_mask = offs_h < GROUP
    heads = kv_head * GROUP + offs_h  # [BLOCK_H]
    out_ptrs = out_ptr + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]  # [BLOCK_H, D]
    if SPLIT:  # noqa: SIM102 (a constexpr test; `and` would mix it with a tensor)
        if start >= end:  # an empty split; split 0 is empty only when seq_len == 0
            if split == 0:
                tl.store(out_ptrs, tl.zeros([BLOCK_H, HEAD_DIM], dtype=out_ptr.dtype.element_ty),
                         mask=head_mask[:, None])
            return

    q_rows = q_ptr + seq * stride_qb + heads[:, None] * stride_qh  # [BLOCK_H, 1]
    q = tl.load(q_rows + offs_d[None, :], mask=head_mask[:, None], other=0.0)  # [BLOCK_H, D]
    newest = ((offs_n == seq_len - 1) & (offs_n < end))[:, None]  # in the first tile or nowhere
    if ROTARY:
        q = _rotate(q, tl.load(q_rows + partner[None, :], mask=head_mask[:, None], other=0.0), cos, sin_signed,
                    half_rotary, offs_d)
        if end == seq_len:  # this split holds the new token: rotate its key, store it and the value
            kv_off = seq * stride_kt + kv_head * HEAD_DIM
            k_new = _rotate(tl.load(key_ptr + kv_off + offs_d), tl.load(key_ptr + kv_off + partner), cos,
                            sin_signed, half_rotary, offs_d)
            v_new = tl.load(value_ptr + seq * stride_vt + kv_head * HEAD_DIM + offs_d)
            row = (slot * tl.num_programs(1) + kv_head) * HEAD_DIM  # the cache is contiguous
            stored = offs_d < tl.where(slot >= 0, HEAD_DIM, 0)  # slot < 0: a padding row, nothing stored
            tl.store(k_cache_ptr + row + offs_d, k_new, mask=stored)
            tl.store(v_cache_ptr + row + offs_d, v_new, mask=stored)
            tl.debug_barrier()  # every thread's stores before any thread's loads of that row (a later tile)
            k = tl.where(newest, k_new[None, :], k)  # in the first tile: from registers
            v = tl.where(newest, v_new[None, :], v)
    else:  # the newest row was written by the kernel before: loaded after the wait
        k = tl.where(newest, tl.load(k_cache_ptr + tile_rows[:, None] + offs_d[None, :], mask=newest, other=0.0), k)
        v = tl.where(newest, tl.load(v_cache_ptr + tile_rows[:, None] + offs_d[None, :], mask=newest, other=0.0), v)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], dtype=tl.float32)
    if start < end:  # the prefetched first tile (empty only for a padded seq_len == 0 slot)
        m_i, l_i, acc = _attend(q, k, v, offs_n < end, m_i, l_i, acc, qk_scale, IS_FP32)
    for tile_start in range(start + BLOCK_N, end, BLOCK_N):  # the rest, pipelined by Triton (num_stages)
        offs_n = tile_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        rows = _tile_rows(table, offs_n, mask_n, head_off, stride_cache_block, stride_cache_tok, BLOCK_SIZE)
        k = tl.load(k_cache_ptr + rows[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        v = tl.load(v_cache_ptr + rows[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        m_i, l_i, acc = _attend(q, k, v, mask_n, m_i, l_i, acc, qk_scale, IS_FP32)

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # l_i == 0 only for an empty sequence (one split)
    result = acc / l_safe[:, None]  # [BLOCK_H, D]
    if not SPLIT:
        tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=head_mask[:, None])
    else:
        num_active = tl.cdiv(seq_len, split_len)  # splits 0 .. num_active - 1 are non-empty, split_len > 0
        if num_active == 1:  # the only split: its partial is the output, no merge and no counter
            tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=head_mask[:, None])
        else:
            num_kv_heads = tl.num_programs(1)
            first_row = (seq * num_kv_heads + kv_head) * GROUP * num_splits  # head 0, split 0 in [B * Hq, S]
            rows = first_row + offs_h * num_splits  # [BLOCK_H]
            tl.store(mid_out_ptr + (rows + split)[:, None] * HEAD_DIM + offs_d[None, :], result,
                     mask=head_mask[:, None])
            tl.store(mid_lse_ptr + rows + split, m_i + tl.math.log2(l_safe), mask=head_mask)
            _merge_splits(mid_out_ptr, mid_lse_ptr, counters_ptr + seq * num_kv_heads + kv_head,
                          out_ptr + seq * stride_ob + kv_head * GROUP * stride_oh, stride_oh, first_row, num_splits,
                          num_active, GROUP=GROUP, HEAD_DIM=HEAD_DIM, BLOCK_G=triton.next_power_of_2(GROUP),
                          CHUNK=_merge_chunk(GROUP, BLOCK_S))


@triton.jit
def _rotation(positions_ptr, cos_sin_ptr, seq, half_rotary, offs_d, dtype: tl.constexpr):
    """Per channel d of a head: its rotation partner (d + R/2 or d - R/2 inside the rotary_dim R,
    itself beyond), and cos and sin at the sequence's position (`_load_cos_sin`), sin negated on
    the first half."""
    first, second = offs_d < half_rotary, (offs_d >= half_rotary) & (offs_d < 2 * half_rotary)
    pair = tl.where(first, offs_d, offs_d - half_rotary)  # index into the cos (and the sin) half
    partner = tl.where(first, offs_d + half_rotary, tl.where(second, offs_d - half_rotary, offs_d))
    cos, sin = _load_cos_sin(positions_ptr, cos_sin_ptr, seq, half_rotary, pair, first | second, dtype)
    return partner, cos, tl.where(first, -sin, sin)


@triton.jit
def _rotate(x, x_partner, cos, sin_signed, half_rotary, offs_d):
    """Rotary embedding of `x [..., D]` given its partner channels (`rotated`); channels past the
    rotary_dim unchanged."""
    return tl.where(offs_d < 2 * half_rotary, rotated(x, x_partner, cos, sin_signed), x)


@triton.jit
def _attend(q, k, v, mask_n, m_i, l_i, acc, qk_scale, IS_FP32: tl.constexpr):
    """Online softmax over one tile of `BLOCK_N` positions (`mask_n` the valid ones, at least one):
    the updated running max `m_i`, sum `l_i` and output `acc` of the `BLOCK_H` query heads."""
    qk = tl.where(mask_n[None, :], _scores(q, k, IS_FP32) * qk_scale, float("-inf"))  # [BLOCK_H, BLOCK_N]
    return _online_softmax_step(qk, m_i, l_i, acc, v, IS_FP32)


@triton.jit
def _tile_rows(table, offs_n, mask_n, head_off, stride_cache_block, stride_cache_tok, BLOCK_SIZE: tl.constexpr):
    """Element offsets `[BLOCK_N]` of positions `offs_n` of one KV head in the paged cache (0 where masked)."""
    block_ids = tl.load(table + offs_n // BLOCK_SIZE, mask=mask_n, other=0).to(tl.int64)
    return block_ids * stride_cache_block + (offs_n % BLOCK_SIZE) * stride_cache_tok + head_off


@triton.jit
def _merge_splits(mid_out_ptr, mid_lse_ptr, counter_ptr, out_head_ptr, stride_oh, first_row, num_splits, num_active,
                  GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, CHUNK: tl.constexpr):
    """Counts this program's split as finished; the last of `num_active` merges all and writes the
    `GROUP` heads' outputs at `out_head_ptr` (head g at `g * stride_oh`).

    `first_row` indexes head 0, split 0 of this program's heads in the `[B * Hq, S]` partials.
    The merger reads `CHUNK` splits of every head at once (one L2 round trip per chunk, with an
    online rescale between chunks), not one split after another: at batch 1 the merge is on the
    step's critical path, and a loop of dependent loads cost an L2 latency per split.

    Ordering (the interpreter runs programs one after another, so tests cannot check it):
    - writers: the barrier makes every thread's partial stores happen before the atomic, which one
      thread issues; the atomic's release half (acq_rel, gpu scope) then publishes them all, since
      PTX release is cumulative over what the barrier made visible to that thread.
    - the merger: every increment is a read-modify-write of one location, so they form a single
      release sequence and the acquire half of the last one synchronises with the release of every
      earlier one: each other split's stores happen before the loads below. Triton broadcasts the
      scalar result through shared memory behind a barrier, so every thread of the merger takes
      the branch after the acquire; the loads depend on it and cannot be hoisted above it.
    - the loads use `.cg` (cache in L2 only): L1 is not coherent across SMs, and a line of the
      partials may already sit in this SM's L1 from another program. A gpu-scope acquire must
      invalidate L1 to be correct, but `.cg` does not rest on that, nor on the barrier carrying
      the acquire to the other threads, and each partial is read once, so L1 would not help.
    - the reset: no other program touches this counter again in this launch (all `num_active`
      have counted), and the next launch on the stream starts after this one completes, so a
      plain store suffices. Empty splits never touch the counter.
    Triton 3.9 for sm_90 emits: partial stores; bar.sync; thread 0 `atom.global.gpu.acq_rel.add`;
    st.shared + bar.sync + ld.shared of the count; branch; `ld.global.cg` of the partials.
    """
    tl.debug_barrier()  # every thread's partial stores, before thread 0's release
    count = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
    if count == num_active - 1:
        offs_g = tl.arange(0, BLOCK_G)
        offs_c = tl.arange(0, CHUNK)
        offs_d = tl.arange(0, HEAD_DIM)
        rows = first_row + offs_g * num_splits  # [BLOCK_G]
        m = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)  # running max of the log2-sum-exps
        total = tl.zeros([BLOCK_G], dtype=tl.float32)
        acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
        for chunk in range(0, num_active, CHUNK):
            index = rows[:, None] + (chunk + offs_c)[None, :]  # [BLOCK_G, CHUNK]
            mask = (offs_g < GROUP)[:, None] & ((chunk + offs_c) < num_active)[None, :]
            lse = tl.load(mid_lse_ptr + index, mask=mask, other=float("-inf"), cache_modifier=".cg")
            partial = tl.load(mid_out_ptr + index[:, :, None] * HEAD_DIM + offs_d[None, None, :],
                              mask=mask[:, :, None], other=0.0, cache_modifier=".cg")  # [BLOCK_G, CHUNK, D]
            m_new = tl.maximum(m, tl.max(lse, 1))
            m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)  # padded head rows stay at zero weight
            rescale = tl.math.exp2(m - m_safe)  # 0 on the first chunk
            weights = tl.math.exp2(lse - m_safe[:, None])  # [BLOCK_G, CHUNK]
            total = total * rescale + tl.sum(weights, 1)
            acc = acc * rescale[:, None] + tl.sum(partial * weights[:, :, None], 1)
            m = m_new
        result = acc / tl.where(total > 0.0, total, 1.0)[:, None]
        tl.store(out_head_ptr + offs_g[:, None] * stride_oh + offs_d[None, :], result.to(out_head_ptr.dtype.element_ty),
                 mask=(offs_g < GROUP)[:, None])
        tl.store(counter_ptr, 0)


@triton.constexpr_function
def _merge_chunk(group, block_s):
    """Splits the merger reads at once: up to 64 rows of partials (`next_power_of_2(GROUP)` heads
    each), 64 float32 registers a thread at 4 warps and head dim 128."""
    return min(block_s, max(1, 64 // triton.next_power_of_2(group)))
