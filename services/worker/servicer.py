"""gRPC servicer of the worker's step API. The model runs on one dedicated thread so the event
loop keeps answering health checks during a long step."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from services.common.convert import cache_spec_to_pb, plan_from_pb, result_to_pb
from services.common.errors import Unavailable
from services.common.pb import worker_pb2_grpc
from services.common.rpc import handle_errors
from services.worker import metrics


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self):
        self.runner = None  # set once the model is loaded
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._lock = asyncio.Lock()

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @handle_errors
    async def Init(self, request, context):
        if self.runner is None:
            raise Unavailable("worker is still loading its model")
        async with self._lock:
            await self._run(self.runner.reset)
            spec = self.runner.cache_spec()
        metrics.KV_BLOCKS.set(spec.num_blocks)
        return cache_spec_to_pb(spec)

    @handle_errors
    async def Step(self, request, context):
        if self.runner is None:
            raise Unavailable("worker is still loading its model")
        plan = plan_from_pb(request)
        started = time.perf_counter()
        async with self._lock:
            try:
                result = await self._run(self.runner.execute, plan)
            except Exception:
                # Plan errors (InvalidArgument, FailedPrecondition) leave state unchanged; anything
                # else (e.g. out of memory) leaves it undefined, and the scheduler re-inits.
                metrics.STEP_ERRORS.inc()
                raise
        seconds = time.perf_counter() - started
        metrics.STEP_LATENCY.observe(seconds)
        metrics.BATCH_SIZE.observe(len(plan.num_scheduled_tokens))
        metrics.STEP_TOKENS.observe(plan.total_num_scheduled_tokens)
        metrics.TOKENS.inc(plan.total_num_scheduled_tokens)
        metrics.ACTIVE_REQUESTS.set(self.runner.num_requests)
        return result_to_pb(result, compute_seconds=seconds)
