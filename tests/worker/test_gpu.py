"""CUDA paths: bf16 parity, memory-profiled KV sizing, and a dummy Llama-3-8B-shaped model."""
from __future__ import annotations

import copy
import json
import time

import pytest
import torch

from services.common.step import CachedRequestData, NewRequestData, StepPlan
from services.worker.config import WorkerConfig
from services.worker.model_runner import ModelRunner
from tests.worker.test_model_config import LLAMA31_8B
from tests.worker.tiny_models import PROMPTS, build_checkpoint, greedy, make_runner, sluice_prefill_logits

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("case", ["llama_gqa_llama3_sharded", "qwen2"])
def test_bf16_prefill_logits_close_to_hf(case):
    path, hf_model = build_checkpoint(case)
    runner = make_runner(path, device="cuda", dtype="bfloat16")
    hf_cuda = copy.deepcopy(hf_model).to("cuda", torch.bfloat16)  # the cached CPU model stays float32
    for prompt, ours in zip(PROMPTS, sluice_prefill_logits(runner, PROMPTS), strict=True):
        with torch.no_grad():
            expected = hf_cuda(torch.tensor([prompt], device="cuda")).logits[0]
        assert ours.dtype == torch.bfloat16
        torch.testing.assert_close(ours.float(), expected.float(), atol=0.1, rtol=0.05)
        agree = (ours.argmax(-1) == expected.argmax(-1)).float().mean()
        assert agree >= 0.9, f"argmax agreement {agree:.2f}"


def test_cuda_kv_cache_fills_the_memory_budget():
    path, _ = build_checkpoint("qwen2")
    runner = make_runner(path, device="cuda", num_kv_blocks=None, gpu_memory_utilization=0.3,
                         max_model_len=256)
    free, total = torch.cuda.mem_get_info()
    used = total - free
    assert runner.num_blocks > 1000
    assert 0.2 * total < used <= 0.3 * total + (256 << 20), (used / total)


def test_dummy_llama3_8b_shape_steps_on_gpu(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA31_8B))
    started = time.perf_counter()
    runner = ModelRunner(WorkerConfig(model=str(tmp_path), load_format="dummy", max_model_len=8192))
    load_seconds = time.perf_counter() - started
    assert runner.dtype == torch.bfloat16 and runner.num_blocks * 16 >= 8192
    prompt = list(range(1000, 1512))
    result = runner.execute(StepPlan(0, new_requests=[NewRequestData("a", prompt, [], greedy(8),
                                                                       list(range(33)), 0)],
                                     num_scheduled_tokens={"a": 512}))
    assert 0 <= result.sampled[0].token_id < 128256
    torch.cuda.synchronize()
    started = time.perf_counter()
    for step in range(1, 8):
        result = runner.execute(StepPlan(step, cached_requests=[CachedRequestData("a", [], 511 + step)],
                                         num_scheduled_tokens={"a": 1}))
    torch.cuda.synchronize()
    decode_ms = (time.perf_counter() - started) / 7 * 1e3
    print(f"dummy 8B: start-up {load_seconds:.1f} s, {runner.num_blocks} blocks, "
          f"decode {decode_ms:.1f} ms/step")
    assert 0 <= result.sampled[0].token_id < 128256
