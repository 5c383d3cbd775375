"""The worker's start-up configuration: one frozen, validated dataclass, plus how it resolves to torch.

Validation happens once in `__post_init__`; everything downstream trusts the values. `resolve_device`
and `resolve_dtype` turn the "auto" choices into torch objects; `resolve_max_model_len` applies the
model's own limit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from services.worker.model_config import ModelConfig

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
LOAD_FORMATS = ("safetensors", "dummy")


@dataclass(frozen=True)
class WorkerConfig:
    model: str  # Hugging Face-format model directory (config.json, *.safetensors, generation_config.json)
    dtype: str = "auto"  # auto: the checkpoint's dtype on CUDA, float32 on CPU; or float32/float16/bfloat16
    device: str = "auto"  # auto: cuda when available, else cpu; or any torch device string
    load_format: str = "safetensors"  # safetensors: the checkpoint; dummy: random, config.json only
    block_size: int = 16  # tokens per KV-cache block
    num_kv_blocks: int | None = None  # fixed number of KV blocks; overrides memory-based sizing
    kv_cache_memory_bytes: int = 256 << 20  # KV-cache budget on the CPU
    gpu_memory_utilization: float = 0.9  # fraction of total GPU memory for weights + activations + KV cache
    max_model_len: int | None = None  # longest sequence (prompt + output); default and cap: the model's
    max_num_batched_tokens: int = 4096  # most tokens in one step; the profile run uses this many
    seed: int = 0  # seeds torch's default generators and the dummy weights
    enforce_eager: bool = False  # CUDA: run decode steps eagerly instead of replaying CUDA graphs
    max_graph_batch_size: int = 256  # CUDA: largest decode batch captured in a graph
    max_graph_prefill_tokens: int = 512  # CUDA: longest single-sequence prefill captured in a graph

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name a model directory")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {self.load_format!r}")
        if self.device != "auto":
            torch.device(self.device)  # raises on a malformed device string
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks <= 0:
            raise ValueError(f"num_kv_blocks must be positive, got {self.num_kv_blocks}")
        if self.kv_cache_memory_bytes <= 0:
            raise ValueError(f"kv_cache_memory_bytes must be positive, got {self.kv_cache_memory_bytes}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len <= 0:
            raise ValueError(f"max_model_len must be positive, got {self.max_model_len}")
        if self.max_graph_batch_size <= 0:
            raise ValueError(f"max_graph_batch_size must be positive, got {self.max_graph_batch_size}")
        if self.max_graph_prefill_tokens < 0:
            raise ValueError(f"max_graph_prefill_tokens must be >= 0 (0: none), got {self.max_graph_prefill_tokens}")
        if self.max_num_batched_tokens <= 0:
            raise ValueError(f"max_num_batched_tokens must be positive, got {self.max_num_batched_tokens}")


def resolve_device(config: WorkerConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} asked for, but CUDA is not available")
    return device


def resolve_dtype(config: WorkerConfig, checkpoint_dtype: str | None, device: torch.device) -> torch.dtype:
    """The weights' and KV cache's dtype. `checkpoint_dtype` is the HF config's dtype name, if any."""
    if config.dtype != "auto":
        return DTYPES[config.dtype]
    if device.type != "cuda":
        return torch.float32
    return DTYPES.get(checkpoint_dtype or "", torch.bfloat16)


def resolve_max_model_len(config: WorkerConfig, model_config: ModelConfig) -> int:
    """`config.max_model_len` if set (it may not exceed the model's), else the model's own limit."""
    limit = model_config.max_model_len
    if config.max_model_len is None:
        return limit
    if config.max_model_len > limit:
        raise ValueError(f"max_model_len {config.max_model_len} exceeds the model's limit {limit} "
                         "(max_position_embeddings, or the sliding window)")
    return config.max_model_len
