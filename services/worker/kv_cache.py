"""The paged KV cache: how many blocks fit, allocating them, and binding them to attention layers.

Per layer, K and V are each `[num_blocks, block_size, num_kv_heads, head_dim]` in the model dtype,
zero-initialised (so padding read by a kernel is finite). Block ids are global: block i of every
layer belongs to the same request, as the scheduler's block manager assigns it.
"""
from __future__ import annotations

import torch
from torch import nn

from services.worker.config import WorkerConfig
from services.worker.layers.attention import Attention
from services.worker.model_config import ModelConfig

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k_cache, v_cache)


def kv_cache_bytes_per_block(model_config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block id costs across all layers, K and V."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_layer = block_size * model_config.num_key_value_heads * model_config.head_dim * itemsize
    return 2 * model_config.num_hidden_layers * per_layer


def num_blocks_for(config: WorkerConfig, model_config: ModelConfig, free_bytes: int, dtype: torch.dtype,
                   max_model_len: int) -> int:
    """`config.num_kv_blocks` if set, else as many blocks as `free_bytes` holds. At least one
    sequence of `max_model_len` tokens must fit, or start-up fails with a hint."""
    per_block = kv_cache_bytes_per_block(model_config, config.block_size, dtype)
    num_blocks = config.num_kv_blocks if config.num_kv_blocks is not None else max(free_bytes, 0) // per_block
    needed = -(-max_model_len // config.block_size)
    if num_blocks < needed:
        raise ValueError(f"KV cache of {num_blocks} blocks ({num_blocks * config.block_size} tokens) cannot "
                         f"hold one sequence of max_model_len={max_model_len} ({needed} blocks of "
                         f"{per_block} bytes); lower max_model_len or give the cache more memory")
    return num_blocks


def cuda_free_bytes_for_kv(config: WorkerConfig, device: torch.device, activation_peak_bytes: int) -> int:
    """GPU bytes left for the KV cache: `gpu_memory_utilization` of the total, minus everything
    in use now (weights, CUDA context, other processes), minus the profiled activation peak."""
    free, total = torch.cuda.mem_get_info(device)
    return int(total * config.gpu_memory_utilization) - (total - free) - activation_peak_bytes


def allocate_kv_cache(model_config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                      device: torch.device) -> KVCache:
    shape = (num_blocks, block_size, model_config.num_key_value_heads, model_config.head_dim)
    return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(model_config.num_hidden_layers)]


def bind_kv_cache(model: nn.Module, kv_cache: KVCache | None) -> None:
    """Give the i-th `Attention` layer (in module order) the i-th layer's cache; None unbinds."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if kv_cache is not None and len(layers) != len(kv_cache):
        raise ValueError(f"model has {len(layers)} attention layers, cache has {len(kv_cache)}")
    for i, layer in enumerate(layers):
        layer.kv_cache = None if kv_cache is None else kv_cache[i]
