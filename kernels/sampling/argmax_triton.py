"""Triton argmax over the last dimension, in two stages (see `kernels/sampling/argmax.py` for the contract).

Stage 1, grid `(num_chunks, B)`: each program scans `CHUNK` columns of one row in `BLOCK`-wide
tiles. Every lane keeps its best float32 value and column; a later value replaces it only when it
is larger, or NaN while the best is not, so each lane holds the first maximum (or first NaN) of
its columns. At the end the lanes are packed into int64 keys, `(order key of the value) << 32 |
(2**31 - 1 - column)`, whose integer order is argmax's order (larger value first, then smaller
column; -0.0 equal to +0.0; NaN above everything), and the chunk's largest key goes to a
`[B, num_chunks]` buffer. Stage 2, grid `(B,)`: the largest key of each row, whose low half is
the column. Integer maxima cannot depend on the reduction tree, so ties never do.

Both launches have shape-determined grids and buffers (CUDA-graph safe) and use programmatic
dependent launch (`kernels/runtime/pdl.py`), reading their inputs after the wait.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.runtime import pdl

_LOWEST = tl.constexpr(-(2**63))  # the key no element has


def pick_config(batch: int, vocab: int) -> tuple[int, int, int]:
    """(BLOCK, CHUNK, num_warps): 1024-wide tiles (smaller only for a tiny vocabulary) and chunks of
    whole tiles, 2048 columns at one row (63 programs for V = 128,256, so the row spreads over the
    GPU) and longer as the batch grows (4,096 up to 8 rows, 8,192 up to 32, then 16,384, since the
    rows themselves fill it); never more than 1024 chunks."""
    block = min(1024, max(32, triton.next_power_of_2(vocab)))
    chunk = 2048 if batch <= 1 else 4096 if batch <= 8 else 8192 if batch <= 32 else 16384
    tiles = triton.cdiv(vocab, block)
    return block, block * min(tiles, max(chunk // block, triton.cdiv(tiles, 1024))), 4 if batch <= 1 else 8


def argmax_triton(x: torch.Tensor, config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """x `[B, V]` with `x.stride(1) == 1` (or V == 1) -> int64 `[B]`. `config` as `pick_config`'s."""
    batch, vocab = x.shape
    assert 0 < vocab < 2**31 and (x.stride(1) == 1 or vocab == 1), (x.shape, x.stride())
    out = torch.empty(batch, dtype=torch.int64, device=x.device)
    if batch == 0:
        return out
    block, chunk, num_warps = config or pick_config(batch, vocab)
    num_chunks = triton.cdiv(vocab, chunk)
    assert chunk % block == 0 and num_chunks <= 1024, (block, chunk, vocab)
    partials = torch.empty((batch, num_chunks), dtype=torch.int64, device=x.device)
    _chunk_kernel[(num_chunks, batch)](x, partials, vocab, x.stride(0), chunk, num_chunks, BLOCK=block,
                                       num_warps=num_warps, **pdl.launch_options(x.device))
    _merge_kernel[(batch,)](partials, out, num_chunks, BLOCK=max(32, triton.next_power_of_2(num_chunks)),
                            num_warps=1, **pdl.launch_options(x.device))
    return out


@triton.jit
def _to_float32(x):
    """Exact; bf16 through its bits (the high half of its float32's: the interpreter's bf16 cast
    flushes subnormals)."""
    if x.dtype == tl.bfloat16:
        return (x.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    return x.to(tl.float32)


@triton.jit
def _pack(value, column):
    """int64 keys whose order is argmax's: the value's order key high, `2**31 - 1 - column` low."""
    bits = value.to(tl.int32, bitcast=True)
    magnitude = bits & 0x7FFFFFFF
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: larger magnitude, smaller key
    key = tl.where(magnitude == 0, 0, key)  # -0.0 == +0.0
    key = tl.where(magnitude > 0x7F800000, 0x7FFFFFFF, key)  # NaN above +inf, all NaNs equal
    return (key.to(tl.int64) << 32) | (0x7FFFFFFF - column).to(tl.int64)


@triton.jit
def _chunk_kernel(x_ptr, partial_ptr, vocab, x_row_stride, chunk_size, num_chunks,
                  BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl.start(USE_PDL)
    chunk = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    x_row = x_ptr + row * x_row_stride
    lanes = tl.arange(0, BLOCK)
    start = chunk * chunk_size
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    best_col = start + lanes  # a lane that never beats -inf still names one of its own columns
    seen = tl.zeros((BLOCK,), dtype=tl.int1)  # the lane has read a valid column
    for tile in range(start, tl.minimum(start + chunk_size, vocab), BLOCK):
        cols = tile + lanes
        mask = cols < vocab  # chunks are whole tiles: only the row's end cuts one
        x = _to_float32(tl.load(x_row + cols, mask=mask, other=float("-inf"), eviction_policy="evict_first"))
        better = (x > best) | ((x != x) & (best == best))  # larger, or the first NaN
        better = mask & (better | ~seen)
        best = tl.where(better, x, best)
        best_col = tl.where(better, cols, best_col)
        seen = seen | mask
    keys = tl.where(seen, _pack(best, best_col), _LOWEST)
    tl.store(partial_ptr + row * num_chunks + chunk, tl.max(keys, axis=0))


@triton.jit
def _merge_kernel(partial_ptr, out_ptr, num_chunks, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl.start(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    chunks = tl.arange(0, BLOCK)
    partials = tl.load(partial_ptr + row * num_chunks + chunks, mask=chunks < num_chunks, other=_LOWEST)
    best = tl.max(partials, axis=0)
    tl.store(out_ptr + row, (0x7FFFFFFF - (best & 0x7FFFFFFF)).to(tl.int64))  # low half: the column
