"""A mixed step in the attention layer: one-token rows first through the decode kernel, the rest
through the extend kernel, against the reference over the whole batch (Triton under the
interpreter on the CPU, and the torch path)."""
from __future__ import annotations

import pytest
import torch

from kernels.attention.reference import paged_attention
from services.worker.layers.attention import Attention, AttentionMetadata
from tests.kernels.attention.inputs import assert_attention_close, build_paged_batch

# Two decoding sequences (one token each, listed first as InputBatch.prepare orders them), then a
# chunk with a cached prefix and a fresh prompt.
SEQ_LENS, QUERY_LENS = [9, 17, 12, 3], [1, 1, 4, 3]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mixed_step_matches_reference(backend, dtype, monkeypatch):
    monkeypatch.setenv("SLUICE_ATTENTION_BACKEND", backend)
    check_mixed_step(SEQ_LENS, QUERY_LENS, 2, (4, 2, 16), 4, dtype)


@pytest.mark.gpu
def test_gpu_mixed_step_llama_heads_with_context_splits():
    """Llama-3-8B heads; 40 decodes (long enough for several context splits), then 3 prefills."""
    seq_lens = [300 + 37 * i for i in range(40)] + [1000, 130, 64]
    query_lens = [1] * 40 + [200, 130, 64]
    check_mixed_step(seq_lens, query_lens, 40, (32, 8, 128), 16, torch.bfloat16)


def check_mixed_step(seq_lens, query_lens, num_decodes, heads, block_size, dtype):
    heads, kv_heads, head_dim = heads
    batch = build_paged_batch(seq_lens, query_lens, heads, kv_heads, head_dim, block_size, dtype, seed=11)
    layer = Attention(heads, kv_heads, head_dim, scale=0.25)
    layer.kv_cache = (batch.k_cache, batch.v_cache)
    num_tokens = batch.query.shape[0]
    qsl = batch.query_start_loc
    metadata = AttentionMetadata(
        slot_mapping=torch.full((num_tokens,), -1, dtype=torch.int64, device=batch.query.device),  # K/V already in
        query_start_loc=qsl, seq_lens=batch.seq_lens, block_tables=batch.block_tables,
        max_query_len=max(query_lens), max_seq_len=max(seq_lens), num_decodes=num_decodes,
        extend_query_start_loc=(qsl[num_decodes:] - qsl[num_decodes]).contiguous())
    out = layer(batch.query.flatten(1), batch.key.flatten(1), batch.value.flatten(1), metadata)
    expected = paged_attention(batch.query, batch.k_cache, batch.v_cache, qsl, batch.seq_lens, batch.block_tables,
                               0.25)
    assert_attention_close(out.view_as(batch.query), expected)
    # Without the split (num_decodes 0) the same step goes through the extend kernel alone.
    metadata.num_decodes = 0
    whole = layer(batch.query.flatten(1), batch.key.flatten(1), batch.value.flatten(1), metadata)
    assert_attention_close(whole.view_as(batch.query), expected)


@pytest.mark.gpu
def test_gpu_mixed_steps_compile_nothing_after_warm_up():
    """Serving sees every decode count and context length: after `warm_up` (and one step of each
    kind, as the worker's profile run and graph capture make), no other step may JIT-compile."""
    import triton

    from kernels import attention
    from kernels.runtime import jit_watch
    attention.warm_up(32, 8, 128, 16, torch.bfloat16, torch.device("cuda"))
    check_mixed_step([300, 40, 64], [1, 40, 64], 1, (32, 8, 128), 16, torch.bfloat16)
    compiled = []
    previous = triton.knobs.runtime.jit_cache_hook
    assert jit_watch.on_compile(compiled.append)
    try:
        for num_decodes, context in [(2, 129), (3, 700), (5, 2000), (17, 4000), (33, 1500), (130, 300)]:
            seq_lens = [context + i for i in range(num_decodes)] + [context + 50, 90]
            query_lens = [1] * num_decodes + [50, 90]
            check_mixed_step(seq_lens, query_lens, num_decodes, (32, 8, 128), 16, torch.bfloat16)
    finally:
        triton.knobs.runtime.jit_cache_hook = previous
    assert compiled == []
