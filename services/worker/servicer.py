"""gRPC servicer of the worker's step API: converts protobuf and delegates to the StepExecutor."""
from __future__ import annotations

import asyncio

from services.common.convert import cache_spec_to_pb, plan_from_pb, result_to_pb
from services.common.errors import Unavailable
from services.common.pb import worker_pb2_grpc
from services.common.rpc import handle_errors
from services.worker.executor import StepExecutor


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, executor: StepExecutor):
        self.executor = executor

    def _check_loaded(self) -> None:
        if self.executor.runner is None:
            raise Unavailable("worker is still loading its model")

    @handle_errors
    async def Init(self, request, context):
        self._check_loaded()
        return cache_spec_to_pb(await self.executor.init())

    @handle_errors
    async def Step(self, request, context):
        self._check_loaded()
        return result_to_pb(await self.executor.step(plan_from_pb(request)))

    @handle_errors
    async def Steps(self, request_iterator, context):
        """Steps start in the order received (each starts as soon as it arrives, so step N+1 is
        launched while the device computes step N) and are answered in that order."""
        self._check_loaded()
        started: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            async for pb in request_iterator:
                started.put_nowait(asyncio.ensure_future(self.executor.step(plan_from_pb(pb))))
            started.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await started.get()) is not None:
                yield result_to_pb(await task)
            await reader
        finally:
            reader.cancel()
            while not started.empty():
                task = started.get_nowait()
                if task is not None:
                    task.cancel()
