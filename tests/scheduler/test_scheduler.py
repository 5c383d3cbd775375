"""Scheduler: continuous batching, chunked prefill, stop conditions, preemption, admission.

`FakeWorker` plays the worker's side of the step contract and checks it: it keeps its own copy of
every request, asserts that cached requests' counts match its own, and stores a fake KV value per
slot (a hash of the whole prefix up to that token) so that any block shared, reused or overwritten
wrongly is caught when a later step reads it.
"""
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.sampling import SamplingParams
from services.common.step import SampledToken, StepPlan, StepResult
from services.scheduler.config import SchedulerConfig
from services.scheduler.request import FinishReason, Request, RequestStatus
from services.scheduler.scheduler import QueueFullError, RequestTooLargeError, Scheduler

EOS = 0


def default_token(request_id: str, index: int) -> int:
    """Deterministic output token `index` of a request, never EOS."""
    return 1 + (sum(map(ord, request_id)) * 7 + index * 13) % 97


class FakeWorker:
    def __init__(self, block_size, token_fn=default_token):
        self.block_size = block_size
        self.token_fn = token_fn
        self.seqs: dict[str, list[int]] = {}
        self.num_prompt: dict[str, int] = {}
        self.keys: dict[str, list[int]] = {}  # keys[rid][p]: hash of seq[:p + 1]
        self.computed: dict[str, int] = {}
        self.tables: dict[str, list[int]] = {}
        self.kv: dict[tuple[int, int], int] = {}

    def _slot(self, request_id, position):
        block = self.tables[request_id][position // self.block_size]
        return block, position % self.block_size

    def _key(self, request_id, position):
        keys, seq = self.keys[request_id], self.seqs[request_id]
        while len(keys) <= position:
            keys.append(hash((keys[-1] if keys else None, seq[len(keys)])))
        return keys[position]

    def step(self, plan: StepPlan) -> StepResult:
        for rid in plan.finished_request_ids:
            assert rid in self.seqs, f"drop of unknown request {rid}"
            for table in (self.seqs, self.num_prompt, self.keys, self.computed, self.tables):
                del table[rid]
        for new in plan.new_requests:
            assert new.request_id not in self.seqs
            self.seqs[new.request_id] = new.prompt_token_ids + new.output_token_ids
            self.num_prompt[new.request_id] = len(new.prompt_token_ids)
            self.keys[new.request_id] = []
            self.computed[new.request_id] = new.num_computed_tokens
            self.tables[new.request_id] = list(new.block_ids)
            assert new.num_computed_tokens % self.block_size == 0
        for cached in plan.cached_requests:
            assert self.computed[cached.request_id] == cached.num_computed_tokens
            self.tables[cached.request_id].extend(cached.new_block_ids)
        sent = [r.request_id for r in plan.new_requests + plan.cached_requests]
        assert sorted(sent) == sorted(plan.num_scheduled_tokens)
        sampled = []
        for rid, num in plan.num_scheduled_tokens.items():
            seq, start = self.seqs[rid], self.computed[rid]
            assert num > 0 and start + num <= len(seq)
            assert len(self.tables[rid]) * self.block_size >= start + num
            assert len(set(self.tables[rid])) == len(self.tables[rid])
            for p in range(start):  # attention reads every earlier token's KV
                assert self.kv[self._slot(rid, p)] == self._key(rid, p), f"{rid} KV corrupt at {p}"
            for p in range(start, start + num):
                self.kv[self._slot(rid, p)] = self._key(rid, p)
            self.computed[rid] = start + num
            if start + num == len(seq):
                token = self.token_fn(rid, len(seq) - self.num_prompt[rid])
                seq.append(token)
                sampled.append(SampledToken(rid, token, logprob=-0.5))
        return StepResult(plan.step_id, sampled)


def make_request(request_id, prompt_len=4, max_tokens=4, eos=(EOS,), max_model_len=1024,
                 prompt=None, **sampling):
    if prompt is None:  # distinct per request id, so no accidental prefix-cache hits
        prompt = [1000 * sum(map(ord, request_id)) + i for i in range(prompt_len)]
    return Request(request_id, prompt, SamplingParams(max_tokens=max_tokens, **sampling),
                   list(eos), max_model_len)


def make_scheduler(num_blocks=64, block_size=4, max_model_len=1024, **config):
    return Scheduler(SchedulerConfig(**config), num_blocks, block_size, max_model_len)


def step(scheduler, worker):
    plan = scheduler.schedule()
    return plan, scheduler.update(plan, worker.step(plan))


def run_until_done(scheduler, worker, max_steps=10_000):
    tokens, reasons = defaultdict(list), {}
    for _ in range(max_steps):
        if not scheduler.has_unfinished_requests():
            break
        _, outputs = step(scheduler, worker)
        for out in outputs:
            tokens[out.request_id] += out.new_token_ids
            if out.finished:
                reasons[out.request_id] = out.finish_reason
    else:
        raise AssertionError("requests never finished")
    step(scheduler, worker)  # delivers the last finished ids
    assert worker.seqs == {}
    return tokens, reasons


def preempted_ids(scheduler, plan):
    """Requests the plan drops from the worker that are still unfinished: preempted by it."""
    return {rid for rid in plan.finished_request_ids if scheduler.get_request(rid) is not None}


def checked_step(scheduler, worker, arrival_rank):
    """A step that also checks that only the latest arrivals are preempted."""
    plan = scheduler.schedule()
    preempted = preempted_ids(scheduler, plan)
    if preempted:
        latest_kept = max((arrival_rank[r.request_id] for r in scheduler.running), default=-1)
        assert latest_kept < min(arrival_rank[rid] for rid in preempted)
    return plan, scheduler.update(plan, worker.step(plan))


def assert_all_blocks_free(scheduler):
    bm = scheduler.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    assert scheduler.kv_usage == 0.0
    assert all(bm.ref_count(b) == 0 for b in range(bm.num_blocks))


def test_new_request_joins_the_running_batch_next_step():
    scheduler, worker = make_scheduler(), FakeWorker(4)
    scheduler.add_request(make_request("a", max_tokens=10))
    plan, outputs = step(scheduler, worker)
    assert [r.request_id for r in plan.new_requests] == ["a"]
    assert plan.num_scheduled_tokens == {"a": 4}
    assert [o.request_id for o in outputs] == ["a"]
    scheduler.add_request(make_request("b", prompt_len=6, max_tokens=10))
    plan, outputs = step(scheduler, worker)
    assert [r.request_id for r in plan.new_requests] == ["b"]
    assert [(c.request_id, c.num_computed_tokens) for c in plan.cached_requests] == [("a", 4)]
    assert plan.num_scheduled_tokens == {"a": 1, "b": 6}
    assert sorted(o.request_id for o in outputs) == ["a", "b"]
    assert scheduler.num_running == 2 and scheduler.num_waiting == 0


def test_finished_request_leaves_at_once_and_is_dropped_next_step():
    scheduler, worker = make_scheduler(), FakeWorker(4)
    scheduler.add_request(make_request("a", max_tokens=2))
    scheduler.add_request(make_request("b", max_tokens=5))
    step(scheduler, worker)
    plan = scheduler.schedule()
    num_held = len(scheduler.get_request("a").block_ids)
    free_before = scheduler.block_manager.num_free_blocks
    outputs = scheduler.update(plan, worker.step(plan))
    done = {o.request_id: o for o in outputs}
    assert done["a"].finished and done["a"].finish_reason is FinishReason.LENGTH
    assert not done["b"].finished
    assert scheduler.num_running == 1 and scheduler.get_request("a") is None
    assert scheduler.block_manager.num_free_blocks == free_before + num_held == 62
    plan, _ = step(scheduler, worker)
    assert plan.finished_request_ids == ["a"]
    assert list(plan.num_scheduled_tokens) == ["b"]
    assert step(scheduler, worker)[0].finished_request_ids == []


def test_step_ids_increase_and_results_must_match():
    scheduler, worker = make_scheduler(), FakeWorker(4)
    scheduler.add_request(make_request("a"))
    plans = [step(scheduler, worker)[0] for _ in range(3)]
    assert [p.step_id for p in plans] == [0, 1, 2]
    run_until_done(scheduler, worker)
    idle = [scheduler.schedule() for _ in range(2)]
    assert [p.step_id for p in idle] == [5, 5]
    assert idle[0].num_scheduled_tokens == {} and idle[0].finished_request_ids == []
    scheduler.add_request(make_request("b"))
    plan = scheduler.schedule()
    assert plan.step_id == 5
    with pytest.raises(ValueError):
        scheduler.update(plan, StepResult(plan.step_id + 1))


def test_token_budget_chunks_a_long_prompt():
    scheduler, worker = make_scheduler(max_num_batched_tokens=8), FakeWorker(4)
    scheduler.add_request(make_request("a", prompt_len=20, max_tokens=3))
    plans_and_outputs = [step(scheduler, worker) for _ in range(3)]
    assert [p.num_scheduled_tokens["a"] for p, _ in plans_and_outputs] == [8, 8, 4]
    assert [c.num_computed_tokens for p, _ in plans_and_outputs[1:] for c in p.cached_requests] \
        == [8, 16]
    assert [len(o) for _, o in plans_and_outputs] == [0, 0, 1]
    plan, outputs = step(scheduler, worker)
    assert plan.num_scheduled_tokens == {"a": 1} and len(outputs) == 1


def test_decodes_come_first_and_a_new_prompt_gets_the_rest_of_the_budget():
    scheduler, worker = make_scheduler(max_num_batched_tokens=8), FakeWorker(4)
    scheduler.add_request(make_request("a", prompt_len=4, max_tokens=10))
    scheduler.add_request(make_request("b", prompt_len=4, max_tokens=10))
    step(scheduler, worker)
    scheduler.add_request(make_request("c", prompt_len=30, max_tokens=2))
    plan, _ = step(scheduler, worker)
    assert plan.num_scheduled_tokens == {"a": 1, "b": 1, "c": 6}


def test_max_num_seqs_caps_the_running_batch():
    scheduler, worker = make_scheduler(max_num_seqs=2), FakeWorker(4)
    for rid, max_tokens in (("a", 2), ("b", 6), ("c", 6)):
        scheduler.add_request(make_request(rid, max_tokens=max_tokens))
    plan, _ = step(scheduler, worker)
    assert sorted(plan.num_scheduled_tokens) == ["a", "b"]
    assert scheduler.num_running == 2 and scheduler.num_waiting == 1
    step(scheduler, worker)  # a finishes
    plan, _ = step(scheduler, worker)
    assert [r.request_id for r in plan.new_requests] == ["c"]
    assert scheduler.num_running == 2


def scripted(script):
    return lambda rid, index: script[index] if index < len(script) else 50


@pytest.mark.parametrize("sampling, script, expected_tokens, reason", [
    (dict(max_tokens=10), [5, 6, EOS, 7], [5, 6, EOS], FinishReason.STOP),
    (dict(max_tokens=10, stop_token_ids=[6]), [5, 6, EOS], [5, 6], FinishReason.STOP),
    (dict(max_tokens=10, min_tokens=3), [EOS, 6, EOS, EOS], [EOS, 6, EOS], FinishReason.STOP),
    (dict(max_tokens=10, min_tokens=2, stop_token_ids=[9]), [9, 9, 1], [9, 9], FinishReason.STOP),
    (dict(max_tokens=4, ignore_eos=True), [EOS, EOS, 5, EOS, EOS], [EOS, EOS, 5, EOS],
     FinishReason.LENGTH),
    (dict(max_tokens=3), [5, 6, 7, EOS], [5, 6, 7], FinishReason.LENGTH),
    (dict(max_tokens=3), [5, 6, EOS], [5, 6, EOS], FinishReason.STOP),
    (dict(max_tokens=1, ignore_eos=True, stop_token_ids=[EOS]), [EOS], [EOS], FinishReason.STOP),
])
def test_stop_conditions(sampling, script, expected_tokens, reason):
    scheduler, worker = make_scheduler(), FakeWorker(4, scripted(script))
    scheduler.add_request(make_request("a", **sampling))
    tokens, reasons = run_until_done(scheduler, worker)
    assert tokens["a"] == expected_tokens
    assert reasons["a"] is reason
    assert_all_blocks_free(scheduler)


def test_model_eos_ids_are_per_request():
    scheduler, worker = make_scheduler(), FakeWorker(4, scripted([5, 6, 7, 8]))
    scheduler.add_request(make_request("a", max_tokens=10, eos=(7, 8)))
    tokens, reasons = run_until_done(scheduler, worker)
    assert tokens["a"] == [5, 6, 7] and reasons["a"] is FinishReason.STOP


def test_logprobs_are_returned_only_when_asked():
    scheduler, worker = make_scheduler(), FakeWorker(4)
    scheduler.add_request(make_request("with", max_tokens=2, logprobs=0))
    scheduler.add_request(make_request("without", max_tokens=2))
    _, outputs = step(scheduler, worker)
    by_id = {o.request_id: o for o in outputs}
    assert [t.logprob for t in by_id["with"].new_logprobs] == [-0.5]
    assert by_id["with"].new_logprobs[0].token_id == by_id["with"].new_token_ids[0]
    assert by_id["without"].new_logprobs == []
    assert len(scheduler.get_request("with").output_logprobs) == 1
    assert scheduler.get_request("without").output_logprobs is None


def test_preemption_by_recompute_resends_outputs_and_completes():
    # 8 blocks of 2 tokens: both requests fit alone (prompt 4 + 12 = 8 blocks), not together.
    scheduler = make_scheduler(num_blocks=8, block_size=2, enable_prefix_caching=False)
    worker = FakeWorker(2)
    scheduler.add_request(make_request("a", prompt_len=4, max_tokens=12))
    scheduler.add_request(make_request("b", prompt=[200 + i for i in range(4)], max_tokens=12))
    tokens = defaultdict(list)
    preempting_plan = None
    for _ in range(100):
        plan, outputs = step(scheduler, worker)
        for out in outputs:
            tokens[out.request_id] += out.new_token_ids
        if "b" in plan.finished_request_ids and preempting_plan is None:
            preempting_plan = plan
            outputs_at_preemption = list(tokens["b"])
            assert scheduler.get_request("b").status is RequestStatus.PREEMPTED
            assert "b" not in plan.num_scheduled_tokens
        if preempting_plan is not None and any(r.request_id == "b" for r in plan.new_requests):
            resent = next(r for r in plan.new_requests if r.request_id == "b")
            assert resent.prompt_token_ids == [200, 201, 202, 203]
            assert resent.output_token_ids == outputs_at_preemption
            assert len(resent.output_token_ids) > 0
            assert plan.num_scheduled_tokens["b"] == 4 + len(outputs_at_preemption)
        if not scheduler.has_unfinished_requests():
            break
    assert preempting_plan is not None
    assert scheduler.num_preemptions_total >= 1
    expected = {rid: [default_token(rid, i) for i in range(12)] for rid in "ab"}
    assert dict(tokens) == expected
    step(scheduler, worker)
    assert worker.seqs == {}
    assert_all_blocks_free(scheduler)


def test_a_request_that_needs_a_block_it_cannot_get_preempts_itself_when_last():
    # 5 blocks of 2: a and b (prompt 3) take 2 blocks each; the 5th block goes to a.
    scheduler = make_scheduler(num_blocks=5, block_size=2, enable_prefix_caching=False)
    worker = FakeWorker(2)
    scheduler.add_request(make_request("a", prompt_len=3, max_tokens=7))
    scheduler.add_request(make_request("b", prompt=[7, 8, 9], max_tokens=7))
    outputs = step(scheduler, worker)[1] + step(scheduler, worker)[1]
    plan, last = step(scheduler, worker)
    assert plan.num_scheduled_tokens == {"a": 1}
    assert plan.finished_request_ids == ["b"]
    request = scheduler.get_request("b")
    assert request.num_preemptions == 1 and request.num_computed_tokens == 0
    assert request.block_ids == [] and scheduler.num_waiting == 1
    tokens, _ = run_until_done(scheduler, worker)
    for out in outputs + last:
        tokens[out.request_id][:0] = out.new_token_ids
    assert {rid: len(t) for rid, t in tokens.items()} == {"a": 7, "b": 7}
    assert_all_blocks_free(scheduler)


def test_a_preempted_request_is_readmitted_before_later_arrivals():
    scheduler = make_scheduler(num_blocks=8, block_size=2, max_num_seqs=2,
                               enable_prefix_caching=False)
    worker = FakeWorker(2)
    for rid, prompt_len, max_tokens in (("a", 4, 12), ("b", 4, 12), ("c", 2, 2)):
        scheduler.add_request(make_request(rid, prompt_len=prompt_len, max_tokens=max_tokens))
    admitted = []
    for _ in range(100):
        plan, _ = step(scheduler, worker)
        admitted += [r.request_id for r in plan.new_requests]
        if not scheduler.has_unfinished_requests():
            break
    assert scheduler.num_preemptions_total == 1
    assert admitted == ["a", "b", "b", "c"]


def test_tokens_for_requests_that_did_not_reach_the_end_are_ignored():
    scheduler = make_scheduler(max_num_batched_tokens=8)
    scheduler.add_request(make_request("a", prompt_len=12))
    scheduler.add_request(make_request("b", prompt_len=4))
    plan = scheduler.schedule()
    assert plan.num_scheduled_tokens == {"a": 8}
    bogus = StepResult(plan.step_id, [SampledToken("a", 5), SampledToken("b", 5)])
    assert scheduler.update(plan, bogus) == []
    assert scheduler.get_request("a").output_token_ids == []
    assert scheduler.get_request("b").output_token_ids == []


def test_no_request_is_admitted_in_a_step_that_preempts():
    # With a small budget the preempted request's first chunk would fit right away: admitting
    # it in the same step would only thrash.
    scheduler = make_scheduler(num_blocks=5, block_size=2, max_num_batched_tokens=3,
                               enable_prefix_caching=False)
    worker = FakeWorker(2)
    scheduler.add_request(make_request("a", prompt_len=4, max_tokens=6))
    scheduler.add_request(make_request("b", prompt_len=4, max_tokens=6))
    for _ in range(100):
        plan = scheduler.schedule()
        if preempted_ids(scheduler, plan):
            assert plan.new_requests == []
        scheduler.update(plan, worker.step(plan))
        if not scheduler.has_unfinished_requests():
            break
    assert scheduler.num_preemptions_total > 0
    run_until_done(scheduler, worker)
    assert_all_blocks_free(scheduler)


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_a_request_that_fits_alone_completes_among_many_competitors(prefix_caching):
    scheduler = make_scheduler(num_blocks=8, block_size=4, max_num_batched_tokens=16,
                               enable_prefix_caching=prefix_caching)
    worker = FakeWorker(4)
    scheduler.add_request(make_request("big", prompt_len=20, max_tokens=12))  # all 8 blocks
    expected = {"big": 12}
    for i in range(20):
        prompt_len, max_tokens = 3 + i % 9, 2 + (i * 5) % 11
        scheduler.add_request(make_request(f"r{i}", prompt=[(i % 3) * 10 + j for j in
                                                            range(prompt_len)],
                                           max_tokens=max_tokens))
        expected[f"r{i}"] = max_tokens
    arrival_rank = {rid: rank for rank, rid in enumerate(expected)}
    tokens = defaultdict(list)
    for _ in range(2000):
        for out in checked_step(scheduler, worker, arrival_rank)[1]:
            tokens[out.request_id] += out.new_token_ids
        if not scheduler.has_unfinished_requests():
            break
    assert {rid: len(t) for rid, t in tokens.items()} == expected
    step(scheduler, worker)
    assert worker.seqs == {}
    assert scheduler.num_preemptions_total > 0
    assert_all_blocks_free(scheduler)


def test_prefix_cache_hit_is_sent_as_computed_tokens():
    scheduler, worker = make_scheduler(block_size=4), FakeWorker(4)
    prompt = list(range(10, 30))
    scheduler.add_request(make_request("a", prompt=prompt, max_tokens=2))
    run_until_done(scheduler, worker)
    scheduler.add_request(make_request("b", prompt=prompt + [1, 2], max_tokens=2))
    plan, outputs = step(scheduler, worker)
    assert plan.new_requests[0].num_computed_tokens == 20
    assert plan.num_scheduled_tokens == {"b": 2}
    assert outputs[0].num_cached_tokens == 20
    assert scheduler.block_manager.num_prefix_hit_tokens == 20
    run_until_done(scheduler, worker)
    assert_all_blocks_free(scheduler)


def test_abort_waiting_request():
    scheduler, worker = make_scheduler(max_num_seqs=1), FakeWorker(4)
    scheduler.add_request(make_request("a", max_tokens=5))
    scheduler.add_request(make_request("b", max_tokens=5))
    step(scheduler, worker)
    request = scheduler.get_request("b")
    assert scheduler.abort_request("b") is True
    assert request.finish_reason is FinishReason.ABORT and request.is_finished
    assert scheduler.abort_request("b") is False
    assert scheduler.num_waiting == 0
    plan, _ = step(scheduler, worker)
    assert plan.finished_request_ids == []  # the worker never saw b
    run_until_done(scheduler, worker)
    assert_all_blocks_free(scheduler)


def test_abort_running_request_frees_blocks_and_ignores_its_result():
    scheduler, worker = make_scheduler(), FakeWorker(4)
    scheduler.add_request(make_request("a", prompt_len=9, max_tokens=5))
    scheduler.add_request(make_request("b", max_tokens=5))
    step(scheduler, worker)
    plan = scheduler.schedule()
    result = worker.step(plan)
    assert scheduler.abort_request("a") is True
    assert scheduler.block_manager.num_free_blocks == 64 - 2
    outputs = scheduler.update(plan, result)
    assert [o.request_id for o in outputs] == ["b"]
    plan, _ = step(scheduler, worker)
    assert plan.finished_request_ids == ["a"] and "a" not in plan.num_scheduled_tokens
    run_until_done(scheduler, worker)
    assert_all_blocks_free(scheduler)


def test_abort_preempted_request_is_not_dropped_twice():
    scheduler = make_scheduler(num_blocks=5, block_size=2, enable_prefix_caching=False)
    worker = FakeWorker(2)
    scheduler.add_request(make_request("a", prompt_len=3, max_tokens=7))
    scheduler.add_request(make_request("b", prompt=[7, 8, 9], max_tokens=7))
    for _ in range(3):
        step(scheduler, worker)
    assert scheduler.get_request("b").status is RequestStatus.PREEMPTED
    assert scheduler.abort_request("b")
    plan, _ = step(scheduler, worker)
    assert plan.finished_request_ids == []
    run_until_done(scheduler, worker)
    assert scheduler.abort_request("nope") is False
    assert_all_blocks_free(scheduler)


def test_queue_full_raises():
    scheduler = make_scheduler(max_waiting_requests=2)
    scheduler.add_request(make_request("a"))
    scheduler.add_request(make_request("b"))
    with pytest.raises(QueueFullError):
        scheduler.add_request(make_request("c"))
    with pytest.raises(RequestTooLargeError):  # a permanent error wins over a transient one
        scheduler.add_request(make_request("huge", prompt_len=2000))
    scheduler.schedule()  # a and b start running: the queue has room again
    scheduler.add_request(make_request("c"))
    assert scheduler.num_waiting == 1


@pytest.mark.parametrize("prompt_len, max_tokens, request_max_len", [
    (10, 7, 1024),  # 17 tokens > max_model_len 16
    (4, 4, 7),  # the request's own max_model_len
])
def test_request_too_long_for_the_model(prompt_len, max_tokens, request_max_len):
    scheduler = make_scheduler(max_model_len=16)
    scheduler.add_request(make_request("ok", prompt_len=10, max_tokens=6))
    with pytest.raises(RequestTooLargeError):
        scheduler.add_request(make_request("x", prompt_len=prompt_len, max_tokens=max_tokens,
                                           max_model_len=request_max_len))
    assert scheduler.get_request("x") is None


def test_request_too_large_for_the_kv_cache():
    scheduler = make_scheduler(num_blocks=4, block_size=4)
    scheduler.add_request(make_request("fits", prompt_len=10, max_tokens=6))  # 4 blocks
    with pytest.raises(RequestTooLargeError):
        scheduler.add_request(make_request("x", prompt_len=10, max_tokens=7))  # 5 blocks
    assert scheduler.num_waiting == 1


@pytest.mark.parametrize("bad", [
    dict(request_id="dup"), dict(request_id="new", prompt=[]), dict(request_id="new", max_tokens=0),
])
def test_invalid_requests_raise_value_error(bad):
    scheduler = make_scheduler()
    scheduler.add_request(make_request("dup"))
    with pytest.raises(ValueError):
        scheduler.add_request(make_request(**bad))
    assert scheduler.num_waiting == 1


@pytest.mark.parametrize("field", ["max_num_seqs", "max_num_batched_tokens",
                                   "max_waiting_requests"])
@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError):
        SchedulerConfig(**{field: value})


