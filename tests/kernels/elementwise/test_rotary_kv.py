"""Triton `rotary_and_write_kv` (rotary embedding fused with the KV-cache write) vs the two unfused
references, and bit for bit vs the two unfused Triton kernels (TRITON_INTERPRET=1 on CPU)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.elementwise import kv_write, rotary, rotary_kv
from services.worker.layers.rotary import get_rope

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The interpreter rounds float32 -> bfloat16 differently from torch (one bf16 ulp); everything else,
# and every dtype on a GPU, matches the reference bit for bit.
BF16_INTERPRETER_TOLERANCE = 1.6e-2
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}
MAX_POSITION = 128


@pytest.fixture(autouse=True, scope="module")
def triton_can_run():
    if DEVICE == "cpu":
        from kernels.elementwise import triton_kernels as elementwise_triton

        assert type(elementwise_triton._rotary_kv_kernel).__name__ == "InterpretedFunction", \
            "kernels.elementwise.triton_kernels was imported before TRITON_INTERPRET=1 was set"


class Case:
    """A packed qkv `[T, (Hq + 2 Hkv) D]`, positions `[T]`, random caches `[N, block_size, Hkv, D]`,
    and distinct slots `[T]` of which `num_skipped` (at random rows) are -1."""

    def __init__(self, num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, partial: float,
                 dtype: torch.dtype, num_skipped: int = 0, block_size: int = 4, num_blocks: int = 4,
                 scaling: dict | None = None, seed: int = 0):
        gen = torch.Generator(DEVICE).manual_seed(seed)
        self.sizes = (num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim)
        self.head_dim = head_dim
        self.rope = get_rope(head_dim, partial, MAX_POSITION, 10000.0, scaling).to(DEVICE)
        self.qkv = torch.randn(num_tokens, sum(self.sizes), generator=gen, device=DEVICE).to(dtype)
        self.positions = torch.randint(0, MAX_POSITION, (num_tokens,), generator=gen, device=DEVICE)
        cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.k_cache = torch.randn(cache_shape, generator=gen, device=DEVICE).to(dtype)
        self.v_cache = torch.randn(cache_shape, generator=gen, device=DEVICE).to(dtype)
        self.slots = torch.randperm(num_blocks * block_size, generator=gen, device=DEVICE)[:num_tokens]
        self.slots[torch.randperm(num_tokens, generator=gen, device=DEVICE)[:num_skipped]] = -1

    def fresh(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Copies of (qkv, k_cache, v_cache) for one implementation to mutate."""
        return self.qkv.clone(), self.k_cache.clone(), self.v_cache.clone()

    def views(self, qkv: torch.Tensor) -> list[torch.Tensor]:
        """q `[T, Hq, D]`, k and v `[T, Hkv, D]`: strided views of the packed rows (as in the model)."""
        return [t.unflatten(-1, (-1, self.head_dim)) for t in qkv.split(self.sizes, dim=-1)]

    def run(self, impl) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(qkv, k_cache, v_cache) after `impl(positions, q, k, v, k_cache, v_cache, slots, cache, R)`."""
        qkv, k_cache, v_cache = self.fresh()
        impl(self.positions, *self.views(qkv), k_cache, v_cache, self.slots, self.rope.cos_sin_cache,
             self.rope.rotary_dim)
        return qkv, k_cache, v_cache


def separately(rotate, write):
    """The unfused pair, `rotate(positions, q, k, cache, R)` then `write(k, v, k_cache, v_cache, slots)`."""
    def impl(positions, query, key, value, k_cache, v_cache, slots, cos_sin_cache, rotary_dim):
        rotate(positions, query, key, cos_sin_cache, rotary_dim)
        write(key, value, k_cache, v_cache, slots)
    return impl


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Triton vs the torch reference: equal, but within a bf16 ulp under the interpreter."""
    tolerance = BF16_INTERPRETER_TOLERANCE if DEVICE == "cpu" and want.dtype == torch.bfloat16 else 0.0
    torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)


