"""Shared layers against transformers' own pieces or a direct formula."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama import modeling_llama

from services.worker.layers.attention import Attention, AttentionMetadata
from services.worker.layers.linear import MergedLinear, QKVLinear
from services.worker.layers.norm import RMSNorm
from services.worker.layers.rotary import RotaryEmbedding, get_rope
from services.worker.model_config import ModelConfig

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ROPE_SCALINGS = [
    None,
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scaling", ROPE_SCALINGS, ids=["default", "linear", "llama3"])
def test_rotary_matches_hf(scaling, dtype):
    hf_config = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=512, rope_theta=5000.0, rope_scaling=scaling)
    mc = ModelConfig.from_hf({**hf_config.to_dict(), "architectures": ["LlamaForCausalLM"]})
    rope = get_rope(mc.head_dim, mc.partial_rotary_factor, mc.max_position_embeddings, mc.rope_theta,
                    mc.rope_scaling)
    positions = torch.tensor([0, 1, 7, 63, 64, 300, 511])
    q = torch.randn(len(positions), 4 * 64).to(dtype)
    k = torch.randn(len(positions), 2 * 64).to(dtype)
    ours_q, ours_k = rope(positions, q.clone(), k.clone())
    cos, sin = modeling_llama.LlamaRotaryEmbedding(hf_config)(q, positions[None])
    hf_q, hf_k = modeling_llama.apply_rotary_pos_emb(q.view(1, -1, 4, 64).transpose(1, 2),
                                                     k.view(1, -1, 2, 64).transpose(1, 2), cos, sin)
    torch.testing.assert_close(ours_q, hf_q.transpose(1, 2).reshape(q.shape), rtol=0, atol=0)
    torch.testing.assert_close(ours_k, hf_k.transpose(1, 2).reshape(k.shape), rtol=0, atol=0)


def test_partial_rotary_rotates_only_the_leading_channels():
    head_dim, rotary_dim, base = 16, 8, 100.0
    rope = RotaryEmbedding(head_dim, rotary_dim, max_position=32, base=base)
    positions = torch.tensor([0, 3, 31])
    x = torch.randn(3, 2 * head_dim, dtype=torch.float64).float()
    ours, _ = rope(positions, x.clone(), x[:, :head_dim].clone())
    heads, out = x.view(3, 2, head_dim), ours.view(3, 2, head_dim)
    torch.testing.assert_close(out[..., rotary_dim:], heads[..., rotary_dim:], rtol=0, atol=0)
    half = rotary_dim // 2
    for i in range(half):  # pair (i, i + half) turns by angle pos * base^(-2i / rotary_dim)
        angle = positions.double() * base ** (-2 * i / rotary_dim)
        c, s = angle.cos()[:, None], angle.sin()[:, None]
        a, b = heads[..., i].double(), heads[..., i + half].double()
        torch.testing.assert_close(out[..., i].double(), a * c - b * s, rtol=0, atol=1e-5)
        torch.testing.assert_close(out[..., i + half].double(), b * c + a * s, rtol=0, atol=1e-5)


def test_unsupported_rope_type_fails_at_build():
    with pytest.raises(ValueError, match="yarn"):
        get_rope(64, 1.0, 128, 1e4, {"rope_type": "yarn", "factor": 2.0})


def test_attention_with_rotary_rotates_as_it_writes_the_cache():
    """Attention(rotary_emb) on unrotated q/k equals the rotary layer, then Attention without one:
    same output, same cache, and q/k rotated in place."""
    rope = get_rope(16, 0.5, 64, 10000.0, None)
    positions, slots = torch.tensor([3, 4, 5]), torch.tensor([5, 6, 7])
    metadata = AttentionMetadata(slot_mapping=slots, query_start_loc=torch.tensor([0, 3], dtype=torch.int32),
                                 seq_lens=torch.tensor([6], dtype=torch.int32),
                                 block_tables=torch.tensor([[1, 0]], dtype=torch.int32), max_query_len=3)
    q, k, v = torch.randn(3, 4 * 16), torch.randn(3, 2 * 16), torch.randn(3, 2 * 16)
    cache = torch.randn(2, 2, 4, 2, 16).unbind(0)  # (k_cache, v_cache), 4 slots a block
    fused, unfused = Attention(4, 2, 16, 0.25, rotary_emb=rope), Attention(4, 2, 16, 0.25)
    fused.kv_cache = tuple(c.clone() for c in cache)
    unfused.kv_cache = tuple(c.clone() for c in cache)
    fused_q, fused_k = q.clone(), k.clone()
    out = fused(fused_q, fused_k, v, metadata, positions)
    want_q, want_k = rope(positions, q.clone(), k.clone())
    torch.testing.assert_close(out, unfused(want_q, want_k, v, metadata), rtol=0, atol=0)
    assert torch.equal(fused_q, want_q) and torch.equal(fused_k, want_k)
    assert all(torch.equal(a, b) for a, b in zip(fused.kv_cache, unfused.kv_cache, strict=True))
    with pytest.raises(AssertionError, match="needs positions"):
        fused(q.clone(), k.clone(), v, metadata)


@pytest.mark.parametrize("batch", [1, 2])
def test_only_batch1_decode_rotates_inside_the_attention_launch(monkeypatch, batch):
    """A decode step of one sequence hands the unrotated new token to the decode launch
    (`NewTokens`); larger decode batches rotate and write the cache first (a separate launch,
    which measured faster from batch 4 on). Both give the rotary layer's result."""
    from kernels import attention as attention_kernels
    from services.worker.layers import attention as attention_layer

    seen = []
    original = attention_kernels.decode_attention
    monkeypatch.setattr(attention_kernels, "decode_attention",
                        lambda *a, rotary=None, **k: seen.append(rotary) or original(*a, rotary=rotary, **k))
    rope = get_rope(16, 1.0, 64, 10000.0, None)
    positions, slots = torch.tensor([5, 2][:batch]), torch.tensor([5, 10][:batch])
    metadata = AttentionMetadata(slot_mapping=slots, query_start_loc=torch.arange(batch + 1, dtype=torch.int32),
                                 seq_lens=torch.tensor([6, 3][:batch], dtype=torch.int32),
                                 block_tables=torch.tensor([[1, 0], [2, 0]][:batch], dtype=torch.int32),
                                 max_query_len=1, max_seq_len=6)
    q, k, v = torch.randn(batch, 4 * 16), torch.randn(batch, 2 * 16), torch.randn(batch, 2 * 16)
    cache = torch.randn(2, 3, 4, 2, 16).unbind(0)
    fused, unfused = Attention(4, 2, 16, 0.25, rotary_emb=rope), Attention(4, 2, 16, 0.25)
    fused.kv_cache = tuple(c.clone() for c in cache)
    unfused.kv_cache = tuple(c.clone() for c in cache)
    out = fused(q.clone(), k.clone(), v, metadata, positions)
    assert (seen[0] is not None) == (batch <= attention_layer.ROTARY_IN_DECODE_MAX_BATCH == 1), seen
    want_q, want_k = rope(positions, q.clone(), k.clone())
    seen.clear()
    torch.testing.assert_close(out, unfused(want_q, want_k, v, metadata), rtol=1e-6, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fused.kv_cache, unfused.kv_cache, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_hf_and_fuses_the_residual(dtype):
    ours = RMSNorm(64, eps=1e-5)
    hf = modeling_llama.LlamaRMSNorm(64, eps=1e-5)
    weight = torch.randn(64)
    ours.weight.data.copy_(weight)
    hf.weight.data.copy_(weight)
    ours, hf = ours.to(dtype), hf.to(dtype)
    x, residual = torch.randn(5, 64).to(dtype), torch.randn(5, 64).to(dtype)
    torch.testing.assert_close(ours(x), hf(x), rtol=0, atol=0)
    out, new_residual = ours(x, residual)
    torch.testing.assert_close(new_residual, residual + x, rtol=0, atol=0)
    torch.testing.assert_close(out, hf(residual + x), rtol=0, atol=0)


def test_packed_linears_place_each_shard():
    qkv = QKVLinear(hidden_size=8, head_dim=2, num_heads=4, num_kv_heads=2, bias=True)
    parts = {s: (torch.randn(n, 8), torch.randn(n)) for s, n in [("q", 8), ("k", 4), ("v", 4)]}
    for shard, (w, b) in reversed(parts.items()):
        qkv.weight.weight_loader(qkv.weight, w, shard)
        qkv.bias.weight_loader(qkv.bias, b, shard)
    x = torch.randn(3, 8)
    for got, (w, b) in zip(qkv.split(qkv(x)), parts.values(), strict=True):
        torch.testing.assert_close(got, x @ w.T + b)
    gate_up = MergedLinear(8, [6, 6])
    gate, up = torch.randn(6, 8), torch.randn(6, 8)
    gate_up.weight.weight_loader(gate_up.weight, up, 1)
    gate_up.weight.weight_loader(gate_up.weight, gate, 0)
    torch.testing.assert_close(gate_up(x), torch.cat([x @ gate.T, x @ up.T], dim=-1))
    with pytest.raises(ValueError, match="shape mismatch"):
        qkv.weight.weight_loader(qkv.weight, torch.randn(5, 8), "k")
    with pytest.raises(ValueError, match="unknown shard"):
        qkv.weight.weight_loader(qkv.weight, torch.randn(4, 8), "o")
