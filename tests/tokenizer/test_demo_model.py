"""The built-in demo model: deterministic, atomic, and loadable by transformers."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.common.demo_model import (
    CORPUS_PATH,
    SPECIAL_TOKENS,
    build_demo_model,
    default_demo_model_dir,
    ensure_demo_model,
)


def _hashes(directory: str | Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).iterdir())}


def test_two_builds_in_different_processes_are_identical(demo_model_dir,
                                                         demo_model_dir_from_subprocess):
    hashes = _hashes(demo_model_dir)
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= hashes.keys()
    assert _hashes(demo_model_dir_from_subprocess) == hashes


def test_ensure_reuses_an_existing_build_and_leaves_no_temp_dirs(demo_model_dir):
    before = {p.name: p.stat().st_mtime_ns for p in Path(demo_model_dir).iterdir()}
    assert ensure_demo_model(demo_model_dir) == demo_model_dir
    assert {p.name: p.stat().st_mtime_ns for p in Path(demo_model_dir).iterdir()} == before
    assert [p.name for p in Path(demo_model_dir).parent.iterdir()] == ["model"]


def test_ensure_fills_an_empty_dir_but_refuses_a_foreign_one(tmp_path, monkeypatch):
    monkeypatch.setattr("services.common.demo_model.build_demo_model",
                        lambda out: [(Path(out) / name).write_text("{}") for name in (
                            "config.json", "generation_config.json", "model.safetensors",
                            "tokenizer.json", "tokenizer_config.json")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ensure_demo_model(str(empty)) == str(empty)
    assert (empty / "config.json").is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        ensure_demo_model(str(foreign))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "foreign"]


def test_default_location_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_demo_model_dir() == tmp_path / "sluice" / "demo-model-v1"


def test_build_does_not_disturb_the_global_torch_rng(tmp_path):
    import torch

    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    build_demo_model(tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_corpus_is_large_and_multilingual():
    text = CORPUS_PATH.read_text(encoding="utf-8")
    assert 30_000 <= len(text.encode()) <= 60_000
    for sample in ("é", "ß", "中", "の", "😀"):
        assert sample in text


def test_loads_with_transformers_and_runs(demo_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tokenizer) == 2000
    assert not model.config.tie_word_embeddings
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3, 4, 5]
    text = "Bread is mostly waiting. 中文 café 😀"
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids[0, 0].item() == tokenizer.bos_token_id
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == text
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 2000)
    assert torch.isfinite(logits).all()
    assert model.generation_config.eos_token_id == [1, 5]


def test_chat_template_renders(demo_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Tea?"},
                {"role": "assistant", "content": "Yes."},
                {"role": "user", "content": "Milk?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<s><|system|>\nBe brief.<|end|>\n<|user|>\nTea?<|end|>\n"
                    "<|assistant|>\nYes.<|end|>\n<|user|>\nMilk?<|end|>\n<|assistant|>\n")
    no_prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert no_prompt == text[:-len("<|assistant|>\n")]