def assert_equal(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    for name, g, w in zip(("qkv", "k_cache", "v_cache"), got, want, strict=True):
        assert torch.equal(g, w), f"{name} differs in {(g != w).sum().item()} elements"


SHAPES = [  # num_tokens, num_heads, num_kv_heads, head_dim, partial, num_skipped
    pytest.param(3, 4, 2, 16, 1.0, 0, id="gqa"),
    pytest.param(5, 3, 1, 24, 0.5, 2, id="partial-6-pairs"),  # rotary_dim 12: not a power of two
    pytest.param(4, 2, 2, 8, 0.25, 1, id="mha-quarter"),
    pytest.param(1, 6, 3, 64, 1.0, 0, id="one-token"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_tokens,num_heads,num_kv_heads,head_dim,partial,num_skipped", SHAPES)
def test_matches_reference(dtype, num_tokens, num_heads, num_kv_heads, head_dim, partial, num_skipped):
    """Rotated q/k (in the packed rows) and both caches agree with the unfused references."""
    case = Case(num_tokens, num_heads, num_kv_heads, head_dim, partial, dtype, num_skipped,
                scaling=LLAMA3_SCALING)
    got = case.run(rotary_kv._triton_impl)
    want = case.run(rotary_kv._torch_impl)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w)
    # v and the channels of q and k past rotary_dim are left untouched.
    for got_part, original in zip(case.views(got[0]), case.views(case.qkv), strict=True):
        assert torch.equal(got_part[..., case.rope.rotary_dim:], original[..., case.rope.rotary_dim:])
    assert torch.equal(case.views(got[0])[2], case.views(case.qkv)[2])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_tokens,num_heads,num_kv_heads,head_dim,partial,num_skipped", SHAPES)
def test_bit_identical_to_the_separate_kernels(dtype, num_tokens, num_heads, num_kv_heads, head_dim, partial,
                                               num_skipped):
    """Same rounding as `rotary_embedding` then `write_kv`: every bit of q, k, v and both caches."""
    case = Case(num_tokens, num_heads, num_kv_heads, head_dim, partial, dtype, num_skipped, seed=1)
    got = case.run(rotary_kv._triton_impl)
    assert_equal(got, case.run(separately(rotary._triton_impl, kv_write._triton_impl)))
    # The public entry points (Triton on a GPU, the references here) take the same layouts.
    assert_equal(case.run(rotary_kv.rotary_and_write_kv),
                 case.run(separately(rotary.rotary_embedding, kv_write.write_kv)))


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str)
def test_negative_slots_rotate_but_write_nothing(index_dtype):
    """Skipped tokens still have q/k rotated; only the written slots' cache rows change, and those hold
    the rotated key and the value (partial rotary: the pass-through channels too)."""
    case = Case(6, 4, 2, 16, 0.5, torch.float16, num_skipped=3, block_size=3, num_blocks=4, seed=2)
    case.positions, case.slots = case.positions.to(index_dtype), case.slots.to(index_dtype)
    qkv, k_cache, v_cache = case.run(rotary_kv._triton_impl)
    want_qkv, _, _ = case.run(rotary_kv._torch_impl)
    assert_close(qkv, want_qkv)  # every row rotated, skipped ones included
    q, k, v = case.views(qkv)
    q0, k0, _ = case.views(case.qkv)
    skipped = case.slots < 0
    assert skipped.sum() == 3
    assert not torch.equal(q[skipped], q0[skipped]) and not torch.equal(k[skipped], k0[skipped])
    written = case.slots[~skipped].long()
    assert torch.equal(k_cache.flatten(0, 1)[written], k[~skipped])
    assert torch.equal(v_cache.flatten(0, 1)[written], v[~skipped])
    untouched = torch.ones(k_cache.shape[0] * k_cache.shape[1], dtype=torch.bool, device=DEVICE)
    untouched[written] = False
    assert torch.equal(k_cache.flatten(0, 1)[untouched], case.k_cache.flatten(0, 1)[untouched])
    assert torch.equal(v_cache.flatten(0, 1)[untouched], case.v_cache.flatten(0, 1)[untouched])


def test_many_heads_and_rows_wider_than_one_block():
    """40 query heads (rotary_dim 128 -> 32 heads a block: the head loop runs twice) and a KV row of
    5 * 512 = 2560 channels (> the 2048-channel block: the row loop runs twice)."""
    case = Case(2, 40, 5, 512, 0.25, torch.float16, num_skipped=1, block_size=2, num_blocks=2, seed=3)
    assert_equal(case.run(rotary_kv._triton_impl),
                 case.run(separately(rotary._triton_impl, kv_write._triton_impl)))


def test_no_tokens_is_a_no_op():
    case = Case(0, 2, 1, 8, 1.0, torch.float32)
    assert_equal(case.run(rotary_kv._triton_impl), case.fresh())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_is_the_layer_then_the_cache_write(dtype):
    """The torch path equals the RotaryEmbedding layer (HF numerics), then one row copy per kept slot."""
    case = Case(5, 4, 2, 32, 0.5, dtype, num_skipped=2, scaling=LLAMA3_SCALING, seed=4)
    qkv, k_cache, v_cache = case.run(rotary_kv._torch_impl)
    want_q, want_k, v = (t.flatten(1) for t in case.views(case.qkv.clone()))
    case.rope(case.positions, want_q, want_k)
    q, k, _ = case.views(qkv)
    assert torch.equal(q.flatten(1), want_q) and torch.equal(k.flatten(1), want_k)
    want_k_cache, want_v_cache = case.k_cache.clone(), case.v_cache.clone()
    for token, slot in enumerate(case.slots.tolist()):
        if slot >= 0:
            want_k_cache.flatten(0, 1)[slot] = want_k[token].view(2, 32)
            want_v_cache.flatten(0, 1)[slot] = v[token].view(2, 32)
    assert torch.equal(k_cache, want_k_cache) and torch.equal(v_cache, want_v_cache)


def test_dispatch(monkeypatch):
    """CPU tensors (or SLUICE_KERNELS=torch) take the reference; otherwise the Triton launcher."""
    calls = []
    monkeypatch.setattr(rotary_kv, "_triton_impl", lambda *args: calls.append("triton"))
    monkeypatch.setattr(rotary_kv, "_torch_impl", lambda *args: calls.append("torch"))
    case = Case(2, 2, 1, 16, 1.0, torch.float32)
    monkeypatch.setenv("SLUICE_KERNELS", "torch")
    case.run(rotary_kv.rotary_and_write_kv)
    monkeypatch.delenv("SLUICE_KERNELS")
    case.run(rotary_kv.rotary_and_write_kv)
    assert calls == ["torch", "triton" if DEVICE == "cuda" else "torch"]


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda a: (a[0].float(), *a[1:]), id="float-positions"),  # rotary's check
    pytest.param(lambda a: (a[0], a[1].transpose(1, 2), *a[2:]), id="query-channel-stride"),
    pytest.param(lambda a: (*a[:8], a[8] - 2), id="cache-width"),
    pytest.param(lambda a: (a[0], a[1], a[2], a[3].half(), *a[4:]), id="value-dtype"),  # write_kv's check
    pytest.param(lambda a: (*a[:6], a[6][:-1], *a[7:]), id="slots-length"),
    pytest.param(lambda a: (*a[:6], a[6].float(), *a[7:]), id="float-slots"),
    pytest.param(lambda a: (a[0], a[1], a[2].transpose(0, 1).contiguous().transpose(0, 1), *a[3:]),
                 id="key-token-major-heads"),  # a head stride the rotary allows but the cache write not
])
def test_launch_asserts(mutate):
    case = Case(3, 2, 2, 16, 1.0, torch.float32)
    qkv, k_cache, v_cache = case.fresh()
    args = (case.positions, *case.views(qkv), k_cache, v_cache, case.slots, case.rope.cos_sin_cache,
            case.rope.rotary_dim)
    rotary_kv.rotary_and_write_kv(*args)  # the unmutated call passes the checks
    with pytest.raises(AssertionError):
        rotary_kv.rotary_and_write_kv(*mutate(args))


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", [1, 333, 8192])
@pytest.mark.parametrize("partial", [1.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_llama8b_shapes(num_tokens, partial, dtype):
    """Llama-3-8B heads (32 q, 8 kv, 128 wide), block size 16, some padding slots: the fused launch
    equals the reference and the two unfused launches bit for bit."""
    case = Case(num_tokens, 32, 8, 128, partial, dtype, num_skipped=num_tokens // 7, block_size=16,
                num_blocks=1024, scaling=LLAMA3_SCALING)
    got = case.run(rotary_kv.rotary_and_write_kv)
    assert_equal(got, case.run(separately(rotary.rotary_embedding, kv_write.write_kv)))
    assert_equal(got, case.run(rotary_kv._torch_impl))


@pytest.mark.gpu
def test_gpu_cuda_graph_replay():
    """Captured once, replayed with new q/k/v, positions and slots (incl. padding): no host sync."""
    case = Case(64, 32, 8, 128, 1.0, torch.bfloat16, num_skipped=8, block_size=16, num_blocks=64)
    qkv, k_cache, v_cache = case.fresh()
    args = (case.positions, *case.views(qkv), k_cache, v_cache, case.slots, case.rope.cos_sin_cache,
            case.rope.rotary_dim)
    rotary_kv.rotary_and_write_kv(*args)  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        rotary_kv.rotary_and_write_kv(*args)
    new = Case(64, 32, 8, 128, 1.0, torch.bfloat16, num_skipped=20, block_size=16, num_blocks=64, seed=1)
    for dst, src in ((qkv, new.qkv), (k_cache, new.k_cache), (v_cache, new.v_cache),
                     (case.positions, new.positions), (case.slots, new.slots)):
        dst.copy_(src)
    graph.replay()
    assert_equal((qkv, k_cache, v_cache), new.run(rotary_kv._torch_impl))
