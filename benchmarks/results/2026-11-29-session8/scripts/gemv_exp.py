"""Experimental batch-1 GEMV variants (scratch; not part of the project until one wins)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import pdl
from kernels.gemv_triton import _load_x


@triton.jit
def _tile(w_ptr, features, feature_mask, cols, k, start):
    ptrs = w_ptr + features[:, None].to(tl.int64) * k + start + cols[None, :]
    return tl.load(ptrs, mask=feature_mask[:, None], other=0.0, eviction_policy="evict_first")


@triton.jit
def _piped_kernel(x_ptr, w_ptr, y_ptr, n, k, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  STAGES: tl.constexpr, GATED: tl.constexpr, USE_PDL: tl.constexpr):
    """One feature block per program; tile 0 before the wait; later tiles through the pipeliner."""
    pdl.allow_next(USE_PDL)
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    fmask = features < n
    w0 = _tile(w_ptr, features, fmask, cols, k, 0)
    pdl.wait_previous(USE_PDL)
    acc = w0.to(tl.float32) * _load_x(x_ptr, cols, cols < k, k, GATED)[None, :]
    for start in tl.range(BLOCK_K, k, BLOCK_K, num_stages=STAGES):
        w = _tile(w_ptr, features, fmask, cols, k, start)
        acc += w.to(tl.float32) * _load_x(x_ptr, start + cols, start + cols < k, k, GATED)[None, :]
    tl.store(y_ptr + features, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=fmask)


@triton.jit
def _persistent_kernel(x_ptr, w_ptr, y_ptr, n, k, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       STAGES: tl.constexpr, GATED: tl.constexpr, USE_PDL: tl.constexpr):
    """A balanced contiguous range of feature blocks per program, walked as one flat loop over
    (block, K tile) so the pipeline never drains between blocks."""
    pdl.allow_next(USE_PDL)
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    blocks = tl.cdiv(n, BLOCK_N)
    first = pid * blocks // programs
    last = (pid + 1) * blocks // programs
    k_tiles = k // BLOCK_K
    cols = tl.arange(0, BLOCK_K)
    rows = tl.arange(0, BLOCK_N)
    features = first * BLOCK_N + rows
    w0 = _tile(w_ptr, features, features < n, cols, k, 0)
    pdl.wait_previous(USE_PDL)
    acc = w0.to(tl.float32) * _load_x(x_ptr, cols, cols < k, k, GATED)[None, :]
    total = (last - first) * k_tiles
    for i in tl.range(1, total, num_stages=STAGES):
        block = first + i // k_tiles
        start = (i % k_tiles) * BLOCK_K
        features = block * BLOCK_N + rows
        w = _tile(w_ptr, features, features < n, cols, k, start)
        if start == 0:
            done = (block - 1) * BLOCK_N + rows
            tl.store(y_ptr + done, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=done < n)
            acc = w.to(tl.float32) * _load_x(x_ptr, cols, cols < k, k, GATED)[None, :]
        else:
            acc += w.to(tl.float32) * _load_x(x_ptr, start + cols, start + cols < k, k, GATED)[None, :]
    done = (last - 1) * BLOCK_N + rows
    tl.store(y_ptr + done, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=done < n)


def gemv_piped(x, weight, gated, block_n, block_k, stages, num_warps):
    n, k = weight.shape
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _piped_kernel[(triton.cdiv(n, block_n),)](x, weight, out, n, k, BLOCK_N=block_n, BLOCK_K=block_k,
                                              STAGES=stages, GATED=gated, num_warps=num_warps, num_stages=stages,
                                              **pdl.launch_options(x.device))
    return out


def gemv_persistent(x, weight, gated, block_n, block_k, stages, num_warps, programs):
    n, k = weight.shape
    assert k % block_k == 0
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    programs = min(programs, triton.cdiv(n, block_n))
    _persistent_kernel[(programs,)](x, weight, out, n, k, BLOCK_N=block_n, BLOCK_K=block_k, STAGES=stages,
                                    GATED=gated, num_warps=num_warps, num_stages=stages,
                                    **pdl.launch_options(x.device))
    return out


@triton.jit
def _dot_kernel(x_ptr, w_ptr, y_ptr, n, k, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                STAGES: tl.constexpr, GATED: tl.constexpr, USE_PDL: tl.constexpr):
    """W tiles feed tl.dot (x padded to 16 rows, only row 0 non-zero), so the pipeliner streams them
    through shared memory `STAGES` deep; nothing is loaded before the wait."""
    pdl.start(USE_PDL)
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    fmask = features < n
    first_row = (tl.arange(0, 16) == 0)[:, None]
    acc = tl.zeros((16, BLOCK_N), dtype=tl.float32)
    for start in tl.range(0, k, BLOCK_K, num_stages=STAGES):
        w = _tile(w_ptr, features, fmask, cols, k, start)
        xk = _load_x(x_ptr, start + cols, start + cols < k, k, GATED).to(w.dtype)
        xt = tl.where(first_row, xk[None, :], tl.zeros((16, BLOCK_K), dtype=w.dtype))
        acc = tl.dot(xt, tl.trans(w), acc)
    result = tl.sum(tl.where(first_row, acc, 0.0), axis=0)
    tl.store(y_ptr + features, result.to(y_ptr.dtype.element_ty), mask=fmask)


def gemv_dot(x, weight, gated, block_n, block_k, stages, num_warps):
    n, k = weight.shape
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _dot_kernel[(triton.cdiv(n, block_n),)](x, weight, out, n, k, BLOCK_N=block_n, BLOCK_K=block_k,
                                            STAGES=stages, GATED=gated, num_warps=num_warps, num_stages=stages,
                                            **pdl.launch_options(x.device))
    return out
