"""Argmax over the last dimension (the greedy token of each row of logits) as a two-stage Triton
reduction on CUDA, `torch.argmax` elsewhere.

At batch 1, `torch.argmax(logits, dim=-1)` reduces a 128,256-wide row in one thread block: 26 µs
on an H200, longer than many decode-step kernels together. Here stage 1, grid `(num_chunks, B)`,
gives each program `CHUNK` columns of one row (a loop over `BLOCK`-wide tiles, one running best
per lane, reduced once at the end) and writes the chunk's best to a `[B, num_chunks]` buffer;
stage 2, grid `(B,)`, reduces each row's partials to its int64 index. Both launches are
shape-determined (grid, buffers, no host reads), so the call can be captured in a CUDA graph, and
both use programmatic dependent launch (`kernels/runtime/pdl.py`), reading their inputs after the wait.

Semantics are those of `torch.argmax(x, dim=-1)`, whatever the tiling: the first index of the
maximum; NaN counts as larger than everything, so a row with NaN gives its first NaN; -0.0 equals
+0.0. In the hot loop each lane keeps its best float32 value and column (columns arrive in
increasing order, so only a strictly better value replaces one). The lanes, and then the chunks,
are merged as int64s `(order key of the value) << 32 | (2**31 - 1 - column)`, the key built from
the float32 bits with integer operations, so their integer order is exactly argmax's order (larger
value first, then smaller column) and the merge is a plain `max`, independent of the tree's shape.

Shapes: x `[B, V]` fp16/bf16/fp32 with contiguous columns (rows may be strided), 0 < V < 2**31;
the result is a new int64 `[B]`. The Triton path lives in `kernels/sampling/argmax_triton.py`, imported on
first use.
"""
from __future__ import annotations

import torch

from kernels.runtime.backend import use_triton

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # exact in float32, so the key orders them


def argmax(x: torch.Tensor) -> torch.Tensor:
    """`torch.argmax(x, dim=-1)` of a 2-D floating x: `[B, V]` -> int64 `[B]`."""
    assert x.dim() == 2 and x.is_floating_point(), (x.shape, x.dtype)
    if x.dtype in _DTYPES and use_triton(x):
        from kernels.sampling.argmax_triton import argmax_triton

        return argmax_triton(x)
    return _torch_impl(x)


def _torch_impl(x: torch.Tensor) -> torch.Tensor:
    """The reference."""
    return torch.argmax(x, dim=-1)


def warm_up(vocab: int, dtypes: tuple[torch.dtype, ...], device: torch.device) -> None:
    """Compile every variant a server meets, so that no step waits for Triton while serving. They
    differ by dtype, by `argmax_triton.pick_config`'s warps (one row or more) and by whether the chunk count is a
    multiple of 16 (Triton specialises integer arguments on it): 1, 2 and 64 rows cover them."""
    for dtype in dtypes:
        for rows in (1, 2, 64):
            argmax(torch.zeros(rows, vocab, dtype=dtype, device=device))
