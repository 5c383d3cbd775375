"""Checkpoint loading: sharded index, packed and tied weights, clear errors, the dummy format."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.worker.loader import checkpoint_files
from services.worker.models.registry import resolve_model_class, supported_architectures
from tests.worker.tiny_models import (
    build_checkpoint,
    make_runner,
    sluice_prefill_logits,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def copy_single_file_checkpoint(case, tmp_path, edit):
    """A copy of a single-file checkpoint whose tensors went through `edit(dict) -> dict`."""
    src, _ = build_checkpoint(case)
    dst = tmp_path / case
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    save_file(edit(load_file(src / "model.safetensors")), dst / "model.safetensors")
    return dst


def test_sharded_checkpoint_is_read_through_its_index():
    path, hf_model = build_checkpoint("llama_gqa_llama3_sharded")
    files = checkpoint_files(str(path))
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(files) > 2 and sorted(set(index["weight_map"].values())) == [f.split("/")[-1] for f in files]
    runner = make_runner(path)
    layer = runner.model.model.layers[1]
    q_size, kv_size = layer.self_attn.qkv_proj.q_size, layer.self_attn.qkv_proj.kv_size
    torch.testing.assert_close(layer.self_attn.qkv_proj.weight[q_size:q_size + kv_size],
                               hf_model.model.layers[1].self_attn.k_proj.weight, rtol=0, atol=0)
    inter = hf_model.config.intermediate_size
    torch.testing.assert_close(layer.mlp.gate_up_proj.weight[inter:],
                               hf_model.model.layers[1].mlp.up_proj.weight, rtol=0, atol=0)


def test_tied_embeddings_share_storage():
    path, _ = build_checkpoint("llama_tied")
    assert "lm_head.weight" not in load_file(path / "model.safetensors")
    model = make_runner(path).model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert [name for name, _ in model.named_parameters()].count("lm_head.weight") == 0


def test_untied_checkpoint_loads_its_own_lm_head():
    path, hf_model = build_checkpoint("qwen2")
    model = make_runner(path).model
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(model.lm_head.weight, hf_model.lm_head.weight, rtol=0, atol=0)


def test_missing_tensor_is_named(tmp_path):
    name = "model.layers.1.self_attn.v_proj.bias"
    path = copy_single_file_checkpoint("qwen2", tmp_path, lambda t: {k: v for k, v in t.items() if k != name})
    with pytest.raises(ValueError, match=f"missing 1 tensor.*{name}"):
        make_runner(path)


def test_unexpected_tensor_is_named(tmp_path):
    extra = {"model.extra.weight": torch.ones(2)}
    path = copy_single_file_checkpoint("qwen2", tmp_path, lambda t: {**t, **extra})
    with pytest.raises(ValueError, match="model.extra.weight"):
        make_runner(path)


def test_wrong_shape_is_named(tmp_path):
    name = "model.layers.0.self_attn.k_proj.weight"
    path = copy_single_file_checkpoint("qwen2", tmp_path, lambda t: {**t, name: t[name][:-1]})
    with pytest.raises(ValueError, match=name):
        make_runner(path)


def test_unsupported_and_missing_architecture(tmp_path):
    src, _ = build_checkpoint("qwen2")
    config = json.loads((src / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="unsupported architecture 'GPT2LMHeadModel'.*LlamaForCausalLM"):
        make_runner(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": []}))
    with pytest.raises(ValueError, match="architectures"):
        make_runner(tmp_path)


def test_registry_aliases_share_one_class():
    assert {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"} <= set(supported_architectures())
    assert resolve_model_class("MistralForCausalLM") is resolve_model_class("Qwen2ForCausalLM")


def test_no_checkpoint_is_a_clear_error(tmp_path):
    src, _ = build_checkpoint("qwen2")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        make_runner(tmp_path)


def test_dummy_format_needs_only_config_json(tmp_path):
    src, _ = build_checkpoint("llama_gqa_llama3_sharded")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    prompts = [[1, 5, 9, 200, 17], list(range(3, 40))]
    logits = torch.cat(sluice_prefill_logits(make_runner(tmp_path, load_format="dummy"), prompts))
    assert torch.isfinite(logits).all() and logits.std() > 0
    again = torch.cat(sluice_prefill_logits(make_runner(tmp_path, load_format="dummy"), prompts))
    other = torch.cat(sluice_prefill_logits(make_runner(tmp_path, load_format="dummy", seed=1), prompts))
    torch.testing.assert_close(again, logits, rtol=0, atol=0)
    assert not torch.equal(other, logits)