@st.composite
def scenarios(draw):
    block_size = draw(st.sampled_from([1, 2, 4]))
    num_blocks = draw(st.integers(4, 16))
    config = dict(max_num_seqs=draw(st.integers(1, 6)),
                  max_num_batched_tokens=draw(st.integers(1, 24)),
                  enable_prefix_caching=draw(st.booleans()))
    requests = draw(st.lists(st.fixed_dictionaries(dict(
        arrival_step=st.integers(0, 20),
        prompt=st.lists(st.integers(1, 3), min_size=1, max_size=20),
        max_tokens=st.integers(1, 12),
        min_tokens=st.integers(0, 3),
        eos_at=st.one_of(st.none(), st.integers(0, 10)),
        abort_step=st.one_of(st.none(), st.integers(0, 30)),
    )), min_size=1, max_size=8))
    return block_size, num_blocks, config, requests


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_workloads_finish_cleanly(scenario):
    block_size, num_blocks, config, specs = scenario
    max_model_len = 40
    scheduler = make_scheduler(num_blocks, block_size, max_model_len, **config)
    specs = {f"r{i}": spec for i, spec in enumerate(specs)}

    def token_fn(rid, index):
        return EOS if index == specs[rid]["eos_at"] else default_token(rid, index)

    def expected_tokens(rid):
        spec, tokens = specs[rid], []
        while len(tokens) < spec["max_tokens"]:
            tokens.append(token_fn(rid, len(tokens)))
            if tokens[-1] == EOS and len(tokens) >= spec["min_tokens"]:
                break
        return tokens

    worker = FakeWorker(block_size, token_fn)
    tokens, accepted, aborted = defaultdict(list), set(), set()
    arrival_rank = {}
    for step_index in range(2000):
        for rid, spec in specs.items():
            if spec["arrival_step"] == step_index:
                request = make_request(rid, prompt=spec["prompt"], max_tokens=spec["max_tokens"],
                                       min_tokens=spec["min_tokens"], max_model_len=max_model_len)
                total = len(spec["prompt"]) + spec["max_tokens"]
                if -(-total // block_size) > num_blocks:
                    with pytest.raises(RequestTooLargeError):
                        scheduler.add_request(request)
                    continue
                scheduler.add_request(request)
                accepted.add(rid)
                arrival_rank[rid] = len(arrival_rank)
            if spec["abort_step"] == step_index and scheduler.abort_request(rid):
                aborted.add(rid)
        if step_index > 20 and not scheduler.has_unfinished_requests():
            break
        _, outputs = checked_step(scheduler, worker, arrival_rank)
        for out in outputs:
            tokens[out.request_id] += out.new_token_ids
            assert out.num_output_tokens == len(tokens[out.request_id])
        for request in list(scheduler.requests.values()):
            assert request.num_computed_tokens <= request.num_tokens
            assert len(request.block_ids) <= num_blocks
        in_use = {b for r in scheduler.running for b in r.block_ids}
        assert scheduler.block_manager.num_free_blocks == num_blocks - len(in_use)
    else:
        raise AssertionError("requests never finished")
    step(scheduler, worker)
    assert worker.seqs == {}
    assert_all_blocks_free(scheduler)
    for rid in accepted - aborted:
        assert tokens[rid] == expected_tokens(rid), rid
