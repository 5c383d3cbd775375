"""Runs a ModelRunner's steps from asyncio: the model on one thread, device waits on another.

`step(plan)` launches the step on the model thread, waits for the device on the waiter thread and
finishes it on the model thread. When the scheduler has two steps in flight, step N+1's launch
runs on the model thread while the device still computes step N, so the device never waits for
the host. Invariant: launches run in call order (one model thread, FIFO), hence in step order.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from services.common.step import CacheSpec, StepPlan, StepResult
from services.worker import metrics


class StepExecutor:
    def __init__(self):
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.wait_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device-wait")
        self.runner = None  # set by load()

    async def _on(self, pool: ThreadPoolExecutor, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def load(self, factory: Callable, *args) -> None:
        self.runner = await self._on(self.model_thread, factory, *args)

    async def init(self) -> CacheSpec:
        await self._on(self.model_thread, self.runner.reset)
        spec = self.runner.cache_spec()
        metrics.KV_BLOCKS.set(spec.num_blocks)
        return spec

    async def step(self, plan: StepPlan) -> StepResult:
        started = time.perf_counter()
        try:
            handle = await self._on(self.model_thread, self.runner.launch, plan)
            await self._on(self.wait_thread, self.runner.wait, handle)
            result = await self._on(self.model_thread, self.runner.finish, handle)
        except Exception:
            metrics.STEP_ERRORS.inc()
            raise
        metrics.STEP_LATENCY.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(plan.num_scheduled_tokens))
        metrics.STEP_TOKENS.observe(plan.total_num_scheduled_tokens)
        metrics.TOKENS.inc(plan.total_num_scheduled_tokens)
        metrics.ACTIVE_REQUESTS.set(self.runner.num_requests)
        return result

    def close(self) -> None:
        self.model_thread.shutdown(wait=False)
        self.wait_thread.shutdown(wait=False)
