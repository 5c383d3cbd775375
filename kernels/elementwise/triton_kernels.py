"""Triton kernels for the small memory-bound steps of a decoder layer: KV-cache write, RMSNorm (with
the residual add), rotary embedding, rotary embedding fused with the KV-cache write, and SiLU-and-mul.

Imported on first use by the modules beside it (`kv_write`, `rmsnorm`, `rotary`, `rotary_kv` and
`activation`), whose entry points check shapes, strides and dtypes, document the layouts, and hold
the pure-torch references these kernels are tested against. A CPU-only process never imports this
module (nor Triton); under `TRITON_INTERPRET=1` the launchers also accept CPU tensors.

Every program indexes rows with int64 offsets (a KV cache can exceed 2**31 elements). No launcher
reads a tensor on the host, so all of them can be captured in a CUDA graph. Loads and stores compile to
16-byte vectors (`ld.global.v4`) when the row strides are multiples of 16 elements.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.runtime import pdl


def write_kv_triton(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
    """One program per (token, chunk of up to 2048 channels) copies that chunk of K and of V."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    row_size = num_kv_heads * head_dim
    block = min(triton.next_power_of_2(row_size), 2048)
    grid = (num_tokens, triton.cdiv(row_size, block))
    _write_kv_kernel[grid](key, value, k_cache, v_cache, slot_mapping, key.stride(0), value.stride(0),
                           row_size, BLOCK=block, num_warps=4)


