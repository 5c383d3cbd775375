"""KV-cache sizing, allocation and binding."""
from __future__ import annotations

import pytest
import torch

from services.worker.config import WorkerConfig
from services.worker.kv_cache import (
    allocate_kv_cache,
    bind_kv_cache,
    kv_cache_bytes_per_block,
    num_blocks_for,
)
from services.worker.layers.attention import Attention
from services.worker.model_config import ModelConfig
from tests.worker.test_model_config import LLAMA31_8B

MC = ModelConfig.from_hf(LLAMA31_8B)


def test_llama3_8b_bf16_block_costs_128_kib_per_token():
    assert kv_cache_bytes_per_block(MC, 16, torch.bfloat16) == 16 * 128 * 1024


def test_num_blocks_from_bytes_or_fixed():
    per_block = kv_cache_bytes_per_block(MC, 16, torch.bfloat16)
    config = WorkerConfig(model="/m")
    assert num_blocks_for(config, MC, 1000 * per_block + 5, torch.bfloat16, max_model_len=8192) == 1000
    fixed = WorkerConfig(model="/m", num_kv_blocks=600)
    assert num_blocks_for(fixed, MC, 10 ** 15, torch.bfloat16, max_model_len=8192) == 600
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        num_blocks_for(config, MC, 511 * per_block, torch.bfloat16, max_model_len=8192)
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        num_blocks_for(config, MC, -per_block, torch.bfloat16, max_model_len=16)


def test_allocate_and_bind():
    small = ModelConfig.from_hf({**LLAMA31_8B, "num_hidden_layers": 3, "num_key_value_heads": 2,
                                 "head_dim": 8})
    cache = allocate_kv_cache(small, 5, 4, torch.float16, torch.device("cpu"))
    assert len(cache) == 3 and all(k.shape == v.shape == (5, 4, 2, 8) for k, v in cache)
    assert all(k.dtype == torch.float16 and not k.any() for k, _ in cache)
    assert cache[0][0].data_ptr() != cache[0][1].data_ptr() != cache[1][0].data_ptr()
    model = torch.nn.ModuleList(Attention(4, 2, 8, 1.0) for _ in range(3))
    bind_kv_cache(model, cache)
    assert all(layer.kv_cache is layer_cache for layer, layer_cache in zip(model, cache, strict=True))
    with pytest.raises(ValueError, match="3 attention layers"):
        bind_kv_cache(model, cache[:2])
