"""Llama and the families that differ from it only by configuration (Mistral, Qwen2, Yi).

Parameter names are HF's, except that q/k/v load into `qkv_proj` and gate/up into `gate_up_proj`
(see `packed_modules_mapping`). Differences between the families live in `ModelConfig`: Qwen2's
q/k/v bias is `attention_bias`, Mistral's sliding window only caps `max_model_len`.
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import ClassVar

import torch
from torch import nn

from services.worker.layers.attention import Attention, AttentionMetadata
from services.worker.layers.embedding import LMHead, VocabEmbedding
from services.worker.layers.linear import Linear, MergedLinear, QKVLinear, SiluGatedLinear
from services.worker.layers.norm import RMSNorm
from services.worker.layers.rotary import RotaryEmbedding, get_rope
from services.worker.model_config import ModelConfig


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported (only 'silu')")
        inter = config.intermediate_size
        self.gate_up_proj = MergedLinear(config.hidden_size, [inter, inter], bias=config.mlp_bias)
        self.down_proj = SiluGatedLinear(inter, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj(x))  # [T, H] -> [T, 2I] (gate | up) -> [T, H]


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, rotary_emb: RotaryEmbedding):
        super().__init__()
        heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.qkv_proj = QKVLinear(config.hidden_size, head_dim, heads, kv_heads, bias=config.attention_bias)
        self.o_proj = Linear(heads * head_dim, config.hidden_size, bias=config.o_proj_bias)
        # `rotary_emb` is shared by all layers; the attention layer rotates q/k as it writes the cache.
        self.attn = Attention(heads, kv_heads, head_dim, scale=head_dim ** -0.5, rotary_emb=rotary_emb)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, metadata: AttentionMetadata
                ) -> torch.Tensor:
        q, k, v = self.qkv_proj.split(self.qkv_proj(hidden))  # [T, Hq*D], [T, Hkv*D], [T, Hkv*D]
        return self.o_proj(self.attn(q, k, v, metadata, positions))  # [T, Hq*D] -> [T, H]


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rotary_emb: RotaryEmbedding):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, rotary_emb)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
                metadata: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-norm block. `residual` is the running sum of the stream, `hidden` the last sublayer's
        output (None residual on the first layer: hidden is then the embedding)."""
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, metadata)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        # One instance (one cos/sin cache) shared by every layer's attention.
        self.rotary_emb = get_rope(config.head_dim, config.partial_rotary_factor,
                                   config.max_position_embeddings, config.rope_theta, config.rope_scaling)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, self.rotary_emb)
                                    for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata
                ) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None  # [T, H]
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, metadata)
        hidden, _ = self.norm(hidden, residual)
        return hidden  # [T, H]


class LlamaForCausalLM(nn.Module):
    # Packed parameter -> the HF checkpoint names folded into it and each one's shard id.
    packed_modules_mapping: ClassVar[dict[str, list[tuple[str, Hashable]]]] = {
        "qkv_proj": [("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")],
        "gate_up_proj": [("gate_proj", 0), ("up_proj", 1)],
    }

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        tied = self.model.embed_tokens if config.tie_word_embeddings else None
        self.lm_head = LMHead(config.vocab_size, config.hidden_size, tied_to=tied)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata
                ) -> torch.Tensor:
        """input_ids and positions `[T]` -> final hidden states `[T, H]` (logits are separate, so
        that only the rows that sample pay for the vocabulary projection)."""
        return self.model(input_ids, positions, metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)  # [N, H] -> [N, V]
