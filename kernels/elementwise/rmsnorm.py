"""RMSNorm with the residual add fused in: one Triton program per row on CUDA, pure torch elsewhere.

Numerics are those of `services.worker.layers.norm.RMSNorm` (HF LlamaRMSNorm): the residual add is
rounded to the input dtype (it becomes the next residual), the normalisation runs in float32 on that
rounded sum, the normalised row is cast back to the input dtype, and only then multiplied by the
weight (the product rounded once more). Shapes: x and residual `[T, H]`, weight `[H]`, all one dtype;
rows may be strided, channels must be contiguous. Outputs are new contiguous `[T, H]` tensors.
"""
from __future__ import annotations

import torch

from kernels.runtime.backend import use_triton


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`norm(x) * weight`; with `residual`, `(norm(x + residual) * weight, x + residual)`."""
    _check(x, weight, residual)
    if use_triton(x, weight, *([] if residual is None else [residual])):
        return _triton_impl(x, weight, eps, residual)
    return _torch_impl(x, weight, eps, residual)


def _torch_impl(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The reference: the same arithmetic as the RMSNorm layer."""
    if residual is not None:
        x = x + residual
        residual = x
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * x32.to(x.dtype)
    return out if residual is None else (out, residual)


def _check(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> None:
    assert x.dim() == 2 and weight.shape == (x.shape[1],), (x.shape, weight.shape)
    assert x.is_floating_point() and weight.dtype == x.dtype, (x.dtype, weight.dtype)
    assert x.stride(1) == 1 and weight.stride(0) == 1, (x.stride(), weight.stride())
    assert weight.device == x.device, (x.device, weight.device)
    if residual is not None:
        assert residual.shape == x.shape and residual.dtype == x.dtype, (residual.shape, residual.dtype)
        assert residual.stride(1) == 1 and residual.device == x.device, (residual.stride(), residual.device)


def _triton_impl(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The Triton path (`kernels/elementwise/triton_kernels.py`, imported on first use)."""
    from kernels.elementwise.triton_kernels import rms_norm_triton

    return rms_norm_triton(x, weight, eps, residual)
