"""Paged reference attention vs naive dense causal attention over the same K/V."""
from __future__ import annotations

import random

import pytest
import torch

from kernels.attention_ref import paged_attention, write_kv

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}

# (context lengths incl. new tokens, new tokens per sequence)
SCENARIOS = {
    "mixed": ([5, 20, 33, 1], [5, 1, 9, 1]),
    "pure_decode": ([1, 17, 40, 8], [1, 1, 1, 1]),
    "one_prefill": ([37], [37]),
    "chunk_continuation": ([12, 30], [4, 30]),
}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q `[Q, Hq, D]` are the last Q of L positions; k, v `[L, Hkv, D]`. float64, HF repeat_kv GQA."""
    num_queries, num_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    k = k.double().repeat_interleave(num_heads // num_kv_heads, dim=1)  # [L, Hq, D]
    v = v.double().repeat_interleave(num_heads // num_kv_heads, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * scale  # [Hq, Q, L]
    allowed = torch.ones(num_queries, seq_len, dtype=torch.bool).tril(diagonal=seq_len - num_queries)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)  # [Q, Hq, D]


def build_paged_batch(seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype, seed=0):
    """Random K/V written through `write_kv` into blocks taken in shuffled order, plus queries."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    free = list(range(num_blocks))
    random.Random(seed).shuffle(free)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)  # unwritten slots must not reach the output
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    block_tables = torch.zeros(len(seq_lens), max(blocks_per_seq) + 1, dtype=torch.int32)
    keys, values, queries = [], [], []
    for b, (seq_len, query_len) in enumerate(zip(seq_lens, query_lens, strict=True)):
        table = [free.pop() for _ in range(blocks_per_seq[b])]
        block_tables[b, :len(table)] = torch.tensor(table, dtype=torch.int32)
        k = torch.randn(seq_len, num_kv_heads, head_dim, generator=gen).to(dtype)
        v = torch.randn(seq_len, num_kv_heads, head_dim, generator=gen).to(dtype)
        slots = torch.tensor([table[p // block_size] * block_size + p % block_size for p in range(seq_len)])
        write_kv(k, v, k_cache, v_cache, slots)
        keys.append(k)
        values.append(v)
        queries.append(torch.randn(query_len, num_heads, head_dim, generator=gen).to(dtype))
    query_start_loc = torch.tensor([0] + list(torch.tensor(query_lens).cumsum(0)), dtype=torch.int32)
    return (torch.cat(queries), k_cache, v_cache, query_start_loc, torch.tensor(seq_lens, dtype=torch.int32),
            block_tables, queries, keys, values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (6, 1)], ids=["mha", "gqa4", "mqa"])
@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_paged_attention_matches_dense(scenario, block_size, heads, dtype):
    seq_lens, query_lens = SCENARIOS[scenario]
    num_heads, num_kv_heads = heads
    head_dim, scale = 32, 32 ** -0.5
    (query, k_cache, v_cache, query_start_loc, seq_lens_t, block_tables, queries, keys,
     values) = build_paged_batch(seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype)
    out = paged_attention(query, k_cache, v_cache, query_start_loc, seq_lens_t, block_tables, scale)
    assert out.shape == query.shape and out.dtype == dtype
    expected = torch.cat([dense_causal_attention(q, k, v, scale)
                          for q, k, v in zip(queries, keys, values, strict=True)])
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def test_write_kv_puts_each_token_at_its_slot():
    k_cache, v_cache = torch.zeros(6, 4, 2, 8), torch.zeros(6, 4, 2, 8)
    key, value = torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    slots = torch.tensor([23, 0, 9, 10, 4])
    write_kv(key, value, k_cache, v_cache, slots)
    for i, slot in enumerate(slots.tolist()):
        assert torch.equal(k_cache[slot // 4, slot % 4], key[i])
        assert torch.equal(v_cache[slot // 4, slot % 4], value[i])
    assert int((k_cache != 0).any(-1).any(-1).sum()) == 5


def test_launch_asserts_catch_bad_inputs():
    batch = build_paged_batch([8], [8], 4, 2, 16, 4, torch.float32)
    query, k_cache, v_cache, qsl, seq_lens, tables = batch[:6]
    with pytest.raises(AssertionError):
        paged_attention(query.half(), k_cache, v_cache, qsl, seq_lens, tables, 0.25)
    with pytest.raises(AssertionError):
        paged_attention(query, k_cache, v_cache, qsl, seq_lens, tables.long(), 0.25)
    with pytest.raises(AssertionError):
        paged_attention(query, k_cache, v_cache, qsl, seq_lens + 100, tables, 0.25)
    with pytest.raises(AssertionError):
        write_kv(query[:, :2, :8], query[:, :2, :8], k_cache, v_cache, torch.arange(8))
