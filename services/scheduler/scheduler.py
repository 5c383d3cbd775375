"""Continuous batching: which requests compute how many tokens in each step.

One step is `plan = scheduler.schedule()`, the worker runs it, then `scheduler.update(plan, result)`.
Every plan must be updated before the next `schedule()`; `update` may be skipped only for a plan
with no scheduled tokens. A plan with nothing in it (no tokens, no finished ids) need not be sent
and does not consume a step id, so the step ids the worker sees are consecutive.
"""
from __future__ import annotations

from collections import deque

from services.common.step import CachedRequestData, NewRequestData, StepPlan, StepResult
from services.scheduler.block_manager import BlockManager
from services.scheduler.config import SchedulerConfig
from services.scheduler.request import FinishReason, Request, RequestOutput, RequestStatus


class QueueFullError(Exception):
    """The waiting queue holds max_waiting_requests (maps to RESOURCE_EXHAUSTED)."""


class RequestTooLargeError(ValueError):
    """The request cannot complete even alone: too long for the model or for the KV cache."""


class Scheduler:
    """FCFS continuous batching with chunked prefill, prefix caching and preemption by recompute.

    Invariants:
    - `running` holds exactly the RUNNING requests, which are exactly the requests the worker holds
      state for; `waiting` holds the WAITING and PREEMPTED ones, which hold no blocks;
    - `running` followed by `waiting` is in arrival (add) order: admission moves the front of
      `waiting` to the back of `running`; preemption moves the back of `running` (the most
      recent arrival) to the front of `waiting`;
    - every accepted request needs at most num_blocks blocks, and the earliest-arrived running
      request is never preempted for another, so a request that fits alone never fails for lack
      of blocks;
    - num_computed_tokens counts tokens scheduled so far, advanced when a plan is made.
    """

    def __init__(self, config: SchedulerConfig, num_blocks: int, block_size: int,
                 max_model_len: int):
        if max_model_len < 2:
            raise ValueError(f"max_model_len must be at least 2, got {max_model_len}")
        self.config = config
        self.max_model_len = max_model_len
        self.block_manager = BlockManager(num_blocks, block_size, config.enable_prefix_caching)
        self.requests: dict[str, Request] = {}  # every unfinished request
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._finished_ids: list[str] = []  # worker-held requests finished since the last plan
        self._step_id = 0
        self.num_preemptions_total = 0

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_usage(self) -> float:
        return self.block_manager.usage

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_request(self, request_id: str) -> Request | None:
        return self.requests.get(request_id)

    def add_request(self, request: Request) -> None:
        """Accepts a fresh request that can complete alone, or raises (nothing changes then)."""
        if request.request_id in self.requests:
            raise ValueError(f"duplicate request_id {request.request_id!r}")
        if request.status is not RequestStatus.WAITING or request.output_token_ids:
            raise ValueError(f"request {request.request_id!r} was already scheduled")
        if not request.prompt_token_ids:
            raise ValueError("prompt_token_ids must not be empty")
        if request.sampling.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {request.sampling.max_tokens}")
        max_len = min(self.max_model_len, request.max_model_len)
        total = request.num_prompt_tokens + request.sampling.max_tokens
        if total > max_len:
            raise RequestTooLargeError(
                f"prompt ({request.num_prompt_tokens} tokens) + max_tokens "
                f"({request.sampling.max_tokens}) exceeds max_model_len {max_len}")
        num_blocks = self.block_manager.num_blocks_for(total)
        if num_blocks > self.block_manager.num_blocks:
            raise RequestTooLargeError(
                f"request needs {num_blocks} KV blocks, the cache has "
                f"{self.block_manager.num_blocks}")
        if len(self.waiting) >= self.config.max_waiting_requests:
            raise QueueFullError(f"{len(self.waiting)} requests already waiting")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort_request(self, request_id: str) -> bool:
        """False for an unknown (or already finished) id; otherwise its blocks are free on return."""
        request = self.requests.get(request_id)
        if request is None:
            return False
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
            self._finished_ids.append(request_id)
        else:
            self.waiting.remove(request)
        self._finish(request, FinishReason.ABORT)
        return True

    def schedule(self) -> StepPlan:
        """The next step: running requests oldest first, then waiting ones in order, within
        max_num_batched_tokens and max_num_seqs. Admits nobody in a step that preempts."""
        plan = StepPlan(step_id=self._step_id, finished_request_ids=self._finished_ids)
        self._finished_ids = []
        budget = self.config.max_num_batched_tokens
        preempted = False

        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens + request.num_pending_tokens
                          - request.num_computed_tokens, budget)
            if num_new <= 0 or _reaches_limit(request):
                index += 1
                continue
            new_block_ids = self.block_manager.allocate_slots(request, num_new)
            while new_block_ids is None:
                victim = self.running.pop()
                self._preempt(victim, plan)
                preempted = True
                if victim is request:
                    break
                new_block_ids = self.block_manager.allocate_slots(request, num_new)
            if new_block_ids is None:
                break
            plan.cached_requests.append(
                CachedRequestData(request.request_id, new_block_ids, request.num_computed_tokens))
            plan.num_scheduled_tokens[request.request_id] = num_new
            request.num_computed_tokens += num_new
            _note_sampling(request)
            budget -= num_new
            index += 1

        while (self.waiting and not preempted and budget > 0
               and len(self.running) < self.config.max_num_seqs):
            request = self.waiting[0]
            computed_block_ids, num_cached = self.block_manager.get_computed_blocks(request)
            num_new = min(request.num_tokens - num_cached, budget)
            if self.block_manager.allocate_slots(request, num_new, computed_block_ids) is None:
                break
            self.waiting.popleft()
            if request.status is RequestStatus.WAITING:
                request.num_cached_tokens = num_cached
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_cached + num_new
            _note_sampling(request)
            self.running.append(request)
            plan.new_requests.append(NewRequestData(
                request_id=request.request_id,
                prompt_token_ids=list(request.prompt_token_ids),
                output_token_ids=list(request.output_token_ids),
                sampling=request.sampling,
                block_ids=list(request.block_ids),
                num_computed_tokens=num_cached))
            plan.num_scheduled_tokens[request.request_id] = num_new
            budget -= num_new
        if plan.num_scheduled_tokens or plan.finished_request_ids:
            self._step_id += 1
        return plan

    def update(self, plan: StepPlan, result: StepResult) -> list[RequestOutput]:
        """One output per sampled token of a request still running that reached its end in plan;
        finished requests hold no blocks on return and are dropped in the next plan."""
        if result.step_id != plan.step_id:
            raise ValueError(f"result of step {result.step_id} given for plan {plan.step_id}")
        for request_id in plan.num_scheduled_tokens:
            request = self.requests.get(request_id)
            if request is not None and request.status is RequestStatus.RUNNING:
                self.block_manager.cache_full_blocks(request)
        outputs = []
        for sampled in result.sampled:
            request = self.requests.get(sampled.request_id)
            if (request is None or request.status is not RequestStatus.RUNNING
                    or sampled.request_id not in plan.num_scheduled_tokens
                    or request.num_pending_tokens == 0):
                continue
            request.num_pending_tokens -= 1
            request.output_token_ids.append(sampled.token_id)
            if request.output_logprobs is not None:
                request.output_logprobs.append(sampled)
            reason = _stop_reason(request, sampled.token_id)
            if reason is not None:
                self.running.remove(request)
                self._finished_ids.append(request.request_id)
                self._finish(request, reason)
            outputs.append(RequestOutput(
                request_id=request.request_id,
                new_token_ids=[sampled.token_id],
                new_logprobs=[sampled] if request.output_logprobs is not None else [],
                finished=reason is not None,
                finish_reason=reason,
                num_prompt_tokens=request.num_prompt_tokens,
                num_output_tokens=request.num_output_tokens,
                num_cached_tokens=request.num_cached_tokens))
        return outputs

    def _preempt(self, request: Request, plan: StepPlan) -> None:
        self.block_manager.free(request)
        request.num_computed_tokens = 0
        request.num_pending_tokens = 0  # tokens of steps in flight are dropped and recomputed
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(request)
        plan.finished_request_ids.append(request.request_id)

    def _finish(self, request: Request, reason: FinishReason) -> None:
        self.block_manager.free(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        del self.requests[request.request_id]


def _note_sampling(request: Request) -> None:
    """A step that computes a request up to its last known token samples one more."""
    if request.num_computed_tokens == request.num_tokens + request.num_pending_tokens:
        request.num_pending_tokens += 1


def _reaches_limit(request: Request) -> bool:
    """With tokens pending, would one more step exceed max_tokens or the context (wasted work)?"""
    if request.num_pending_tokens == 0:
        return False
    return (request.num_output_tokens + request.num_pending_tokens >= request.sampling.max_tokens
            or request.num_tokens + request.num_pending_tokens >= request.max_model_len)


def _stop_reason(request: Request, token_id: int) -> FinishReason | None:
    sampling = request.sampling
    if request.num_output_tokens >= sampling.min_tokens and (
            (not sampling.ignore_eos and token_id in request.eos_token_ids)
            or token_id in sampling.stop_token_ids):
        return FinishReason.STOP
    if request.num_output_tokens >= sampling.max_tokens:
        return FinishReason.LENGTH
    if request.num_tokens >= request.max_model_len:
        return FinishReason.LENGTH
    return None
