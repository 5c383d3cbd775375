"""Linear layers whose parameters know how to load themselves from HF checkpoint tensors.

Every parameter carries `weight_loader(param, loaded, shard_id)`. A plain parameter ignores
`shard_id`; a packed one (q/k/v in `QKVLinear`, gate/up in `MergedLinear`) copies the checkpoint
tensor into its slice of the output dimension, so three HF matmuls become one. Parameters are
allocated uninitialised (biases zeroed): a loader or the dummy initialiser fills them.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import nn

from kernels.gemm import gemv


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id: Hashable = None) -> None:
    """Whole-tensor copy with dtype conversion; shapes must match exactly."""
    if param.shape != loaded.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)}, checkpoint {tuple(loaded.shape)}")
    param.data.copy_(loaded)


def _sharded_loader(offsets: dict[Hashable, tuple[int, int]]) -> Callable[..., None]:
    """A loader that copies shard `shard_id` into rows `[offset, offset + size)` of the parameter."""

    def load(param: nn.Parameter, loaded: torch.Tensor, shard_id: Hashable = None) -> None:
        if shard_id not in offsets:
            raise ValueError(f"unknown shard {shard_id!r}; expected one of {list(offsets)}")
        offset, size = offsets[shard_id]
        target = param.data.narrow(0, offset, size)
        if target.shape != loaded.shape:
            raise ValueError(f"shard {shard_id!r} shape mismatch: slot {tuple(target.shape)}, "
                             f"checkpoint {tuple(loaded.shape)}")
        target.copy_(loaded)

    return load


class Linear(nn.Module):
    """`y = x W^T + b` with W `[output_size, input_size]`, loaded whole."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 weight_loader: Callable[..., None] = default_weight_loader):
        super().__init__()
        self.input_size, self.output_size = input_size, output_size
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.weight.weight_loader = weight_loader
        if bias:
            self.bias = nn.Parameter(torch.zeros(output_size), requires_grad=False)
            self.bias.weight_loader = weight_loader
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gemv.linear(x, self.weight, self.bias)  # [T, output_size]


class SiluGatedLinear(Linear):
    """An MLP's down projection with the activation folded in: input `[T, 2 * input_size]` packed
    (gate | up), `y = (silu(gate) * up) W^T + b`. At decode sizes one Triton kernel does both."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gemv.linear(x, self.weight, self.bias, gated=True)  # [T, 2I] -> [T, output_size]


class MergedLinear(Linear):
    """Several projections of one input stacked along the output; shard i is `output_sizes[i]` rows."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False):
        starts = [sum(output_sizes[:i]) for i in range(len(output_sizes))]
        offsets = {i: (start, size) for i, (start, size) in enumerate(zip(starts, output_sizes, strict=True))}
        super().__init__(input_size, sum(output_sizes), bias, weight_loader=_sharded_loader(offsets))
        self.output_sizes = list(output_sizes)


class QKVLinear(Linear):
    """q, k and v projections in one matmul; output `[T, (Hq + 2 * Hkv) * D]`, shards "q", "k", "v"."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False):
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        offsets = {"q": (0, self.q_size), "k": (self.q_size, self.kv_size),
                   "v": (self.q_size + self.kv_size, self.kv_size)}
        super().__init__(hidden_size, self.q_size + 2 * self.kv_size, bias,
                         weight_loader=_sharded_loader(offsets))

    def split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`[T, (Hq + 2 Hkv) D]` -> q `[T, Hq D]`, k `[T, Hkv D]`, v `[T, Hkv D]`."""
        return qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