@triton.jit(do_not_specialize_on_alignment=["slot_mapping_ptr"])  # views into a step's packed index buffer
def _write_kv_kernel(key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
                     key_token_stride, value_token_stride, row_size, BLOCK: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # channel in [0, Hkv*D)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    mask = cols < tl.where(slot >= 0, row_size, 0)  # a negative slot masks the whole row
    k = tl.load(key_ptr + token * key_token_stride + cols, mask=mask)
    v = tl.load(value_ptr + token * value_token_stride + cols, mask=mask)
    tl.store(k_cache_ptr + slot * row_size + cols, k, mask=mask)
    tl.store(v_cache_ptr + slot * row_size + cols, v, mask=mask)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
                    num_warps: int | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One program per row; `BLOCK` (the next power of 2 of H) holds the whole row in registers.
    `num_warps` overrides the default of one warp per 512 channels (benchmarks)."""
    num_tokens, hidden = x.shape
    out = torch.empty((num_tokens, hidden), dtype=x.dtype, device=x.device)
    new_residual = None if residual is None else torch.empty_like(out)
    if num_tokens > 0:
        block = triton.next_power_of_2(hidden)
        has_residual = residual is not None
        _rms_norm_kernel[(num_tokens,)](
            x, residual if has_residual else x, weight, out, new_residual if has_residual else out,
            x.stride(0), residual.stride(0) if has_residual else 0, hidden, eps,
            HAS_RESIDUAL=has_residual, BLOCK=block, num_warps=num_warps or min(max(block // 512, 1), 16),
            **pdl.launch_options(x.device))
    return out if residual is None else (out, new_residual)


@triton.jit
def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, new_residual_ptr,
                     x_row_stride, residual_row_stride, hidden, eps,
                     HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl.start(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    dtype = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * residual_row_stride + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(dtype)  # rounded, as the torch add rounds it
        tl.store(new_residual_ptr + row * hidden + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    mean_square = tl.sum(x32 * x32, axis=0) / hidden
    normed = (x32 * tl.rsqrt(mean_square + eps)).to(dtype)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    out = normed.to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + row * hidden + cols, out.to(dtype), mask=mask)


def _rotary_blocks(rotary_dim: int, num_heads: int, num_kv_heads: int) -> tuple[int, int]:
    """(BLOCK_PAIRS, BLOCK_HEADS): every rotated pair of a head, and as many heads as fit 2048 pairs."""
    block_pairs = triton.next_power_of_2(rotary_dim // 2)
    return block_pairs, min(triton.next_power_of_2(max(num_heads, num_kv_heads)), max(1, 2048 // block_pairs))


def rotary_embedding_triton(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                            cos_sin_cache: torch.Tensor, rotary_dim: int) -> None:
    """One program per token rotates all its query heads, then all its key heads, in place."""
    num_tokens, num_heads, _ = query.shape
    num_kv_heads = key.shape[1]
    if num_tokens == 0:
        return
    block_pairs, block_heads = _rotary_blocks(rotary_dim, num_heads, num_kv_heads)
    _rotary_kernel[(num_tokens,)](
        positions, query, key, cos_sin_cache,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1),
        num_heads, num_kv_heads, rotary_dim // 2,
        BLOCK_HEADS=block_heads, BLOCK_PAIRS=block_pairs, num_warps=4,
        enable_fp_fusion=False)  # an FMA would skip rounding a product to the dtype, as torch rounds it


@triton.jit(do_not_specialize_on_alignment=["positions_ptr"])  # views into a step's packed index buffer
def _rotary_kernel(positions_ptr, query_ptr, key_ptr, cos_sin_ptr,
                   query_token_stride, query_head_stride, key_token_stride, key_head_stride,
                   num_heads, num_kv_heads, half_rotary,
                   BLOCK_HEADS: tl.constexpr, BLOCK_PAIRS: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    pairs = tl.arange(0, BLOCK_PAIRS)[None, :]  # [1, BLOCK_PAIRS]; pair i is channels (i, i + R/2)
    pair_mask = pairs < half_rotary
    cos, sin = _load_cos_sin(positions_ptr, cos_sin_ptr, token, half_rotary, pairs, pair_mask,
                             query_ptr.dtype.element_ty)
    _rotate_heads(query_ptr + token * query_token_stride, query_head_stride, num_heads, half_rotary,
                  cos, sin, pairs, pair_mask, query_ptr, 0, 0, BLOCK_HEADS, False)
    _rotate_heads(key_ptr + token * key_token_stride, key_head_stride, num_kv_heads, half_rotary,
                  cos, sin, pairs, pair_mask, key_ptr, 0, 0, BLOCK_HEADS, False)


@triton.jit
def _load_cos_sin(positions_ptr, cos_sin_ptr, token, half_rotary, pairs, pair_mask, dtype: tl.constexpr):
    """cos and sin `[1, BLOCK_PAIRS]` of `token`'s position: float32 holding values rounded to `dtype`."""
    position = tl.load(positions_ptr + token).to(tl.int64)
    row = cos_sin_ptr + position * (2 * half_rotary)
    cos = tl.load(row + pairs, mask=pair_mask, other=0.0).to(dtype).to(tl.float32)
    sin = tl.load(row + half_rotary + pairs, mask=pair_mask, other=0.0).to(dtype).to(tl.float32)
    return cos, sin


@triton.jit
def rotated(x, partner, cos, sin_signed):
    """`x * cos + partner * sin_signed` in x's dtype: each product, then the sum, rounded to it, as
    the torch layer's eager ops round them (`cos`, `sin_signed` float32 holding values rounded to
    that dtype). Negating sin first changes no rounding. Launches compile without FP fusion, which
    would fuse a product and the sum into one FMA rounded once."""
    dtype = x.dtype
    product = (x.to(tl.float32) * cos).to(dtype).to(tl.float32)
    cross = (partner.to(tl.float32) * sin_signed).to(dtype).to(tl.float32)
    return (product + cross).to(dtype)


@triton.jit
def _rotate_heads(x_ptr, head_stride, num_heads, half_rotary, cos, sin, pairs, pair_mask,
                  copy_ptr, copy_head_stride, num_copy_heads, BLOCK_HEADS: tl.constexpr, COPY: tl.constexpr):
    """Rotate heads `[0, num_heads)` of the token at `x_ptr`, `BLOCK_HEADS` at a time, in place.

    `cos`, `sin`: `[1, BLOCK_PAIRS]` float32 holding values already rounded to the activations' dtype;
    each product, then the sum, is rounded to that dtype, as the torch layer's eager ops round them.
    With `COPY`, the rotated channels of heads `[0, num_copy_heads)` are also stored at `copy_ptr`
    (head stride `copy_head_stride`); the channels past `rotary_dim` are not copied.
    """
    for head_start in range(0, num_heads, BLOCK_HEADS):
        heads = head_start + tl.arange(0, BLOCK_HEADS)[:, None]  # [BLOCK_HEADS, 1]
        mask = (heads < num_heads) & pair_mask
        ptr1 = x_ptr + heads * head_stride + pairs
        ptr2 = ptr1 + half_rotary
        x1 = tl.load(ptr1, mask=mask, other=0.0)
        x2 = tl.load(ptr2, mask=mask, other=0.0)
        out1 = rotated(x1, x2, cos, -sin)
        out2 = rotated(x2, x1, cos, sin)
        tl.store(ptr1, out1, mask=mask)
        tl.store(ptr2, out2, mask=mask)
        if COPY:
            copy_mask = (heads < num_copy_heads) & pair_mask
            copy1 = copy_ptr + heads * copy_head_stride + pairs
            tl.store(copy1, out1, mask=copy_mask)
            tl.store(copy1 + half_rotary, out2, mask=copy_mask)


def rotary_and_write_kv_triton(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                               value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               slot_mapping: torch.Tensor, cos_sin_cache: torch.Tensor, rotary_dim: int) -> None:
    """One program per token: rotate its query and key heads in place, store the rotated key and the
    value at its slot (the rotated channels straight from registers, the rest copied)."""
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    if num_tokens == 0:
        return
    block_pairs, block_heads = _rotary_blocks(rotary_dim, num_heads, num_kv_heads)
    row_size = num_kv_heads * head_dim
    _rotary_kv_kernel[(num_tokens,)](
        positions, query, key, value, k_cache, v_cache, slot_mapping, cos_sin_cache,
        query.stride(0), query.stride(1), key.stride(0), value.stride(0),
        num_heads, num_kv_heads, head_dim, rotary_dim // 2,
        BLOCK_HEADS=block_heads, BLOCK_PAIRS=block_pairs, BLOCK_ROW=min(triton.next_power_of_2(row_size), 2048),
        PARTIAL=rotary_dim < head_dim, num_warps=4, **pdl.launch_options(query.device),
        enable_fp_fusion=False)  # as in `rotary_embedding_triton`: products rounded like torch's


# positions and slot_mapping are views into a step's packed index buffer: any alignment
@triton.jit(do_not_specialize_on_alignment=["positions_ptr", "slot_mapping_ptr"])
def _rotary_kv_kernel(positions_ptr, query_ptr, key_ptr, value_ptr, k_cache_ptr, v_cache_ptr,
                      slot_mapping_ptr, cos_sin_ptr,
                      query_token_stride, query_head_stride, key_token_stride, value_token_stride,
                      num_heads, num_kv_heads, head_dim, half_rotary,
                      BLOCK_HEADS: tl.constexpr, BLOCK_PAIRS: tl.constexpr, BLOCK_ROW: tl.constexpr,
                      PARTIAL: tl.constexpr, USE_PDL: tl.constexpr):
    pdl.allow_next(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    pairs = tl.arange(0, BLOCK_PAIRS)[None, :]  # [1, BLOCK_PAIRS]; pair i is channels (i, i + R/2)
    pair_mask = pairs < half_rotary
    # Step metadata and the cos/sin table: readable while the previous kernel finishes (kernels/runtime/pdl.py).
    cos, sin = _load_cos_sin(positions_ptr, cos_sin_ptr, token, half_rotary, pairs, pair_mask,
                             query_ptr.dtype.element_ty)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    pdl.wait_previous(USE_PDL)
    row_size = num_kv_heads * head_dim
    # A negative slot (CUDA-graph padding) still rotates its query and key but writes no cache row.
    num_written_heads = tl.where(slot >= 0, num_kv_heads, 0)
    written_size = tl.where(slot >= 0, row_size, 0)
    _rotate_heads(query_ptr + token * query_token_stride, query_head_stride, num_heads, half_rotary,
                  cos, sin, pairs, pair_mask, query_ptr, 0, 0, BLOCK_HEADS, False)
    key_row = key_ptr + token * key_token_stride  # heads contiguous: head stride = head_dim
    _rotate_heads(key_row, head_dim, num_kv_heads, half_rotary, cos, sin, pairs, pair_mask,
                  k_cache_ptr + slot * row_size, head_dim, num_written_heads, BLOCK_HEADS, True)
    # The value row, and the key channels past rotary_dim (which the rotation neither reads nor
    # writes, so there is no read-after-write on `key` within this program).
    for start in range(0, row_size, BLOCK_ROW):
        cols = start + tl.arange(0, BLOCK_ROW)  # channel in [0, Hkv*D)
        mask = cols < written_size
        v = tl.load(value_ptr + token * value_token_stride + cols, mask=mask)
        tl.store(v_cache_ptr + slot * row_size + cols, v, mask=mask)
        if PARTIAL:
            pass_mask = mask & (cols % head_dim >= 2 * half_rotary)
            k = tl.load(key_row + cols, mask=pass_mask)
            tl.store(k_cache_ptr + slot * row_size + cols, k, mask=pass_mask)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    """One program per (token, chunk of up to 1024 output columns)."""
    num_tokens, width = x.shape
    inter = width // 2
    out = torch.empty((num_tokens, inter), dtype=x.dtype, device=x.device)
    if num_tokens > 0 and inter > 0:
        block = min(triton.next_power_of_2(inter), 1024)
        grid = (num_tokens, triton.cdiv(inter, block))
        _silu_and_mul_kernel[grid](x, out, x.stride(0), inter, BLOCK=block, num_warps=4)
    return out


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, x_row_stride, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    dtype = x_ptr.dtype.element_ty
    gate = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_row_stride + inter + cols, mask=mask, other=0.0).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)  # rounded, as F.silu rounds it
    tl.store(out_ptr + row * inter + cols, (silu * up).to(dtype), mask=mask)
