"""Triton `write_kv` vs the pure-torch reference (under TRITON_INTERPRET=1 when there is no GPU)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.elementwise import kv_write

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True, scope="module")
def triton_can_run():
    if DEVICE == "cpu":
        from kernels.elementwise import triton_kernels as elementwise_triton

        assert type(elementwise_triton._write_kv_kernel).__name__ == "InterpretedFunction", \
            "kernels.elementwise.triton_kernels was imported before TRITON_INTERPRET=1 was set"


def make_case(num_tokens: int, num_kv_heads: int, head_dim: int, block_size: int, num_blocks: int,
              dtype: torch.dtype, num_skipped: int, packed: bool, seed: int = 0):
    """key/value `[T, Hkv, D]` (views of one packed `[T, 3, Hkv*D]` tensor when `packed`), random
    caches, and distinct slots of which `num_skipped` (at random rows) are -1."""
    gen = torch.Generator(DEVICE).manual_seed(seed)
    shape = (num_tokens, num_kv_heads, head_dim)
    if packed:
        kv = torch.randn(num_tokens, 3 * num_kv_heads * head_dim, generator=gen, device=DEVICE).to(dtype)
        key = kv[:, : num_kv_heads * head_dim].view(shape)
        value = kv[:, 2 * num_kv_heads * head_dim:].view(shape)
    else:
        key = torch.randn(shape, generator=gen, device=DEVICE).to(dtype)
        value = torch.randn(shape, generator=gen, device=DEVICE).to(dtype)
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(cache_shape, generator=gen, device=DEVICE).to(dtype)
    v_cache = torch.randn(cache_shape, generator=gen, device=DEVICE).to(dtype)
    slots = torch.randperm(num_blocks * block_size, generator=gen, device=DEVICE)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=gen, device=DEVICE)[:num_skipped]] = -1
    return [key, value, k_cache, v_cache, slots]


def run_both(key, value, k_cache, v_cache, slots):
    """(k_cache, v_cache) after the Triton kernel and after the reference, from the same start."""
    got = (k_cache.clone(), v_cache.clone())
    want = (k_cache.clone(), v_cache.clone())
    kv_write._triton_impl(key, value, *got, slots)
    kv_write._torch_impl(key, value, *want, slots)
    return got, want


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("num_tokens,num_kv_heads,head_dim,block_size,num_blocks,num_skipped,packed", [
    (1, 1, 8, 4, 2, 0, False),
    (7, 2, 16, 16, 3, 2, True),
    (5, 3, 24, 5, 4, 1, False),
    (6, 1, 40, 3, 3, 6, True),
    (3, 4, 64, 16, 2, 0, True),  # 256 channels a token
])
def test_matches_reference(dtype, slot_dtype, num_tokens, num_kv_heads, head_dim, block_size, num_blocks,
                           num_skipped, packed):
    key, value, k_cache, v_cache, slots = make_case(num_tokens, num_kv_heads, head_dim, block_size,
                                                    num_blocks, dtype, num_skipped, packed)
    slots = slots.to(slot_dtype)
    (k_got, v_got), (k_want, v_want) = run_both(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_got, k_want) and torch.equal(v_got, v_want)
    written = slots[slots >= 0].long()
    assert torch.equal(k_got.flatten(0, 1)[written], key[slots >= 0])
    untouched = torch.ones(k_cache.shape[0] * k_cache.shape[1], dtype=torch.bool, device=DEVICE)
    untouched[written] = False
    assert torch.equal(v_got.flatten(0, 1)[untouched], v_cache.flatten(0, 1)[untouched])


def test_rows_wider_than_one_block():
    """Hkv * D = 2560 > the 2048-channel block: two programs per token."""
    key, value, k_cache, v_cache, slots = make_case(3, 5, 512, 2, 3, torch.float16, 1, packed=True)
    (k_got, v_got), (k_want, v_want) = run_both(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_got, k_want) and torch.equal(v_got, v_want)


def test_no_tokens_is_a_no_op():
    key, value, k_cache, v_cache, slots = make_case(0, 2, 8, 4, 2, torch.float32, 0, packed=False)
    (k_got, v_got), _ = run_both(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_got, k_cache) and torch.equal(v_got, v_cache)


def test_dispatch(monkeypatch):
    """CPU tensors (or SLUICE_KERNELS=torch) take the reference; otherwise the Triton launcher."""
    calls = []
    monkeypatch.setattr(kv_write, "_triton_impl", lambda *args: calls.append("triton"))
    monkeypatch.setattr(kv_write, "_torch_impl", lambda *args: calls.append("torch"))
    args = make_case(2, 1, 8, 4, 2, torch.float32, 0, packed=False)
    monkeypatch.setenv("SLUICE_KERNELS", "torch")
    kv_write.write_kv(*args)
    monkeypatch.delenv("SLUICE_KERNELS")
    kv_write.write_kv(*args)
    assert calls == ["torch", "triton" if DEVICE == "cuda" else "torch"]


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda a: (a[0].half(), *a[1:]), id="key-dtype"),
    pytest.param(lambda a: (a[0].transpose(1, 2).contiguous().transpose(1, 2), *a[1:]), id="key-head-stride"),
    pytest.param(lambda a: (*a[:4], a[4].float()), id="float-slots"),
    pytest.param(lambda a: (*a[:4], a[4][:-1]), id="slots-length"),
    pytest.param(lambda a: (a[0], a[1], a[2].transpose(0, 1), *a[3:]), id="strided-cache"),
])
def test_launch_asserts(mutate):
    args = make_case(3, 2, 8, 4, 4, torch.float32, 0, packed=False)  # square cache: transpose keeps the shape
    with pytest.raises(AssertionError):
        kv_write.write_kv(*mutate(args))


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", [1, 333, 8192])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_llama8b_shapes(num_tokens, dtype):
    """Llama-3-8B: 8 KV heads of 128, block size 16, a packed qkv projection, some padding slots."""
    args = make_case(num_tokens, 8, 128, 16, 1024, dtype, num_tokens // 7, packed=True)
    (k_got, v_got), (k_want, v_want) = run_both(*args)
    assert torch.equal(k_got, k_want) and torch.equal(v_got, v_want)


@pytest.mark.gpu
def test_gpu_cuda_graph_replay():
    """Captured once, replayed with new keys and slots (incl. padding): no host sync, fresh results."""
    key, value, k_cache, v_cache, slots = make_case(64, 8, 128, 16, 64, torch.bfloat16, 8, packed=False)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    kv_write.write_kv(key, value, k_cache, v_cache, slots)  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kv_write.write_kv(key, value, k_cache, v_cache, slots)
    new_key, new_value, _, _, new_slots = make_case(64, 8, 128, 16, 64, torch.bfloat16, 20, packed=False,
                                                    seed=1)
    key.copy_(new_key)
    value.copy_(new_value)
    slots.copy_(new_slots)
    k_cache.copy_(k_ref)
    v_cache.copy_(v_ref)
    graph.replay()
    kv_write._torch_impl(new_key, new_value, k_ref, v_ref, new_slots)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)
