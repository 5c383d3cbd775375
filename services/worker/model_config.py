"""One normalised view of a Hugging Face model config; model code reads only this, never HF attributes.

`ModelConfig.from_hf` reads `config.json` (and `generation_config.json` for extra EOS ids) once and
absorbs the differences between families and between transformers versions: rope settings under
`rope_theta`/`rope_scaling` (transformers 4 and most published checkpoints) or under
`rope_parameters` (transformers 5), `dtype` vs `torch_dtype`, implicit `head_dim`, Qwen2's q/k/v
bias, and Mistral's sliding window.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

# Families whose q/k/v projections carry a bias without saying so in config.json.
_QKV_BIAS_MODEL_TYPES = {"qwen2"}
_ROPE_KEYS_NOT_SCALING = {"rope_theta", "partial_rotary_factor", "rope_type", "type"}


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # HF architecture name, the registry key (e.g. "LlamaForCausalLM")
    model_type: str  # HF model_type ("llama", "mistral", "qwen2", ...)
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int  # divides num_attention_heads (GQA); equal to it for plain MHA
    head_dim: int  # explicit in config.json when present, else hidden_size // num_attention_heads
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    hidden_act: str  # the MLP's gate activation, "silu" for every supported family
    rope_theta: float
    rope_scaling: dict[str, Any] | None  # None for plain RoPE; else has "rope_type" and its parameters
    partial_rotary_factor: float  # fraction of head_dim that is rotated, in (0, 1]
    attention_bias: bool  # bias on q_proj, k_proj and v_proj (Qwen2; Llama with attention_bias)
    o_proj_bias: bool  # bias on o_proj (Llama with attention_bias)
    mlp_bias: bool  # bias on gate_proj, up_proj and down_proj
    tie_word_embeddings: bool  # lm_head shares model.embed_tokens.weight
    max_position_embeddings: int
    sliding_window: int | None  # None when the family does not use one (or disables it)
    torch_dtype: str | None  # the checkpoint's dtype name ("bfloat16", ...), if it says
    bos_token_id: int | None
    eos_token_ids: list[int] = field(default_factory=list)  # config.json then generation_config.json, deduped

    @property
    def max_model_len(self) -> int:
        """Longest sequence served. Capped to the sliding window: no sliding-window attention is
        implemented, and up to the window length full attention computes the same thing."""
        if self.sliding_window is not None and self.sliding_window < self.max_position_embeddings:
            return self.sliding_window
        return self.max_position_embeddings

    @property
    def rope_type(self) -> str:
        return "default" if self.rope_scaling is None else self.rope_scaling["rope_type"]

    @classmethod
    def from_hf(cls, source: str | os.PathLike | dict[str, Any]) -> ModelConfig:
        """From a model directory (config.json + optional generation_config.json) or a config dict."""
        generation: dict[str, Any] = {}
        if isinstance(source, dict):
            hf = source
        else:
            path = os.path.join(source, "config.json")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no config.json in model directory {os.fspath(source)!r}")
            with open(path) as f:
                hf = json.load(f)
            gen_path = os.path.join(source, "generation_config.json")
            if os.path.isfile(gen_path):
                with open(gen_path) as f:
                    generation = json.load(f)
        architectures = hf.get("architectures") or []
        if not architectures:
            raise ValueError("config.json has no 'architectures' entry: cannot pick a model class")
        model_type = hf.get("model_type", "")
        num_heads = hf["num_attention_heads"]
        num_kv_heads = hf.get("num_key_value_heads") or num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_attention_heads {num_heads} is not a multiple of "
                             f"num_key_value_heads {num_kv_heads}")
        rope_theta, rope_scaling, partial_rotary_factor = _normalise_rope(hf)
        attention_bias = bool(hf.get("attention_bias", False))
        sliding_window = hf.get("sliding_window")
        if hf.get("use_sliding_window") is False:
            sliding_window = None
        return cls(
            architecture=architectures[0],
            model_type=model_type,
            hidden_size=hf["hidden_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
            intermediate_size=hf["intermediate_size"],
            vocab_size=hf["vocab_size"],
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            hidden_act=hf.get("hidden_act", "silu"),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            partial_rotary_factor=partial_rotary_factor,
            attention_bias=attention_bias or model_type in _QKV_BIAS_MODEL_TYPES,
            o_proj_bias=attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            sliding_window=sliding_window,
            torch_dtype=_dtype_name(hf.get("dtype") or hf.get("torch_dtype")),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=_merge_ids(hf.get("eos_token_id"), generation.get("eos_token_id")),
        )


def _normalise_rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None, float]:
    """(rope_theta, rope_scaling or None, partial_rotary_factor) from either config generation."""
    params = dict(hf.get("rope_parameters") or {})
    if params and all(isinstance(v, dict) for v in params.values()):
        raise ValueError("per-layer-type rope_parameters are not supported")
    legacy = dict(hf.get("rope_scaling") or {})
    merged = {**legacy, **params}
    theta = float(merged.get("rope_theta", hf.get("rope_theta", 10000.0)))
    partial = float(merged.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
    if not 0.0 < partial <= 1.0:
        raise ValueError(f"partial_rotary_factor must be in (0, 1], got {partial}")
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type == "default":
        return theta, None, partial
    scaling = {k: v for k, v in merged.items() if k not in _ROPE_KEYS_NOT_SCALING}
    scaling["rope_type"] = rope_type
    return theta, scaling, partial


def _dtype_name(value: Any) -> str | None:
    if value is None:
        return None
    return str(value).removeprefix("torch.")


def _merge_ids(*values: int | list[int] | None) -> list[int]:
    ids: list[int] = []
    for value in values:
        for token_id in [value] if isinstance(value, int) else (value or []):
            if token_id not in ids:
                ids.append(token_id)
    return ids
