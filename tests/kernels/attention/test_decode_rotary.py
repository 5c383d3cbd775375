"""Decode attention that rotates q/k and writes the new token's K/V itself (`NewTokens`) vs the
unfused path: `rotary_and_write_kv`'s reference, then the attention reference (TRITON_INTERPRET=1
on CPU)."""
from __future__ import annotations

import pytest
import torch

from kernels.attention import NewTokens
from kernels.attention.decode import alloc_workspace, decode_attention_fwd
from kernels.attention.reference import paged_attention
from kernels.elementwise import rotary_kv
from services.worker.layers.rotary import get_rope
from tests.kernels.attention.inputs import DEVICE, assert_attention_close, build_paged_batch

SMALL_CONFIG = (16, 4, 1)
SEQ_LENS = [1, 16, 19, 45]
HEAD_DIM = 16
BF16_INTERPRETER_ULP = 1.6e-2  # the interpreter rounds float32 -> bfloat16 one ulp off torch at times

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def make_case(num_heads, num_kv_heads, dtype, partial, skip_row=None, seed=0):
    """A decode batch whose new tokens' q/k/v are strided views of a packed qkv row (unrotated),
    with the new tokens' cache rows poisoned (NaN) so that only a write can make them right."""
    batch = build_paged_batch(SEQ_LENS, [1] * len(SEQ_LENS), num_heads, num_kv_heads, HEAD_DIM, 4, dtype,
                              seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    sizes = [num_heads * HEAD_DIM, num_kv_heads * HEAD_DIM, num_kv_heads * HEAD_DIM]
    qkv = torch.randn(len(SEQ_LENS), sum(sizes), generator=gen).to(dtype).to(DEVICE)
    query, key, value = (t.unflatten(-1, (-1, HEAD_DIM)) for t in qkv.split(sizes, dim=-1))
    block_size = batch.k_cache.shape[1]
    tables = batch.block_tables.cpu()
    slots = torch.tensor([int(tables[b, (n - 1) // block_size]) * block_size + (n - 1) % block_size
                          for b, n in enumerate(SEQ_LENS)])
    flat_k, flat_v = batch.k_cache.view(-1, num_kv_heads, HEAD_DIM), batch.v_cache.view(-1, num_kv_heads, HEAD_DIM)
    flat_k[slots.to(DEVICE)] = float("nan")
    flat_v[slots.to(DEVICE)] = float("nan")
    if skip_row is not None:
        slots[skip_row] = -1  # a padding row: rotated, attended, never written
    rope = get_rope(HEAD_DIM, partial, 64, 10000.0, None).to(DEVICE)
    positions = torch.tensor(SEQ_LENS, device=DEVICE) - 1
    new = NewTokens(key, value, positions, slots.to(DEVICE), rope.cos_sin_cache, rope.rotary_dim)
    return batch, query, new


def unfused(batch, query, new, scale):
    """(output, k_cache, v_cache) of the reference path, on copies."""
    query, key = query.clone(), new.key.clone()
    k_cache, v_cache = batch.k_cache.clone(), batch.v_cache.clone()
    rotary_kv._torch_impl(new.positions, query, key, new.value, k_cache, v_cache, new.slot_mapping,
                          new.cos_sin_cache, new.rotary_dim)
    out = paged_attention(query.float(), k_cache.float(), v_cache.float(), batch.query_start_loc, batch.seq_lens,
                          batch.block_tables, scale)
    return out, k_cache, v_cache


def fused(batch, query, new, scale, num_splits):
    k_cache, v_cache = batch.k_cache.clone(), batch.v_cache.clone()
    out = torch.full_like(query, float("nan"))
    workspace = alloc_workspace(len(SEQ_LENS), query.shape[1], k_cache.shape[2], HEAD_DIM, num_splits,
                                torch.device(DEVICE))
    decode_attention_fwd(query, k_cache, v_cache, batch.block_tables, batch.seq_lens, scale, num_splits, out,
                         workspace, config=SMALL_CONFIG, rotary=new)
    assert not workspace[2].any(), "merge counters left non-zero"
    return out, k_cache, v_cache


def assert_cache_equal(got, want):
    """Bit for bit where the reference wrote (NaN stays NaN elsewhere), within a bf16 ulp under the
    interpreter, and within float32 rounding (the kernel may fuse a multiply-add) in float32."""
    assert torch.equal(got.isnan(), want.isnan()), "a cache row written where it should not be, or not written"
    got, want = got.nan_to_num(), want.nan_to_num()
    if want.dtype == torch.float32:
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    elif DEVICE == "cpu" and want.dtype == torch.bfloat16:
        torch.testing.assert_close(got.float(), want.float(), atol=BF16_INTERPRETER_ULP, rtol=BF16_INTERPRETER_ULP)
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("heads", [(4, 1), (2, 2)], ids=["gqa4", "mha"])
@pytest.mark.parametrize("num_splits", [1, 6])
@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_fused_rotary_decode_matches_the_unfused_path(dtype, heads, num_splits, partial):
    batch, query, new = make_case(*heads, dtype, partial, seed=num_splits)
    before = query.clone()
    want_out, want_k, want_v = unfused(batch, query, new, 0.25)
    got_out, got_k, got_v = fused(batch, query, new, 0.25, num_splits)
    assert_attention_close(got_out, want_out.to(dtype))
    assert_cache_equal(got_k, want_k)
    assert_cache_equal(got_v, want_v)
    assert torch.equal(query, before), "the query must stay unrotated"


def test_a_negative_slot_writes_nothing_but_still_attends():
    """Row 2's slot is -1 (CUDA-graph padding): its cache row stays as it was (NaN here, so its own
    output is NaN), and every other row is unaffected."""
    batch, query, new = make_case(4, 1, torch.float16, 1.0, skip_row=2)
    got_out, got_k, _ = fused(batch, query, new, 0.25, 6)
    want_out, want_k, _ = unfused(batch, query, new, 0.25)
    assert_cache_equal(got_k, want_k)
    rows = [0, 1, 3]
    assert_attention_close(got_out[rows], want_out[rows].to(torch.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("num_splits", [1, 16])
def test_gpu_llama_shapes_bit_for_bit_cache(num_splits):
    """32 query / 8 KV heads of 128 channels, bf16, block 16, contexts up to 2k: outputs close to the
    unfused path and the cache rows equal bit for bit."""
    from kernels.attention import decode_attention

    torch.manual_seed(num_splits)
    seq_lens = [1, 17, 700, 2048]
    batch = build_paged_batch(seq_lens, [1] * len(seq_lens), 32, 8, 128, 16, torch.bfloat16)
    qkv = torch.randn(len(seq_lens), 48 * 128, device="cuda", dtype=torch.bfloat16)
    query, key, value = (t.unflatten(-1, (-1, 128)) for t in qkv.split([32 * 128, 8 * 128, 8 * 128], dim=-1))
    tables = batch.block_tables.cpu()
    slots = torch.tensor([int(tables[b, (n - 1) // 16]) * 16 + (n - 1) % 16 for b, n in enumerate(seq_lens)],
                         device="cuda")
    rope = get_rope(128, 1.0, 4096, 500000.0, None).to("cuda")
    new = NewTokens(key, value, torch.tensor(seq_lens, device="cuda") - 1, slots, rope.cos_sin_cache, 128)
    want_out, want_k, want_v = unfused(batch, query, new, 128 ** -0.5)
    k_cache, v_cache = batch.k_cache.clone(), batch.v_cache.clone()
    got = decode_attention(query, k_cache, v_cache, batch.block_tables, batch.seq_lens, 128 ** -0.5, num_splits,
                           rotary=new)
    assert_attention_close(got, want_out.to(torch.bfloat16))
    assert torch.equal(k_cache.nan_to_num(), want_k.nan_to_num()) and torch.equal(v_cache.nan_to_num(),
                                                                                  want_v.nan_to_num())
