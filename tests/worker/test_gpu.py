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
from tests.worker.tiny_models import (
    PROMPTS,
    StepDriver,
    build_checkpoint,
    greedy,
    make_runner,
    sluice_prefill_logits,
)

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


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_batch1_decode_graphs_with_gemv_and_pdl_agree_with_prefill(monkeypatch, dtype):
    """Batch-1 decode replays CUDA graphs of Triton GEMVs chained by programmatic dependent launch.
    Every greedy token it picks must be the argmax, within rounding, of the logits that a prefill
    of the same sequence computes with cuBLAS (many rows, no GEMV): a missing wait would read a
    half-written activation and pick tokens far from it."""
    from kernels.gemm import gemv_triton

    calls = []
    original = gemv_triton.gemv_triton
    monkeypatch.setattr(gemv_triton, "gemv_triton", lambda *a, **k: calls.append(1) or original(*a, **k))
    path, _ = build_checkpoint("llama_gqa_llama3_sharded")
    runner = make_runner(path, device="cuda", dtype=dtype)
    assert runner.graphs is not None
    outputs = []
    for i, prompt in enumerate(PROMPTS):  # one request at a time: every decode step is batch 1
        driver = StepDriver(runner, seed=i)
        driver.add(f"r{i}", prompt, greedy(24))
        outputs.append(driver.run()[f"r{i}"])
    assert calls, "the batch-1 path did not use the Triton GEMV"
    for prompt, out in zip(PROMPTS, outputs, strict=True):
        logits = sluice_prefill_logits(runner, [prompt + out[:-1]])[0][len(prompt) - 1:].float()  # [24, V]
        chosen = logits.gather(1, torch.tensor(out, device="cuda")[:, None]).squeeze(1)
        shortfall = logits.max(1).values - chosen
        assert (shortfall <= 0.1).all(), (out, shortfall.tolist())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_single_sequence_prefill_graphs_match_the_eager_forward(dtype):
    """A prompt run through a prefill graph (padded to its token bucket) gives the eager forward's
    logits for its last token and the same argmax, with no cached prefix and on top of one (the
    prefix's KV read from the cache); runs longer than the largest bucket stay eager."""
    from services.common.sampling import SamplingParams
    from services.worker.input_batch import InputBatch, RequestState

    path, _ = build_checkpoint("llama_gqa_llama3_sharded")
    runner = make_runner(path, device="cuda", dtype=dtype, max_graph_prefill_tokens=64)
    assert runner.graphs is not None and runner.graphs.prefill_sizes == [16, 32, 64]
    prompt = [1, *range(5, 95)]  # 91 tokens
    batch = InputBatch(runner.config.block_size, runner.num_blocks, runner.max_model_len, 512,
                       runner.model_config.vocab_size)

    def both(computed: int, new: int):
        state = RequestState("p", prompt[:computed + new], [], SamplingParams(temperature=0.0),
                             list(range(-(-(computed + new) // runner.config.block_size))), computed)
        inputs = batch.build([(state, new)])
        with torch.inference_mode():
            graph_logits, graph_ids = runner._logits(inputs)
            device_inputs = inputs.to_device(runner.device)
            hidden = runner.model(device_inputs.input_ids, device_inputs.positions, device_inputs.metadata)
            eager = runner.model.compute_logits(hidden[device_inputs.logits_indices])
        return runner.graphs.fits(inputs), graph_logits, graph_ids, eager

    for computed, new in [(0, 5), (0, 16), (0, 17), (0, 64), (40, 30), (10, 81)]:
        fits, graph_logits, graph_ids, eager = both(computed, new)
        assert fits == (new <= 64), (computed, new)
        torch.testing.assert_close(graph_logits.float(), eager.float(), atol=0.05, rtol=0.05)
        if fits:  # the graph's greedy pick is the eager argmax, up to the GEMMs' rounding at another M
            shortfall = eager.float().max(-1).values - eager.float().gather(1, graph_ids[:, None]).squeeze(1)
            assert (shortfall <= 0.05).all(), (computed, new, shortfall)


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


def test_no_kernel_is_compiled_after_start_up_whatever_the_step_shape():
    """Steps of odd token counts shift the views into a step's packed index buffers (positions,
    slot_mapping, seq_lens, ...) off 16-byte alignment; mixed steps pass slices of them. Serving
    once compiled new variants of the rotary/KV-write and decode kernels for such steps (a ~1 s
    stall each): after start-up, no step shape may make Triton compile anything."""
    from kernels.attention import decode as decode_attention
    from kernels.attention import extend as extend_attention
    from kernels.elementwise import triton_kernels as elementwise_triton
    from services.worker import metrics
    for module in (decode_attention, elementwise_triton, extend_attention):
        for kernel in vars(module).values():
            if hasattr(kernel, "device_caches"):
                kernel.device_caches.clear()  # variants compiled by earlier tests would hide a miss
    path, _ = build_checkpoint("llama_gqa_llama3_sharded")
    runner = make_runner(path, device="cuda", dtype="bfloat16")  # block size 4
    compiled = metrics.JIT_COMPILES._value.get()
    a, b, c, d = PROMPTS[0], PROMPTS[1], [*PROMPTS[2], 5], [1, 2, 3, 4, 5, 6]  # 7, 21, 13, 6 tokens
    plans = [
        StepPlan(0, new_requests=[NewRequestData("a", a, [], greedy(8), [0, 1], 0),
                                  NewRequestData("b", b, [], greedy(8), list(range(2, 8)), 0)],
                 num_scheduled_tokens={"a": 7, "b": 21}),
        StepPlan(1, new_requests=[NewRequestData("c", c, [], greedy(8), [8, 9, 10, 11], 0)],  # 15 tokens
                 cached_requests=[CachedRequestData("a", [], 7), CachedRequestData("b", [], 21)],
                 num_scheduled_tokens={"a": 1, "b": 1, "c": 13}),
        StepPlan(2, new_requests=[NewRequestData("d", d, [], greedy(8), [12, 13], 0)],  # 9 tokens
                 cached_requests=[CachedRequestData("a", [14], 8), CachedRequestData("b", [], 22),
                                  CachedRequestData("c", [], 13)],
                 num_scheduled_tokens={"a": 1, "b": 1, "c": 1, "d": 6}),
        StepPlan(3, cached_requests=[CachedRequestData("a", [], 9), CachedRequestData("b", [], 23),
                                     CachedRequestData("c", [], 14), CachedRequestData("d", [], 6)],
                 num_scheduled_tokens={"a": 1, "b": 1, "c": 1, "d": 1}),
    ]
    for plan in plans:
        assert len(runner.execute(plan).sampled) == len(plan.num_scheduled_tokens)
    assert metrics.JIT_COMPILES._value.get() == compiled
