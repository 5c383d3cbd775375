"""Sluice vs transformers on tiny random checkpoints: prefill logits and greedy tokens."""
from __future__ import annotations

import pytest
import torch

from tests.worker.tiny_models import (
    CASES,
    PROMPTS,
    StepDriver,
    build_checkpoint,
    greedy,
    hf_greedy,
    make_runner,
    sluice_prefill_logits,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.parametrize("case", sorted(CASES))
def test_prefill_logits_match_hf(case):
    path, hf_model = build_checkpoint(case)
    runner = make_runner(path)
    for prompt, ours in zip(PROMPTS, sluice_prefill_logits(runner, PROMPTS), strict=True):
        with torch.no_grad():
            expected = hf_model(torch.tensor([prompt])).logits[0]
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_tokens_match_hf_generate(case):
    path, hf_model = build_checkpoint(case)
    driver = StepDriver(make_runner(path))
    driver.add("a", PROMPTS[0], greedy(32))
    assert driver.run()["a"] == hf_greedy(hf_model, PROMPTS[0], 32)


@pytest.mark.parametrize("case", ["llama_gqa_llama3_sharded", "qwen2"])
def test_batched_sequences_of_different_lengths_match_hf(case):
    """Three requests share every step; the third arrives late, so prefill and decode mix."""
    path, hf_model = build_checkpoint(case)
    driver = StepDriver(make_runner(path))
    for i, prompt in enumerate(PROMPTS):
        driver.add(f"r{i}", prompt, greedy(32), arrive_step=3 if i == 2 else 0)
    outputs = driver.run()
    for i, prompt in enumerate(PROMPTS):
        assert outputs[f"r{i}"] == hf_greedy(hf_model, prompt, 32), f"request r{i}"


@pytest.mark.parametrize("case", ["llama_gqa_llama3_sharded", "mistral"])
def test_chunked_prefill_matches_hf(case):
    path, hf_model = build_checkpoint(case)
    prompt = PROMPTS[1]
    driver = StepDriver(make_runner(path), chunk_size=-(-len(prompt) // 2))
    driver.add("a", prompt, greedy(32))
    outputs = driver.run()
    assert [r.sampled for r in driver.results[:1]] == [[]], "the first chunk must not sample"
    assert outputs["a"] == hf_greedy(hf_model, prompt, 32)
