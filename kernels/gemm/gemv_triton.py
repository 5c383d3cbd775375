"""Triton GEMV for batch-1 decode: `y[M, N] = x[M, K] @ W[N, K]^T`, efficient for M = 1.

At batch 1 a decoder step is a chain of matrix-vector products whose cost is reading W once.
Each program owns `BLOCK_N` output features of one row of x and walks all of K, streaming its rows
of W once (`evict_first`) and accumulating elementwise in float32, reduced once at the end: one
kernel, no split-K reduction pass, no atomics, so the result does not depend on the tiling. Rows of
x are independent programs (grid axis 1), each reading W again: right for one row, wasteful beyond.

With programmatic dependent launch (`kernels/runtime/pdl.py`) a program loads its first weight tile before
`gdc_wait()`, while the kernel before it is still finishing. The later tiles come one of two ways
(`STAGES`): with 1, each tile is loaded into registers one iteration ahead of its use; with 2 or more,
Triton's software pipeliner streams them through shared memory (`cp.async`), `STAGES - 1` tiles in
flight, which holds no registers for tiles in flight and so lets more programs stay resident.

`GATED` fuses SiLU-and-mul into the load of x: x is then `[M, 2K]` (gate | up) and the product uses
`silu(gate) * up` with the rounding of `kernels.elementwise.activation` (silu rounded to the dtype, then the
product rounded), so an MLP's down projection needs no separate activation kernel.

Imported on first use by `kernels.gemm.gemv`, which checks the operands and holds the torch reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.runtime import pdl


def pick_config(n: int, k: int, gated: bool = False) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, STAGES) for an `[n, k]` weight, chosen on the H200 inside the
    batch-1 decode graph replayed for seconds, as serving runs it: under that load an H200 can reach
    its 700 W power cap and lower its clocks, so a tile that is fastest right after idling can lose
    (`benchmarks/results/2026-11-29-session8`). Plain products (qkv, o, gate_up, LM head): 4
    features per program, 1024-wide K tiles, 4 warps, the later tiles through the shared-memory
    pipeline: 3.93-3.95 against 4.03 ms per step with register tiles (2 x 2048 tiles: 3.86 ms
    after idling, 4.01 sustained). Gated products (the down projection, which computes SiLU-and-mul
    as it loads x) keep register tiles, 8 features and 8 warps up to 4096 outputs: every pipelined
    tile tried was slower (x then streams through shared memory as well)."""
    block_k = 1024 if k % 1024 == 0 else min(512, triton.next_power_of_2(k))
    if not gated:
        return 4, block_k, 4, 2
    if n <= 4096:
        return 8, min(512, triton.next_power_of_2(k)), 8, 1
    return 4, block_k, 4, 1


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
def _load_w(w_ptr, features, feature_mask, start, cols, k, EVEN_K: tl.constexpr):
    """The `[BLOCK_N, BLOCK_K]` weight tile at K offset `start`; without a K mask when K divides evenly
    (16-byte loads). The addresses are formed here, at each use: with 2 x 2048 tiles a pointer tile
    kept live across the pipelined loop cost 16 registers a thread (72 against 56), room for 7
    instead of 9 programs of 4 warps per SM, and the batch-1 step 4.07 against 3.83 ms."""
    w_ptrs = w_ptr + features[:, None].to(tl.int64) * k + start + cols[None, :]
    if EVEN_K:
        return tl.load(w_ptrs, mask=feature_mask[:, None], other=0.0, eviction_policy="evict_first")
    return tl.load(w_ptrs, mask=feature_mask[:, None] & (start + cols < k)[None, :], other=0.0,
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
    w = _load_w(w_ptr, features, feature_mask, 0, cols, k, EVEN_K)  # weights: readable before the previous kernel ends
    pdl.wait_previous(USE_PDL)
    x_row = x_ptr + row * x_row_stride
    if STAGES == 1:  # later tiles in registers, one ahead
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        last = tl.cdiv(k, BLOCK_K) * BLOCK_K - BLOCK_K  # start of the last tile
        for start in range(0, last, BLOCK_K):
            w_next = _load_w(w_ptr, features, feature_mask, start + BLOCK_K, cols, k, EVEN_K)  # a tile ahead
            acc += w.to(tl.float32) * _load_x(x_row, start + cols, start + cols < k, k, GATED)[None, :]
            w = w_next
        acc += w.to(tl.float32) * _load_x(x_row, last + cols, last + cols < k, k, GATED)[None, :]
    else:  # later tiles through Triton's shared-memory pipeline, STAGES - 1 in flight
        acc = w.to(tl.float32) * _load_x(x_row, cols, cols < k, k, GATED)[None, :]
        for start in tl.range(BLOCK_K, k, BLOCK_K, num_stages=STAGES):
            tile = _load_w(w_ptr, features, feature_mask, start, cols, k, EVEN_K)
            acc += tile.to(tl.float32) * _load_x(x_row, start + cols, start + cols < k, k, GATED)[None, :]
    result = tl.sum(acc, axis=1)  # [BLOCK_N]
    if HAS_BIAS:
        result += tl.load(bias_ptr + features, mask=feature_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * n + features, result.to(y_ptr.dtype.element_ty), mask=feature_mask)
