"""ModelConfig.from_hf normalisation and WorkerConfig validation."""
from __future__ import annotations

import json

import pytest
import torch

from services.worker.config import WorkerConfig, resolve_dtype, resolve_max_model_len
from services.worker.model_config import ModelConfig

# Llama-3.1-8B's published config.json (transformers 4 layout: rope_theta / rope_scaling at top level).
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 128256, "rms_norm_eps": 1e-05, "hidden_act": "silu", "max_position_embeddings": 131072,
    "rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "attention_bias": False, "mlp_bias": False,
}


def test_legacy_llama31_config():
    mc = ModelConfig.from_hf(LLAMA31_8B)
    assert (mc.architecture, mc.head_dim, mc.num_key_value_heads) == ("LlamaForCausalLM", 128, 8)
    assert mc.rope_theta == 500000.0
    assert mc.rope_scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert mc.torch_dtype == "bfloat16" and mc.eos_token_ids == [128001, 128008, 128009]
    assert mc.max_model_len == 131072 and not mc.attention_bias and not mc.o_proj_bias


def test_transformers5_rope_parameters_and_legacy_type_key():
    v5 = {**LLAMA31_8B, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "dtype": "float16"}
    del v5["rope_theta"], v5["rope_scaling"], v5["torch_dtype"]
    mc = ModelConfig.from_hf(v5)
    assert (mc.rope_theta, mc.rope_scaling, mc.rope_type, mc.torch_dtype) == (1e6, None, "default", "float16")
    legacy = {**LLAMA31_8B, "rope_scaling": {"type": "linear", "factor": 4.0}}
    assert ModelConfig.from_hf(legacy).rope_scaling == {"rope_type": "linear", "factor": 4.0}


def test_partial_rotary_factor_from_either_place():
    top = {**LLAMA31_8B, "partial_rotary_factor": 0.5}
    inside = {**LLAMA31_8B, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                "partial_rotary_factor": 0.25}}
    assert ModelConfig.from_hf(top).partial_rotary_factor == 0.5
    assert ModelConfig.from_hf(inside).partial_rotary_factor == 0.25
    assert ModelConfig.from_hf(LLAMA31_8B).partial_rotary_factor == 1.0


def test_explicit_head_dim_wins():
    assert ModelConfig.from_hf({**LLAMA31_8B, "head_dim": 64}).head_dim == 64


def test_qwen2_has_qkv_bias_but_no_o_proj_bias_and_ignores_disabled_window():
    qwen2 = {**LLAMA31_8B, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
             "use_sliding_window": False, "sliding_window": 4096, "max_position_embeddings": 32768}
    del qwen2["attention_bias"]
    mc = ModelConfig.from_hf(qwen2)
    assert mc.attention_bias and not mc.o_proj_bias
    assert mc.sliding_window is None and mc.max_model_len == 32768


def test_llama_attention_bias_covers_o_proj():
    mc = ModelConfig.from_hf({**LLAMA31_8B, "attention_bias": True})
    assert mc.attention_bias and mc.o_proj_bias


def test_mistral_sliding_window_caps_max_model_len():
    mistral = {**LLAMA31_8B, "architectures": ["MistralForCausalLM"], "model_type": "mistral",
               "sliding_window": 4096, "max_position_embeddings": 32768}
    assert ModelConfig.from_hf(mistral).max_model_len == 4096
    assert ModelConfig.from_hf({**mistral, "sliding_window": None}).max_model_len == 32768


def test_eos_ids_merge_generation_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA31_8B, "eos_token_id": 128001}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128009]}))
    assert ModelConfig.from_hf(tmp_path).eos_token_ids == [128001, 128009]


def test_missing_architectures_or_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="architectures"):
        ModelConfig.from_hf({k: v for k, v in LLAMA31_8B.items() if k != "architectures"})
    with pytest.raises(FileNotFoundError, match="config.json"):
        ModelConfig.from_hf(tmp_path)


@pytest.mark.parametrize("kwargs", [dict(dtype="fp8"), dict(load_format="pt"), dict(block_size=12),
                                    dict(gpu_memory_utilization=1.5), dict(num_kv_blocks=0),
                                    dict(max_model_len=0), dict(max_num_batched_tokens=0), dict(model="")])
def test_worker_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        WorkerConfig(**{"model": "/m", **kwargs})


def test_dtype_and_max_model_len_resolution():
    mc = ModelConfig.from_hf(LLAMA31_8B)
    assert resolve_dtype(WorkerConfig(model="/m"), "bfloat16", torch.device("cpu")) == torch.float32
    assert resolve_dtype(WorkerConfig(model="/m"), "bfloat16", torch.device("cuda")) == torch.bfloat16
    fp16 = WorkerConfig(model="/m", dtype="float16")
    assert resolve_dtype(fp16, None, torch.device("cpu")) == torch.float16
    assert resolve_max_model_len(WorkerConfig(model="/m"), mc) == 131072
    assert resolve_max_model_len(WorkerConfig(model="/m", max_model_len=8192), mc) == 8192
    with pytest.raises(ValueError, match="exceeds"):
        resolve_max_model_len(WorkerConfig(model="/m", max_model_len=200000), mc)
