"""Paged reference attention vs naive dense causal attention over the same K/V."""
from __future__ import annotations

import pytest
import torch

from kernels.attention.reference import paged_attention, write_kv
from tests.kernels.attention.inputs import build_paged_batch

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (6, 1)], ids=["mha", "gqa4", "mqa"])
@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_paged_attention_matches_dense(scenario, block_size, heads, dtype):
    seq_lens, query_lens = SCENARIOS[scenario]
    num_heads, num_kv_heads = heads
    head_dim, scale = 32, 32 ** -0.5
    batch = build_paged_batch(seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype,
                              device="cpu")
    out = paged_attention(batch.query, batch.k_cache, batch.v_cache, batch.query_start_loc, batch.seq_lens,
                          batch.block_tables, scale)
    assert out.shape == batch.query.shape and out.dtype == dtype
    queries = batch.query.split(query_lens)
    expected = torch.cat([dense_causal_attention(q, k, v, scale)
                          for q, k, v in zip(queries, batch.context_keys, batch.context_values, strict=True)])
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
    batch = build_paged_batch([8], [8], 4, 2, 16, 4, torch.float32, device="cpu")
    query, k_cache, v_cache = batch.query, batch.k_cache, batch.v_cache
    qsl, seq_lens, tables = batch.query_start_loc, batch.seq_lens, batch.block_tables
    with pytest.raises(AssertionError):
        paged_attention(query.half(), k_cache, v_cache, qsl, seq_lens, tables, 0.25)
    with pytest.raises(AssertionError):
        paged_attention(query, k_cache, v_cache, qsl, seq_lens, tables.long(), 0.25)
    with pytest.raises(AssertionError):
        paged_attention(query, k_cache, v_cache, qsl, seq_lens + 100, tables, 0.25)
    with pytest.raises(AssertionError):
        write_kv(query[:, :2, :8], query[:, :2, :8], k_cache, v_cache, torch.arange(8))
