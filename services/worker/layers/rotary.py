"""Rotary position embedding (NeoX / HF "rotate_half" layout), with optional partial rotation.

Supported `rope_scaling` types: none (plain RoPE), "linear" (positions divided by `factor`) and
"llama3" (Llama 3.1's frequency-dependent interpolation). The inverse frequencies follow HF's
`ROPE_INIT_FUNCTIONS` exactly; cos/sin for every position are computed once, in float32, and cast to
the activations' dtype at use (as HF does), so bf16 results match HF bit for bit.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kernels.elementwise.rotary import rotary_embedding

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def inverse_frequencies(rotary_dim: int, base: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """`[rotary_dim // 2]` float32 inverse frequencies, scaled as `scaling["rope_type"]` says."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    inv_freq = 1.0 / (base ** exponents)
    rope_type = "default" if scaling is None else scaling["rope_type"]
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type == "llama3":
        return _llama3_inverse_frequencies(inv_freq, scaling)
    raise ValueError(f"rope_type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}")


def _llama3_inverse_frequencies(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Long wavelengths divided by `factor`, short ones kept, the band between interpolated."""
    factor = scaling["factor"]
    low_freq_factor, high_freq_factor = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Holds `cos_sin_cache [max_position, rotary_dim]` (cos | sin halves), float32, built once.

    Rotates the first `rotary_dim` channels of every head; the remaining `head_dim - rotary_dim`
    pass through unchanged.
    """

    def __init__(self, head_dim: int, rotary_dim: int, max_position: int, base: float,
                 scaling: dict[str, Any] | None = None):
        super().__init__()
        assert rotary_dim % 2 == 0 and 0 < rotary_dim <= head_dim, (rotary_dim, head_dim)
        self.head_dim, self.rotary_dim = head_dim, rotary_dim
        inv_freq = inverse_frequencies(rotary_dim, base, scaling)  # [R/2]
        positions = torch.arange(max_position, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq[None, :]  # [P, R/2]
        self.register_buffer("cos_sin_cache", torch.cat([freqs.cos(), freqs.sin()], dim=-1),
                             persistent=False)

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions `[T]`, query `[T, Hq*D]`, key `[T, Hkv*D]`: rotated IN PLACE and returned."""
        rotary_embedding(positions, query.unflatten(-1, (-1, self.head_dim)),
                         key.unflatten(-1, (-1, self.head_dim)), self.cos_sin_cache, self.rotary_dim)
        return query, key


def get_rope(head_dim: int, partial_rotary_factor: float, max_position: int, base: float,
             scaling: dict[str, Any] | None) -> RotaryEmbedding:
    """The rotary embedding a `ModelConfig` describes; unsupported scaling fails here, at build time."""
    rope_type = "default" if scaling is None else scaling["rope_type"]
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope_type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}")
    return RotaryEmbedding(head_dim, int(head_dim * partial_rotary_factor), max_position, base, scaling)
