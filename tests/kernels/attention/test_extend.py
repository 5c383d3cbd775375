"""Triton paged extend (prefill) attention vs the torch reference (TRITON_INTERPRET=1 without a GPU)."""
from __future__ import annotations

import functools

import pytest
import torch

from kernels import attention
from kernels.attention.extend import extend_attention_fwd
from kernels.attention.reference import paged_attention
from tests.kernels.attention.inputs import assert_attention_close, build_paged_batch, check_backend_choice

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HEADS = {"mha": (2, 2), "gqa4": (4, 1)}
SMALL_CONFIG = (32, 16, 4, 1)  # two diagonal tiles per row block, several row blocks per sequence

# (context lengths incl. new tokens, new tokens per sequence)
SCENARIOS = {
    "prefill": ([45], [45]),
    "mixed": ([5, 20, 1, 33], [5, 1, 1, 9]),  # prefills, decodes, a chunk with a ragged prefix
    "prefix": ([40, 71], [7, 38]),
}


def reference(batch, scale):
    return paged_attention(batch.query, batch.k_cache, batch.v_cache, batch.query_start_loc, batch.seq_lens,
                           batch.block_tables, scale)


def run_extend(batch, scale, config=None, max_query_len="batch"):
    out = torch.full_like(batch.query, float("nan"))
    extend_attention_fwd(batch.query, batch.key, batch.value, batch.k_cache, batch.v_cache,
                         batch.query_start_loc, batch.seq_lens, batch.block_tables, scale, out,
                         batch.max_query_len if max_query_len == "batch" else max_query_len, config)
    return out


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", list(HEADS.values()), ids=list(HEADS))
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_extend_matches_reference(scenario, heads, dtype):
    seq_lens, query_lens = SCENARIOS[scenario]
    num_heads, num_kv_heads = heads
    block_size = 4 if dtype == torch.bfloat16 else 16
    batch = build_paged_batch(seq_lens, query_lens, num_heads, num_kv_heads, 16, block_size, dtype,
                              seed=len(scenario))
    out = run_extend(batch, 0.25, SMALL_CONFIG)
    assert_attention_close(out, reference(batch, 0.25))


def test_extend_grid_without_max_query_len_and_head_dim_32():
    """Without max_query_len the grid covers T rows per sequence; surplus programs must write nothing."""
    batch = build_paged_batch([9, 30], [9, 20], 4, 2, 32, 8, torch.float16, seed=7)
    out = run_extend(batch, 0.2, (16, 16, 4, 1), max_query_len=None)
    assert_attention_close(out, reference(batch, 0.2))


def test_extend_strided_query_key_value():
    """q, k, v as views of one fused qkv row, as the attention layer receives them."""
    num_heads, num_kv_heads, head_dim = 4, 2, 16
    batch = build_paged_batch([12, 21], [12, 5], num_heads, num_kv_heads, head_dim, 4, torch.float32, seed=2)
    qkv = torch.cat([batch.query, batch.key, batch.value], dim=1)  # [T, Hq + 2 Hkv, D]
    query, key, value = qkv.split([num_heads, num_kv_heads, num_kv_heads], dim=1)
    out = torch.full_like(batch.query, float("nan"))
    extend_attention_fwd(query, key, value, batch.k_cache, batch.v_cache, batch.query_start_loc,
                         batch.seq_lens, batch.block_tables, 0.25, out, batch.max_query_len, SMALL_CONFIG)
    assert_attention_close(out, reference(batch, 0.25))


def test_launch_asserts():
    batch = build_paged_batch([8, 9], [8, 2], 4, 2, 16, 4, torch.float32)
    out = torch.empty_like(batch.query)
    args = [batch.query, batch.key, batch.value, batch.k_cache, batch.v_cache, batch.query_start_loc,
            batch.seq_lens, batch.block_tables, 0.25, out]
    for index, bad in [(1, batch.key[:, :1]), (5, batch.query_start_loc.long()), (6, batch.seq_lens[:1]),
                       (0, batch.query.bfloat16()), (7, batch.block_tables.long())]:
        broken = list(args)
        broken[index] = bad
        with pytest.raises(AssertionError):
            extend_attention_fwd(*broken)
    with pytest.raises(AssertionError):  # BLOCK_M not a multiple of BLOCK_N
        extend_attention_fwd(*args, config=(48, 32, 4, 1))


def test_dispatcher_backends(monkeypatch):
    """auto: Triton on CUDA, the reference on the CPU; `torch` and `triton` force one."""
    seq_lens, query_lens = SCENARIOS["mixed"]
    batch = build_paged_batch(seq_lens, query_lens, 4, 1, 16, 4, torch.float16)
    expected = reference(batch, 0.25)
    args = (batch.query, batch.key, batch.value, batch.k_cache, batch.v_cache, batch.query_start_loc,
            batch.seq_lens, batch.block_tables, 0.25)
    check_backend_choice(monkeypatch, functools.partial(attention.extend_attention, *args), expected,
                         max_query_len=batch.max_query_len)


# --- GPU: realistic shapes, default configs -------------------------------------------------------

GPU_HEADS = {"llama3_8b": (32, 8, 128), "mha_d64": (16, 16, 64), "gqa4_d64": (16, 4, 64)}
GPU_SCENARIOS = {
    "prefill": ([1500], [1500]),
    "mixed": ([1, 700, 64, 129, 2000, 37], [1, 700, 1, 128, 333, 37]),
    "long_prefix": ([3000, 257], [200, 1]),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", list(GPU_HEADS.values()), ids=list(GPU_HEADS))
@pytest.mark.parametrize("scenario", sorted(GPU_SCENARIOS))
def test_gpu_extend_matches_reference(scenario, heads, dtype):
    check_gpu_extend(scenario, heads, 16, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", [32, 64])
@pytest.mark.parametrize("scenario", sorted(GPU_SCENARIOS))
def test_gpu_extend_block_sizes(scenario, block_size):
    check_gpu_extend(scenario, GPU_HEADS["llama3_8b"], block_size, torch.bfloat16)


def check_gpu_extend(scenario, heads, block_size, dtype):
    seq_lens, query_lens = GPU_SCENARIOS[scenario]
    num_heads, num_kv_heads, head_dim = heads
    batch = build_paged_batch(seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype,
                              device="cuda", seed=block_size)
    scale = head_dim ** -0.5
    assert_attention_close(run_extend(batch, scale), reference(batch, scale))
