"""Triton GEMV for batch-1 decode: `y[M, N] = x[M, K] @ W[N, K]^T`, efficient for M = 1.

At batch 1 a decoder step is a chain of matrix-vector products whose cost is reading W once.
Each program owns `BLOCK_N` output features of one row of x and walks all of K, streaming its rows
of W once (`evict_first`) and accumulating elementwise in float32, reduced once at the end: one
kernel, no split-K reduction pass, no atomics, so the result does not depend on the tiling. Rows of
x are independent programs (grid axis 1), each reading W again: right for one row, wasteful beyond.

With programmatic dependent launch (`kernels/pdl.py`) a program loads its first weight tile before
`gdc_wait()`, while the kernel before it is still finishing. The later tiles come one of two ways
(`STAGES`): with 1, each tile is loaded into registers one iteration ahead of its use; with 2 or more,
Triton's software pipeliner streams them through shared memory (`cp.async`), `STAGES - 1` tiles in
flight, which holds no registers for tiles in flight and so lets more programs stay resident.

`GATED` fuses SiLU-and-mul into the load of x: x is then `[M, 2K]` (gate | up) and the product uses
`silu(gate) * up` with the rounding of `kernels.activation` (silu rounded to the dtype, then the
product rounded), so an MLP's down projection needs no separate activation kernel.

Imported on first use by `kernels.gemv`, which checks the operands and holds the torch reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import pdl


def pick_config(n: int, k: int, gated: bool = False) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, STAGES) for an `[n, k]` weight, chosen inside the H200's batch-1
    decode graph at the Llama-3-8B shapes (`benchmarks/results/2026-11-29-session8`). Plain products
    (qkv, o, gate_up, LM head): 2 features per program and 2048-wide K tiles through the shared-memory
    pipeline, 4 warps, so each program asks for all of its first 8 KB at once and many programs are in
    flight (3.80 against 3.96 ms per step with the register tiles below). Gated products (the down
    projection, which computes SiLU-and-mul as it loads x) keep register tiles: the pipeline made
    them slower (a second x stream through shared memory). Up to 4096 outputs 8 features and 8
    warps, wider weights 4 features and 4 warps, K tiles of up to 512 / 1024."""
    if not gated:
        return 2, min(2048, triton.next_power_of_2(k)), 4, 2
    if n <= 4096:
        return 8, min(512, triton.next_power_of_2(k)), 8, 1
    return 4, (1024 if k % 1024 == 0 else min(512, triton.next_power_of_2(k))), 4, 1


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gated: bool,
                config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """x `[M, K]` (or `[M, 2K]` when `gated`), weight `[N, K]` contiguous, bias `[N]` or None;
    `config` as `pick_config` returns it."""
    num_rows = x.shape[0]
    n, k = weight.shape
    out = torch.empty((num_rows, n), dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out
    block_n, block_k, num_warps, stages = config or pick_config(n, k, gated)
    _gemv_kernel[(triton.cdiv(n, block_n), num_rows)](
        x, weight, bias if bias is not None else weight, out, n, k, x.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=k % block_k == 0, HAS_BIAS=bias is not None, GATED=gated,
        STAGES=stages, num_warps=num_warps, num_stages=stages, **pdl.launch_options(x.device))
    return out


@triton.jit
def _load_x(x_row, cols, mask, k, GATED: tl.constexpr):
    """x[cols] of one row as float32; with GATED, silu(gate) * up rounded as torch rounds it."""
    dtype = x_row.dtype.element_ty
    if GATED:
        gate = tl.load(x_row + cols, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
        up = tl.load(x_row + k + cols, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        return (silu * up).to(dtype).to(tl.float32)
    return tl.load(x_row + cols, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)


@triton.jit
def _load_w(w_ptrs, feature_mask, cols, k, EVEN_K: tl.constexpr):
    """One `[BLOCK_N, BLOCK_K]` weight tile; without a K mask when K divides evenly (16-byte loads)."""
    if EVEN_K:
        return tl.load(w_ptrs, mask=feature_mask[:, None], other=0.0, eviction_policy="evict_first")
    return tl.load(w_ptrs, mask=feature_mask[:, None] & (cols < k)[None, :], other=0.0,
                   eviction_policy="evict_first")


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, n, k, x_row_stride,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                 GATED: tl.constexpr, STAGES: tl.constexpr, USE_PDL: tl.constexpr):
    pdl.allow_next(USE_PDL)
    row = tl.program_id(1).to(tl.int64)
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # output columns this program owns
    cols = tl.arange(0, BLOCK_K)
    feature_mask = features < n
    w_ptrs = w_ptr + features[:, None].to(tl.int64) * k + cols[None, :]  # [BLOCK_N, BLOCK_K]
    w = _load_w(w_ptrs, feature_mask, cols, k, EVEN_K)  # weights: readable before the previous kernel ends
    pdl.wait_previous(USE_PDL)
    x_row = x_ptr + row * x_row_stride
    if STAGES == 1:  # later tiles in registers, one ahead
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        last = tl.cdiv(k, BLOCK_K) * BLOCK_K - BLOCK_K  # start of the last tile
        for start in range(0, last, BLOCK_K):
            w_next = _load_w(w_ptrs + start + BLOCK_K, feature_mask, start + BLOCK_K + cols, k, EVEN_K)  # a tile ahead
            acc += w.to(tl.float32) * _load_x(x_row, start + cols, start + cols < k, k, GATED)[None, :]
            w = w_next
        acc += w.to(tl.float32) * _load_x(x_row, last + cols, last + cols < k, k, GATED)[None, :]
    else:  # later tiles through Triton's shared-memory pipeline, STAGES - 1 in flight
        acc = w.to(tl.float32) * _load_x(x_row, cols, cols < k, k, GATED)[None, :]
        for start in tl.range(BLOCK_K, k, BLOCK_K, num_stages=STAGES):
            tile = _load_w(w_ptrs + start, feature_mask, start + cols, k, EVEN_K)
            acc += tile.to(tl.float32) * _load_x(x_row, start + cols, start + cols < k, k, GATED)[None, :]
    result = tl.sum(acc, axis=1)  # [BLOCK_N]
    if HAS_BIAS:
        result += tl.load(bias_ptr + features, mask=feature_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * n + features, result.to(y_ptr.dtype.element_ty), mask=feature_mask)
