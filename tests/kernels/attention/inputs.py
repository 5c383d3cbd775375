"""Paged attention inputs for the kernel tests: shuffled blocks, NaN everywhere nothing was written.

Every cache slot that no sequence owns is NaN, block tables are padded with the id of a block that
is all NaN, and outputs start as NaN: a kernel that reads a wrong slot or skips a write shows NaN.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from kernels.attention.reference import write_kv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter runs Triton on the CPU

# Elementwise (atol = rtol) and relative-norm tolerances vs the float32 reference.
TOLERANCE = {torch.float32: (1e-4, 1e-5), torch.float16: (4e-3, 2e-3), torch.bfloat16: (3e-2, 1e-2)}


@dataclass
class PagedBatch:
    query: torch.Tensor  # [T, Hq, D]
    key: torch.Tensor  # [T, Hkv, D], the new tokens' K (also in the cache)
    value: torch.Tensor  # [T, Hkv, D]
    k_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor
    query_start_loc: torch.Tensor  # [B+1] int32
    seq_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with an all-NaN block
    max_query_len: int
    context_keys: list[torch.Tensor]  # per sequence, K of all its context tokens `[L_b, Hkv, D]`
    context_values: list[torch.Tensor]


def build_paged_batch(seq_lens: list[int], query_lens: list[int], num_heads: int, num_kv_heads: int,
                      head_dim: int, block_size: int, dtype: torch.dtype, device: str = DEVICE,
                      seed: int = 0) -> PagedBatch:
    """Random K/V for every context token written into blocks taken in shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    free = list(range(num_blocks))
    random.Random(seed).shuffle(free)
    pad_block = free.pop(0)  # never written: all NaN
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    block_tables = torch.full((len(seq_lens), max(blocks_per_seq) + 2), pad_block, dtype=torch.int32)
    queries, keys, values = [], [], []
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
    new_keys = [k[len(k) - n:] for k, n in zip(keys, query_lens, strict=True)]
    new_values = [v[len(v) - n:] for v, n in zip(values, query_lens, strict=True)]
    return PagedBatch(
        torch.cat(queries).to(device), torch.cat(new_keys).to(device), torch.cat(new_values).to(device),
        k_cache.to(device), v_cache.to(device), query_start_loc.to(device),
        torch.tensor(seq_lens, dtype=torch.int32, device=device), block_tables.to(device), max(query_lens),
        [k.to(device) for k in keys], [v.to(device) for v in values])


def assert_attention_close(out: torch.Tensor, expected: torch.Tensor) -> None:
    """Elementwise and relative-norm comparison with the dtype's tolerance; NaN never passes."""
    assert not out.isnan().any(), "NaN in the output: a poisoned slot was read or a row was not written"
    atol, rel = TOLERANCE[out.dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=atol, rtol=atol)
    error = (out.double() - expected.double()).norm() / expected.double().norm()
    assert error < rel, f"relative error {error:.2e} >= {rel:.0e}"


def check_backend_choice(monkeypatch, call, expected: torch.Tensor, **auto_kwargs) -> None:
    """`call(**kwargs)` is an attention entry point with its inputs bound. auto: Triton on CUDA, the
    reference on the CPU (exactly); `SLUICE_ATTENTION_BACKEND` triton and torch force one; with
    `out` given, the result is written there."""
    monkeypatch.delenv("SLUICE_ATTENTION_BACKEND", raising=False)
    monkeypatch.delenv("SLUICE_KERNELS", raising=False)
    auto = call(**auto_kwargs)
    if expected.is_cuda:
        assert_attention_close(auto, expected)
    else:
        assert torch.equal(auto, expected)
    monkeypatch.setenv("SLUICE_ATTENTION_BACKEND", "triton")
    assert_attention_close(call(), expected)
    monkeypatch.setenv("SLUICE_ATTENTION_BACKEND", "torch")
    out = torch.full_like(expected, float("nan"))
    assert call(out=out) is out and torch.equal(out, expected)
