"""Triton `rotary_embedding` (in place) vs the pure-torch reference and the RotaryEmbedding layer,
for every supported rope scaling type (TRITON_INTERPRET=1 on CPU)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.elementwise import rotary
from services.worker.layers.rotary import get_rope
from tests.kernels.elementwise_tolerance import DTYPES, assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
}


@pytest.fixture(autouse=True, scope="module")
def triton_can_run():
    if DEVICE == "cpu":
        from kernels.elementwise import triton_kernels as elementwise_triton

        assert type(elementwise_triton._rotary_kernel).__name__ == "InterpretedFunction", \
            "kernels.elementwise.triton_kernels was imported before TRITON_INTERPRET=1 was set"


def make_case(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
              max_position: int, seed: int = 0):
    """A packed qkv `[T, (Hq + 2 Hkv) D]` and random positions `[T]` below `max_position`."""
    gen = torch.Generator(DEVICE).manual_seed(seed)
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(num_tokens, width, generator=gen, device=DEVICE).to(dtype)
    positions = torch.randint(0, max_position, (num_tokens,), generator=gen, device=DEVICE)
    return qkv, positions


def split_heads(qkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int):
    """Views q `[T, Hq, D]`, k `[T, Hkv, D]`, v `[T, Hkv, D]` of the packed projection (as in the model)."""
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    return (t.unflatten(-1, (-1, head_dim)) for t in (q, k, v))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rope_type", list(SCALINGS))
@pytest.mark.parametrize("num_tokens,num_heads,num_kv_heads,head_dim,partial", [
    (3, 4, 2, 16, 1.0),
    (5, 3, 1, 24, 0.5),  # rotary_dim 12: 6 pairs, not a power of two
    (2, 2, 2, 8, 0.25),
    (1, 6, 3, 64, 1.0),
])
def test_matches_layer(dtype, rope_type, num_tokens, num_heads, num_kv_heads, head_dim, partial):
    """The kernel rotates the packed views in place; q and k equal the layer's output, v is untouched."""
    rope = get_rope(head_dim, partial, 128, 10000.0, SCALINGS[rope_type]).to(DEVICE)
    qkv, positions = make_case(num_tokens, num_heads, num_kv_heads, head_dim, dtype, 128)
    original = qkv.clone()
    q, k, v = split_heads(qkv, num_heads, num_kv_heads, head_dim)
    want_q, want_k = rope(positions, q.flatten(1), k.flatten(1))
    rotary._triton_impl(positions.int(), q, k, rope.cos_sin_cache, rope.rotary_dim)
    assert_close(q.flatten(1), want_q)
    assert_close(k.flatten(1), want_k)
    _, _, v0 = split_heads(original, num_heads, num_kv_heads, head_dim)
    assert torch.equal(v, v0)
    q0 = original[:, : num_heads * head_dim].unflatten(-1, (-1, head_dim))
    assert torch.equal(q[..., rope.rotary_dim:], q0[..., rope.rotary_dim:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_reference_is_the_layer(dtype, partial):
    """The torch path, in place, equals the layer bit for bit."""
    rope = get_rope(32, partial, 64, 500000.0, SCALINGS["llama3"]).to(DEVICE)
    qkv, positions = make_case(6, 4, 2, 32, dtype, 64)
    q, k, _ = split_heads(qkv, 4, 2, 32)
    want_q, want_k = rope(positions, q.flatten(1), k.flatten(1))
    rotary._torch_impl(positions, q, k, rope.cos_sin_cache, rope.rotary_dim)
    assert torch.equal(q.flatten(1), want_q) and torch.equal(k.flatten(1), want_k)


def test_many_heads_loop():
    """More heads than one block holds (rotary_dim 128 -> 32 heads a block): the head loop runs twice."""
    rope = get_rope(128, 1.0, 16, 10000.0, None).to(DEVICE)
    qkv, positions = make_case(2, 40, 40, 128, torch.float16, 16)
    q, k, _ = split_heads(qkv, 40, 40, 128)
    want_q, want_k = rope(positions, q.flatten(1), k.flatten(1))
    rotary._triton_impl(positions, q, k, rope.cos_sin_cache, rope.rotary_dim)
    assert_close(q.flatten(1), want_q)
    assert_close(k.flatten(1), want_k)


def test_dispatch(monkeypatch):
    """CPU tensors (or SLUICE_KERNELS=torch) take the reference; otherwise the Triton launcher."""
    calls = []
    monkeypatch.setattr(rotary, "_triton_impl", lambda *args: calls.append("triton"))
    monkeypatch.setattr(rotary, "_torch_impl", lambda *args: calls.append("torch"))
    rope = get_rope(16, 1.0, 8, 10000.0, None).to(DEVICE)
    qkv, positions = make_case(2, 2, 1, 16, torch.float32, 8)
    q, k, _ = split_heads(qkv, 2, 1, 16)
    monkeypatch.setenv("SLUICE_KERNELS", "torch")
    rotary.rotary_embedding(positions, q, k, rope.cos_sin_cache, rope.rotary_dim)
    monkeypatch.delenv("SLUICE_KERNELS")
    rotary.rotary_embedding(positions, q, k, rope.cos_sin_cache, rope.rotary_dim)
    assert calls == ["torch", "triton" if DEVICE == "cuda" else "torch"]


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda p, q, k, c, r: (p, q, k.half(), c, r), id="key-dtype"),
    pytest.param(lambda p, q, k, c, r: (p, q.transpose(1, 2), k, c, r), id="channel-stride"),
    pytest.param(lambda p, q, k, c, r: (p.float(), q, k, c, r), id="float-positions"),
    pytest.param(lambda p, q, k, c, r: (p[:-1], q, k, c, r), id="positions-length"),
    pytest.param(lambda p, q, k, c, r: (p, q, k, c, r - 2), id="cache-width"),
    pytest.param(lambda p, q, k, c, r: (p, q, k[:, :, :8], c[:, :8], 8), id="head-dim"),
])
def test_launch_asserts(mutate):
    rope = get_rope(16, 1.0, 8, 10000.0, None).to(DEVICE)
    qkv, positions = make_case(3, 2, 1, 16, torch.float32, 8)
    q, k, _ = split_heads(qkv, 2, 1, 16)
    with pytest.raises(AssertionError):
        rotary.rotary_embedding(*mutate(positions, q, k, rope.cos_sin_cache, rope.rotary_dim))


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", [1, 64, 512, 8192])
@pytest.mark.parametrize("rope_type", list(SCALINGS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_llama8b_shapes(num_tokens, rope_type, dtype):
    """Llama-3-8B heads (32 q, 8 kv, 128 wide) over a long position range; half types match bit for bit."""
    scaling = SCALINGS[rope_type] and {**SCALINGS[rope_type], "original_max_position_embeddings": 8192}
    rope = get_rope(128, 1.0, 131072, 500000.0, scaling).to(DEVICE)
    qkv, positions = make_case(num_tokens, 32, 8, 128, dtype, 131072)
    q, k, _ = split_heads(qkv, 32, 8, 128)
    want_q, want_k = rope(positions, q.flatten(1), k.flatten(1))
    rotary.rotary_embedding(positions, q, k, rope.cos_sin_cache, rope.rotary_dim)
    assert torch.equal(q.flatten(1), want_q) and torch.equal(k.flatten(1), want_k)


@pytest.mark.gpu
def test_gpu_partial_rotary_many_heads():
    rope = get_rope(128, 0.5, 4096, 10000.0, None).to(DEVICE)
    qkv, positions = make_case(300, 64, 8, 128, torch.bfloat16, 4096)
    q, k, _ = split_heads(qkv, 64, 8, 128)
    want_q, want_k = rope(positions, q.flatten(1), k.flatten(1))
    rotary.rotary_embedding(positions, q, k, rope.cos_sin_cache, rope.rotary_dim)
    assert torch.equal(q.flatten(1), want_q) and torch.equal(k.flatten(1), want_k)
