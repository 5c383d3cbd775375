"""Triton skinny GEMM for decode: `y[M, N] = x[M, K] @ W[N, K]^T` with M <= 4 rows.

At batch 1 a decoder step is a chain of matrix-vector products whose cost is reading W once. cuBLAS
splits K for the smaller ones (qkv and o of an 8B model), which costs a second reduction kernel and
reaches about 73% of the bandwidth. Here each program owns `BLOCK_N` output features and walks all of
K, streaming its rows of W once (`evict_first`) and accumulating in float32, so there is one kernel,
no reduction pass and no atomics: the result does not depend on the launch configuration.

`GATED` fuses SiLU-and-mul into the load of x: x is then `[M, 2K]` (gate | up) and the product uses
`silu(gate) * up` with the rounding of `kernels.activation` (silu rounded to the dtype, then the
product rounded), so the down projection of an MLP needs no separate activation kernel.

Imported on first use by `kernels.gemv`, which checks the operands and holds the torch reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

def block_m(num_rows: int) -> int:
    """The compiled row count that serves `num_rows` (1, 2 or 4): three variants per shape."""
    return 1 if num_rows <= 1 else 2 if num_rows <= 2 else 4


def pick_config(n: int, k: int, rows: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for an `[n, k]` weight and `rows` (1, 2 or 4)."""
    block_k = 512 if k % 512 == 0 else 256 if k % 256 == 0 else 128
    block_n = 16 if rows == 1 else 8
    return block_n, block_k, 4, 3


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gated: bool,
                config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """x `[M, K]` (or `[M, 2K]` when `gated`), weight `[N, K]` contiguous, bias `[N]` or None."""
    num_rows = x.shape[0]
    n, k = weight.shape
    out = torch.empty((num_rows, n), dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out
    rows = block_m(num_rows)
    block_n, block_k, num_warps, num_stages = config or pick_config(n, k, rows)
    grid = (triton.cdiv(n, block_n),)
    _gemv_kernel[grid](x, weight, bias if bias is not None else weight, out, num_rows, n, k, x.stride(0),
                       BLOCK_M=rows, BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=k % block_k == 0,
                       HAS_BIAS=bias is not None, GATED=gated, num_warps=num_warps, num_stages=num_stages)
    return out


@triton.jit
def _load_x(x_ptr, rows, cols, mask, x_row_stride, k, GATED: tl.constexpr):
    """x[rows, cols] as float32, `[BLOCK_M, BLOCK_K]`; with GATED, silu(gate) * up rounded as torch does."""
    dtype = x_ptr.dtype.element_ty
    offsets = rows[:, None].to(tl.int64) * x_row_stride + cols[None, :]
    if GATED:
        gate = tl.load(x_ptr + offsets, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
        up = tl.load(x_ptr + offsets + k, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        return (silu * up).to(dtype).to(tl.float32)
    return tl.load(x_ptr + offsets, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, num_rows, n, k, x_row_stride,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                 HAS_BIAS: tl.constexpr, GATED: tl.constexpr):
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # output columns this program owns
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    feature_mask = features < n
    w_ptrs = w_ptr + features[:, None].to(tl.int64) * k + cols[None, :]
    if BLOCK_M == 1:
        # One row: accumulate products elementwise and reduce once at the end (no shuffles in the loop).
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        if EVEN_K:
            x_mask = (rows < num_rows)[:, None]
            w = tl.load(w_ptrs, mask=feature_mask[:, None], other=0.0, eviction_policy="evict_first")
        else:
            in_k = start + cols < k
            x_mask = (rows < num_rows)[:, None] & in_k[None, :]
            w = tl.load(w_ptrs, mask=feature_mask[:, None] & in_k[None, :], other=0.0,
                        eviction_policy="evict_first")
        x = _load_x(x_ptr, rows, start + cols, x_mask, x_row_stride, k, GATED)  # [BLOCK_M, BLOCK_K]
        w = w.to(tl.float32)
        if BLOCK_M == 1:
            acc += w * x  # [BLOCK_N, BLOCK_K] * [1, BLOCK_K]
        else:
            acc += tl.sum(w[None, :, :] * x[:, None, :], axis=2)
        w_ptrs += BLOCK_K
    if BLOCK_M == 1:
        result = tl.sum(acc, axis=1)[None, :]  # [1, BLOCK_N]
    else:
        result = acc
    if HAS_BIAS:
        result += tl.load(bias_ptr + features, mask=feature_mask, other=0.0).to(tl.float32)[None, :]
    out_mask = (rows < num_rows)[:, None] & feature_mask[None, :]
    tl.store(y_ptr + rows[:, None].to(tl.int64) * n + features[None, :], result.to(y_ptr.dtype.element_ty),
             mask=out_mask)
