"""The scheduler's asyncio engine: admits requests, runs the step loop against a worker and fans
sampled tokens out to per-request streams.

Invariants: every admitted request ends with exactly one finished `RequestOutput` on its stream
(stop, length, abort or error), and when its stream is closed for any reason the request is aborted
in the scheduler core, so no KV block outlives its request.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from services.common.errors import AlreadyExists, InvalidArgument, ResourceExhausted, Unavailable
from services.common.sampling import SamplingParams
from services.common.step import CacheSpec, StepPlan, StepResult
from services.scheduler import metrics
from services.scheduler.config import SchedulerConfig
from services.scheduler.request import FinishReason, Request, RequestOutput
from services.scheduler.scheduler import QueueFullError, RequestTooLargeError, Scheduler

log = logging.getLogger(__name__)


class WorkerLink(Protocol):
    """What the engine needs from a model replica (gRPC in production, in-process in tests)."""

    async def init(self) -> CacheSpec: ...

    async def step(self, plan: StepPlan) -> StepResult: ...


@dataclass
class _Stream:
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    arrival: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    num_output_tokens: int = 0
    held: list[RequestOutput] = field(default_factory=list)  # tokens kept back by stream_interval
    delivered_tokens: bool = False  # the reader has been given a token (the first never waits)


class SchedulerEngine:
    def __init__(self, config: SchedulerConfig, worker: WorkerLink):
        self.config = config
        self.worker = worker
        self.spec: CacheSpec | None = None
        self.scheduler: Scheduler | None = None
        self._streams: dict[str, _Stream] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.num_steps = 0
        self._preemptions_seen = 0
        self._prefix_hits_seen = 0

    async def start(self) -> CacheSpec:
        await self._init_worker()
        self._task = asyncio.create_task(self._run(), name="scheduler-loop")
        return self.spec

    async def _init_worker(self) -> None:
        self.spec = await self.worker.init()
        self.scheduler = Scheduler(self.config, self.spec.num_blocks, self.spec.block_size,
                                   self.spec.max_model_len)
        self._preemptions_seen = self._prefix_hits_seen = 0
        log.info("worker ready: %s", self.spec)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for request_id in list(self._streams):
            self._finish_stream(request_id, FinishReason.ABORT)

    @property
    def ready(self) -> bool:
        return self.scheduler is not None and self._task is not None and not self._task.done()

    def add_request(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingParams,
                    outbox: asyncio.Queue | None = None) -> None:
        """Admit a request; its outputs are read with `stream(request_id)`, or, given an `outbox`
        (a queue several requests may share), put there as they come (subject to stream_interval)."""
        if not self.ready:
            raise Unavailable("scheduler is not ready (worker not initialised)")
        if request_id in self._streams:
            raise AlreadyExists(f"request_id {request_id!r} is already live")
        request = Request(request_id=request_id, prompt_token_ids=prompt_token_ids,
                          sampling=sampling, eos_token_ids=self.spec.eos_token_ids,
                          max_model_len=self.spec.max_model_len)
        try:
            self.scheduler.add_request(request)
        except QueueFullError as exc:
            metrics.REJECTED.labels("queue_full").inc()
            raise ResourceExhausted(f"waiting queue is full: {exc}") from exc
        except (RequestTooLargeError, ValueError) as exc:
            metrics.REJECTED.labels("too_large").inc()
            raise InvalidArgument(str(exc)) from exc
        self._streams[request_id] = _Stream() if outbox is None else _Stream(queue=outbox)
        metrics.PROMPT_TOKENS.inc(len(prompt_token_ids))
        self._wakeup.set()

    async def stream(self, request_id: str) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs, merging those that queued up while the reader was slow.
        Closing the iterator early aborts the request."""
        state = self._streams[request_id]
        finished = False
        try:
            while not finished:
                outputs = [await state.queue.get()]
                while not state.queue.empty():
                    outputs.append(state.queue.get_nowait())
                merged = merge_outputs(outputs)
                finished = merged.finished
                yield merged
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> bool:
        if request_id not in self._streams:
            return False
        self._finish_stream(request_id, FinishReason.ABORT)
        self._wakeup.set()
        return True

    def _finish_stream(self, request_id: str, reason: FinishReason) -> None:
        """End a live request from outside the step loop (abort or worker failure)."""
        state = self._streams.pop(request_id, None)
        if state is None:
            return
        request = None
        if self.scheduler is not None:
            request = self.scheduler.get_request(request_id)
            self.scheduler.abort_request(request_id)
        metrics.REQUESTS.labels(reason.value).inc()
        self._deliver(state, RequestOutput(
            request_id=request_id, new_token_ids=[], new_logprobs=[], finished=True,
            finish_reason=reason,
            num_prompt_tokens=request.num_prompt_tokens if request else 0,
            num_output_tokens=request.num_output_tokens if request else state.num_output_tokens,
            num_cached_tokens=request.num_cached_tokens if request else 0))

    async def _run(self) -> None:
        """schedule -> worker.step -> update, with up to `pipeline_depth` steps in flight: step N+1
        is scheduled and sent while the worker computes step N, so the GPU never waits for us."""
        inflight: deque[tuple[StepPlan, asyncio.Future, float]] = deque()
        try:
            while True:
                while len(inflight) < self.config.pipeline_depth:
                    plan = self.scheduler.schedule()
                    if not plan.num_scheduled_tokens and not plan.finished_request_ids:
                        break
                    inflight.append((plan, asyncio.ensure_future(self.worker.step(plan)),
                                     time.perf_counter()))
                if not inflight:
                    self._wakeup.clear()
                    if not self.scheduler.has_unfinished_requests():
                        await self._wakeup.wait()
                    else:
                        # Waiting requests but nothing schedulable: let aborts/finishes free room.
                        await asyncio.sleep(0.001)
                    continue
                plan, future, started = inflight.popleft()
                try:
                    result = await future
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any worker failure ends the live requests
                    await _drain(inflight)
                    await self._recover(exc)
                    continue
                self._dispatch(self.scheduler.update(plan, result))
                self.num_steps += 1
                metrics.STEP.observe(time.perf_counter() - started)
                metrics.STEP_TOKENS.observe(plan.total_num_scheduled_tokens)
                self._export_gauges()
        finally:
            await _drain(inflight)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        now = time.monotonic()
        for out in outputs:
            state = self._streams.get(out.request_id)
            if state is None:
                continue
            if out.new_token_ids and state.first_token is None:
                state.first_token = now
                metrics.TTFT.observe(now - state.arrival)
            state.num_output_tokens += len(out.new_token_ids)
            metrics.GENERATION_TOKENS.inc(len(out.new_token_ids))
            self._deliver(state, out)
            if out.finished:
                del self._streams[out.request_id]
                metrics.REQUESTS.labels(out.finish_reason.value).inc()
                metrics.E2E.observe(now - state.arrival)
                if state.first_token is not None and state.num_output_tokens > 1:
                    metrics.TPOT.observe((now - state.first_token) / (state.num_output_tokens - 1))

    def _deliver(self, state: _Stream, out: RequestOutput) -> None:
        """Put `out` on the request's queue; after its first token, hold tokens back until
        `stream_interval` are ready or the request finishes (one merged output then)."""
        state.held.append(out)
        if state.delivered_tokens and not out.finished and \
                sum(len(o.new_token_ids) for o in state.held) < self.config.stream_interval:
            return
        merged = merge_outputs(state.held)
        state.held = []
        state.delivered_tokens = state.delivered_tokens or bool(merged.new_token_ids)
        state.queue.put_nowait(merged)

    async def _recover(self, exc: Exception) -> None:
        """A failed step leaves the worker's state unknown: end every live request with an error
        and start a fresh session (new block manager, worker state dropped)."""
        log.error("worker step failed: %s; failing %d live requests", exc, len(self._streams))
        metrics.WORKER_FAILURES.inc()
        for request_id in list(self._streams):
            self._finish_stream(request_id, FinishReason.ERROR)
        while True:
            try:
                await self._init_worker()
                return
            except asyncio.CancelledError:
                raise
            except Exception as init_exc:  # noqa: BLE001
                log.error("worker re-init failed: %s; retrying", init_exc)
                await asyncio.sleep(1.0)

    def _export_gauges(self) -> None:
        metrics.RUNNING.set(self.scheduler.num_running)
        metrics.WAITING.set(self.scheduler.num_waiting)
        metrics.KV_USAGE.set(self.scheduler.kv_usage)
        preemptions = self.scheduler.num_preemptions_total
        if preemptions > self._preemptions_seen:
            metrics.PREEMPTIONS.inc(preemptions - self._preemptions_seen)
        self._preemptions_seen = preemptions
        hits = self.scheduler.block_manager.num_prefix_hit_tokens
        if hits > self._prefix_hits_seen:
            metrics.PREFIX_HIT_TOKENS.inc(hits - self._prefix_hits_seen)
        self._prefix_hits_seen = hits

    def load(self) -> dict:
        s = self.scheduler
        if s is None:
            return dict(num_running=0, num_waiting=0, kv_usage=0.0, num_free_blocks=0)
        return dict(num_running=s.num_running, num_waiting=s.num_waiting, kv_usage=s.kv_usage,
                    num_free_blocks=s.block_manager.num_free_blocks)


async def _drain(inflight: deque) -> None:
    """Cancel and await every step still in flight (their results no longer matter)."""
    while inflight:
        _, future, _ = inflight.popleft()
        future.cancel()
        try:
            await future
        except BaseException:  # noqa: BLE001 - cancelled or failed, either way discarded
            pass


def merge_outputs(outputs: list[RequestOutput]) -> RequestOutput:
    """Consecutive outputs of one request as one."""
    if len(outputs) == 1:
        return outputs[0]
    last = outputs[-1]
    return RequestOutput(
        request_id=last.request_id,
        new_token_ids=[t for o in outputs for t in o.new_token_ids],
        new_logprobs=[lp for o in outputs for lp in o.new_logprobs],
        finished=last.finished, finish_reason=last.finish_reason,
        num_prompt_tokens=last.num_prompt_tokens, num_output_tokens=last.num_output_tokens,
        num_cached_tokens=last.num_cached_tokens)
