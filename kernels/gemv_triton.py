"""Triton matrix-vector products with a fused prologue (see `kernels/gemv.py` for the entry points).

Grid `(cdiv(N, BLOCK_N), cdiv(M, BLOCK_M))`: each program owns `BLOCK_N` output columns of up to
`BLOCK_M` rows and streams its `[BLOCK_N, K]` slice of the weight once, `BLOCK_K` channels at a time,
with no split over K (so no reduction launch and no atomics). The input rows are small and every
program reads them (from L2 after the first), applying the prologue on the fly:

- `none`: the rows as they are;
- `rms_norm`: a first pass over the row sums the squares of `h = x + residual` (rounded to the dtype,
  as `kernels/rmsnorm.py` rounds it); the main loop normalises each chunk the same way. Programs of
  the first column block also store `h`, the next residual;
- `silu_and_mul`: `silu(gate)` rounded to the dtype, times `up`, rounded again (`kernels/activation.py`).

Products accumulate in float32 (`BLOCK_M x BLOCK_N x BLOCK_K` elementwise, then a sum over K) and the
result is rounded once, plus the bias in float32. No launcher reads a tensor on the host, so every
launch can be captured in a CUDA graph.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

PROLOGUES = {"none": 0, "rms_norm": 1, "silu_and_mul": 2}

# (BLOCK_N, BLOCK_K at BLOCK_M = 1, num_warps, num_stages); BLOCK_K halves as BLOCK_M doubles.
DEFAULT_CONFIG = (8, 512, 4, 4)


def gemv_triton(prologue: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                residual: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
                eps: float = 0.0, new_residual: torch.Tensor | None = None,
                config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """`[M, N]` output of one launch; `new_residual [M, K]` is written when a residual is given."""
    num_rows = x.shape[0]
    n, k = weight.shape
    out = torch.empty((num_rows, n), dtype=x.dtype, device=x.device)
    if num_rows == 0 or n == 0:
        return out
    block_n, block_k, num_warps, num_stages = config or DEFAULT_CONFIG
    block_m = min(triton.next_power_of_2(num_rows), 4)
    block_k = max(16, min(block_k // block_m, triton.next_power_of_2(k)))
    has_residual = residual is not None
    grid = (triton.cdiv(n, block_n), triton.cdiv(num_rows, block_m))
    _gemv_kernel[grid](
        x, residual if has_residual else x, norm_weight if norm_weight is not None else weight, weight,
        bias if bias is not None else weight, out, new_residual if has_residual else out,
        num_rows, n, k, x.stride(0), residual.stride(0) if has_residual else 0, eps,
        PROLOGUE=PROLOGUES[prologue], HAS_RESIDUAL=has_residual, HAS_BIAS=bias is not None,
        EVEN_N=n % block_n == 0, EVEN_K=k % block_k == 0,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages)
    return out


@triton.jit
def _load_input(x_ptr, res_ptr, norm_w_ptr, rows, cols, mask, x_row_stride, res_row_stride, k, rstd,
                PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """`[BLOCK_M, BLOCK_K]` chunk of the projection's input, in the dtype, and `h` (rms_norm only)."""
    dtype = x_ptr.dtype.element_ty
    x_rows = x_ptr + rows[:, None].to(tl.int64) * x_row_stride
    if PROLOGUE == 2:
        gate = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        up = tl.load(x_rows + k + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        value = (silu * up).to(dtype)
        return value, value
    h = tl.load(x_rows + cols[None, :], mask=mask, other=0.0)
    if PROLOGUE == 0:
        return h, h
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + rows[:, None].to(tl.int64) * res_row_stride + cols[None, :], mask=mask, other=0.0)
        h = (h.to(tl.float32) + r.to(tl.float32)).to(dtype)
    normed = (h.to(tl.float32) * rstd[:, None]).to(dtype)
    w = tl.load(norm_w_ptr + cols, mask=cols < k, other=0.0)
    return (normed.to(tl.float32) * w.to(tl.float32)[None, :]).to(dtype), h


@triton.jit
def _gemv_kernel(x_ptr, res_ptr, norm_w_ptr, w_ptr, bias_ptr, out_ptr, new_res_ptr,
                 num_rows, n, k, x_row_stride, res_row_stride, eps,
                 PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
                 EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    row_mask = rows < num_rows
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_k = tl.arange(0, BLOCK_K)
    dtype = x_ptr.dtype.element_ty

    rstd = tl.zeros([BLOCK_M], dtype=tl.float32)
    if PROLOGUE == 1:  # first pass: mean square of h per row
        squares = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, k, BLOCK_K):
            cols = k0 + offs_k
            mask = row_mask[:, None] & (cols < k)[None, :]
            h = tl.load(x_ptr + rows[:, None].to(tl.int64) * x_row_stride + cols[None, :], mask=mask, other=0.0)
            if HAS_RESIDUAL:
                r = tl.load(res_ptr + rows[:, None].to(tl.int64) * res_row_stride + cols[None, :], mask=mask,
                            other=0.0)
                h = (h.to(tl.float32) + r.to(tl.float32)).to(dtype)
            h32 = h.to(tl.float32)
            squares += h32 * h32
        rstd = tl.rsqrt(tl.sum(squares, axis=1) / k + eps)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * k  # [BLOCK_N, 1]
    for k0 in range(0, k, BLOCK_K):
        cols = k0 + offs_k
        if EVEN_N and EVEN_K:
            w = tl.load(w_rows + cols[None, :])
        else:
            w = tl.load(w_rows + cols[None, :], mask=(offs_n < n)[:, None] & (cols < k)[None, :], other=0.0)
        x_mask = row_mask[:, None] & (cols < k)[None, :]
        x, h = _load_input(x_ptr, res_ptr, norm_w_ptr, rows, cols, x_mask, x_row_stride, res_row_stride, k,
                           rstd, PROLOGUE, HAS_RESIDUAL)
        if PROLOGUE == 1 and HAS_RESIDUAL:  # noqa: SIM102 (a constexpr test, then a runtime one)
            if pid_n == 0:
                tl.store(new_res_ptr + rows[:, None].to(tl.int64) * k + cols[None, :], h, mask=x_mask)
        acc += tl.sum(w.to(tl.float32)[None, :, :] * x.to(tl.float32)[:, None, :], axis=2)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + rows[:, None].to(tl.int64) * n + offs_n[None, :]
    tl.store(out_ptrs, acc.to(dtype), mask=row_mask[:, None] & (offs_n < n)[None, :])
