"""ModelRunner.execute against the step contract: state, validation, preemption, prefix hits."""
from __future__ import annotations

import pytest
import torch

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.sampling import SamplingParams
from services.common.step import CachedRequestData, NewRequestData, StepPlan
from services.worker.kv_cache import kv_cache_bytes_per_block
from tests.worker.tiny_models import (
    build_checkpoint,
    greedy,
    hf_greedy,
    make_runner,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CASE = "qwen2"
PROMPT = [1, 17, 42, 99, 3, 250, 8, 61, 7, 19]  # 10 tokens: blocks of 4 -> 3 blocks


@pytest.fixture(scope="module")
def checkpoint():
    return build_checkpoint(CASE)


def new(rid, prompt=PROMPT, block_ids=(0, 1, 2), computed=0, output=(), sampling=None):
    return NewRequestData(rid, list(prompt), list(output), sampling or greedy(32), list(block_ids), computed)


def decode_until(runner, rid, first_token, num_tokens, next_block, step_id=1):
    """Decode `rid` one token per step, allocating blocks from `next_block` on; returns the tokens."""
    state = runner.input_batch.requests[rid]
    tokens = [first_token]
    while len(tokens) < num_tokens:
        computed = state.num_computed_tokens
        blocks = []
        if computed + 1 > len(state.block_ids) * 4:
            blocks, next_block = [next_block], next_block + 1
        plan = StepPlan(step_id, cached_requests=[CachedRequestData(rid, blocks, computed)],
                        num_scheduled_tokens={rid: 1})
        tokens.append(runner.execute(plan).sampled[0].token_id)
        step_id += 1
    return tokens


def test_cache_spec(checkpoint):
    path, _ = checkpoint
    spec = make_runner(path, num_kv_blocks=100, max_model_len=200).cache_spec()
    assert (spec.num_blocks, spec.block_size, spec.max_model_len, spec.vocab_size) == (100, 4, 200, 256)
    assert spec.eos_token_ids == [2] and spec.model_name == CASE


def test_cpu_cache_is_sized_from_its_byte_budget(checkpoint):
    path, _ = checkpoint
    runner = make_runner(path, num_kv_blocks=None, kv_cache_memory_bytes=1 << 20)
    per_block = kv_cache_bytes_per_block(runner.model_config, 4, torch.float32)
    assert per_block == 2 * 2 * 4 * 2 * 16 * 4
    assert runner.num_blocks == (1 << 20) // per_block
    assert runner.kv_cache[0][0].shape == (runner.num_blocks, 4, 2, 16)
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        make_runner(path, num_kv_blocks=None, kv_cache_memory_bytes=per_block * 10, max_model_len=256)


def test_count_mismatch_is_rejected_without_changing_state(checkpoint):
    path, hf_model = checkpoint
    runner = make_runner(path)
    first = runner.execute(StepPlan(0, new_requests=[new("a")], num_scheduled_tokens={"a": 10})).sampled
    bad = StepPlan(1, cached_requests=[CachedRequestData("a", [3], 9)], num_scheduled_tokens={"a": 1})
    with pytest.raises(FailedPrecondition, match="num_computed_tokens=9.*worker has 10"):
        runner.execute(bad)
    state = runner.input_batch.requests["a"]
    assert (state.num_computed_tokens, state.block_ids, len(state.output_token_ids)) == (10, [0, 1, 2], 1)
    assert decode_until(runner, "a", first[0].token_id, 8, next_block=3) == hf_greedy(hf_model, PROMPT, 8)


@pytest.mark.parametrize("plan, error, match", [
    (StepPlan(1, cached_requests=[CachedRequestData("zz", [], 0)]), FailedPrecondition, "not held"),
    (StepPlan(1, num_scheduled_tokens={"zz": 1}), FailedPrecondition, "not held"),
    (StepPlan(1, new_requests=[new("a")]), FailedPrecondition, "already holds"),
    (StepPlan(1, new_requests=[new("b", block_ids=[0, 1])], num_scheduled_tokens={"b": 10}),
     InvalidArgument, "2 blocks cannot hold 10"),
    (StepPlan(1, new_requests=[new("b", prompt=[1, 256])]), InvalidArgument, "token ids"),
    (StepPlan(1, new_requests=[new("b", block_ids=[0, 1, 128])]), InvalidArgument, "block ids"),
    (StepPlan(1, new_requests=[new("b")], num_scheduled_tokens={"b": 11}), InvalidArgument, "10 not yet"),
    (StepPlan(1, new_requests=[new("b", prompt=list(range(1, 200)) * 3)]), InvalidArgument, "tokens"),
    (StepPlan(1, cached_requests=[CachedRequestData("a", [3], 10)], num_scheduled_tokens={"a": 2}),
     InvalidArgument, "2 tokens scheduled, 1 not yet"),
])
def test_bad_plans_are_rejected_atomically(checkpoint, plan, error, match):
    path, _ = checkpoint
    runner = make_runner(path)
    runner.execute(StepPlan(0, new_requests=[new("a")], num_scheduled_tokens={"a": 10}))
    # Plans adding "b" also finish "a": a rejected plan must not have dropped it either.
    plan.finished_request_ids = ["a"] if plan.new_requests and plan.new_requests[0].request_id == "b" else []
    with pytest.raises(error, match=match):
        runner.execute(plan)
    assert list(runner.input_batch.requests) == ["a"]
    assert runner.input_batch.requests["a"].num_computed_tokens == 10


def test_step_token_budget_is_enforced(checkpoint):
    path, _ = checkpoint
    runner = make_runner(path, max_num_batched_tokens=8)
    with pytest.raises(InvalidArgument, match="max_num_batched_tokens"):
        runner.execute(StepPlan(0, new_requests=[new("a")], num_scheduled_tokens={"a": 10}))


def test_finished_requests_are_dropped_and_ids_reusable(checkpoint):
    path, _ = checkpoint
    runner = make_runner(path)
    runner.execute(StepPlan(0, new_requests=[new("a"), new("b", block_ids=[3, 4, 5])],
                            num_scheduled_tokens={"a": 10, "b": 10}))
    assert runner.num_requests == 2
    runner.execute(StepPlan(1, finished_request_ids=["a", "never-seen"]))
    assert list(runner.input_batch.requests) == ["b"]
    result = runner.execute(StepPlan(2, new_requests=[new("a")], num_scheduled_tokens={"a": 10}))
    assert [s.request_id for s in result.sampled] == ["a"]
    runner.reset()
    assert runner.num_requests == 0


def test_preempted_request_recomputes_prompt_plus_output(checkpoint):
    path, hf_model = checkpoint
    expected = hf_greedy(hf_model, PROMPT, 12)
    runner = make_runner(path)
    first = runner.execute(StepPlan(0, new_requests=[new("a")], num_scheduled_tokens={"a": 10})).sampled
    done = decode_until(runner, "a", first[0].token_id, 5, next_block=3)
    # Preempted: state dropped; resent with its 5 outputs (the last not yet computed) in fresh blocks.
    resent = new("a", block_ids=[20, 21, 22, 23], output=done)
    result = runner.execute(StepPlan(10, finished_request_ids=["a"], new_requests=[resent],
                                     num_scheduled_tokens={"a": 15}))
    assert decode_until(runner, "a", result.sampled[0].token_id, 7, next_block=24, step_id=11) == expected[5:]


def test_new_request_with_prefix_cache_hit(checkpoint):
    """B shares A's first two full blocks (8 tokens) and computes only its own suffix."""
    path, hf_model = checkpoint
    prompt_b = PROMPT[:8] + [33, 44, 55]
    runner = make_runner(path)
    runner.execute(StepPlan(0, new_requests=[new("a")], num_scheduled_tokens={"a": 10}))
    b = new("b", prompt=prompt_b, block_ids=[0, 1, 7], computed=8)
    first = runner.execute(StepPlan(1, new_requests=[b], num_scheduled_tokens={"b": 3})).sampled
    tokens = decode_until(runner, "b", first[0].token_id, 6, next_block=8, step_id=2)
    assert tokens == hf_greedy(hf_model, prompt_b, 6)


def test_logprobs_describe_the_model_distribution(checkpoint):
    path, hf_model = checkpoint
    runner = make_runner(path)
    sampling = SamplingParams(temperature=0.0, logprobs=2, max_tokens=4)
    sampled = runner.execute(StepPlan(0, new_requests=[new("a", sampling=sampling)],
                                      num_scheduled_tokens={"a": 10})).sampled[0]
    with torch.no_grad():
        expected = hf_model(torch.tensor([PROMPT])).logits[0, -1].log_softmax(-1)
    assert sampled.token_id == int(expected.argmax())
    assert sampled.logprob == pytest.approx(float(expected.max()), abs=1e-4)
    top_ids = expected.topk(2).indices.tolist()
    assert [t for t, _ in sampled.top_logprobs] == top_ids


def test_cpu_profile_run_keeps_the_cache_bound(checkpoint):
    path, hf_model = checkpoint
    runner = make_runner(path, max_num_batched_tokens=300)
    assert runner.profile_run() == 0
    first = runner.execute(StepPlan(0, new_requests=[new("a")], num_scheduled_tokens={"a": 10})).sampled
    assert decode_until(runner, "a", first[0].token_id, 4, next_block=3) == hf_greedy(hf_model, PROMPT, 4)
