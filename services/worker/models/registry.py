"""The one table of supported architectures, keyed by the HF `architectures[0]` name.

Entries are (module, class) strings imported on first use, so importing the registry costs nothing.
A family that differs from another only by configuration points at the same class.
"""
from __future__ import annotations

import importlib

from torch import nn

_LLAMA = ("services.worker.models.llama", "LlamaForCausalLM")

_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": _LLAMA,
    "MistralForCausalLM": _LLAMA,  # sliding window only caps max_model_len
    "Qwen2ForCausalLM": _LLAMA,  # q/k/v bias comes from ModelConfig.attention_bias
    "YiForCausalLM": _LLAMA,  # early Yi checkpoints: Llama weights under another name
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def resolve_model_class(architecture: str) -> type[nn.Module]:
    """The model class for an HF architecture name; ValueError listing what is supported otherwise."""
    if architecture not in _MODELS:
        raise ValueError(f"unsupported architecture {architecture!r}; supported: "
                         f"{', '.join(supported_architectures())}")
    module_name, class_name = _MODELS[architecture]
    return getattr(importlib.import_module(module_name), class_name)
