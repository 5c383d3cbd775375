"""The engine's link to a worker over gRPC: protobuf stops here.

Steps travel on one long-lived `Worker.Steps` stream per session, so the worker executes them in
the order sent even when two are in flight (overlapped scheduling). Answers come back in order;
each resolves the oldest waiting step.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import grpc

from services.common.convert import cache_spec_from_pb, plan_to_pb, result_from_pb
from services.common.errors import Unavailable
from services.common.pb import worker_pb2, worker_pb2_grpc
from services.common.rpc import CHANNEL_OPTIONS, queued_messages
from services.common.step import CacheSpec, StepPlan, StepResult

log = logging.getLogger(__name__)


class GrpcWorkerLink:
    def __init__(self, address: str, startup_timeout: float = 900.0, step_timeout: float = 600.0):
        self.address = address
        self.startup_timeout = startup_timeout  # loading a large checkpoint takes minutes
        self.step_timeout = step_timeout  # a step longer than this means the worker is wedged
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = worker_pb2_grpc.WorkerStub(self.channel)
        self._call = None
        self._outbox: asyncio.Queue | None = None
        self._waiting: deque[asyncio.Future] = deque()
        self._reader: asyncio.Task | None = None
        self._broken: Exception | None = None

    async def init(self) -> CacheSpec:
        """Wait for the worker to come up (it may still be loading weights), start a session and
        open its step stream."""
        await self._close_stream()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                pb = await self.stub.Init(worker_pb2.InitRequest(), wait_for_ready=True,
                                          timeout=max(1.0, deadline - time.monotonic()))
                break
            except grpc.aio.AioRpcError as exc:
                if time.monotonic() >= deadline:
                    raise Unavailable(f"worker at {self.address} not ready: {exc.details()}") from exc
                log.info("waiting for worker at %s: %s", self.address, exc.code().name)
                await asyncio.sleep(0.5)
        self._outbox = asyncio.Queue()
        self._broken = None
        self._call = self.stub.Steps(queued_messages(self._outbox))
        self._reader = asyncio.create_task(self._read(self._call), name="worker-steps-reader")
        return cache_spec_from_pb(pb)

    async def _read(self, call) -> None:
        try:
            async for pb in call:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(result_from_pb(pb))
            error: Exception = Unavailable(f"worker at {self.address} closed the step stream")
        except grpc.aio.AioRpcError as exc:
            error = Unavailable(f"worker at {self.address}: {exc.code().name}: {exc.details()}")
        except asyncio.CancelledError:
            error = Unavailable("step stream closed")
        self._broken = error
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    async def step(self, plan: StepPlan) -> StepResult:
        if self._outbox is None or self._broken is not None:
            raise self._broken or Unavailable("no worker session (init first)")
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._outbox.put_nowait(plan_to_pb(plan))
        return await asyncio.wait_for(asyncio.shield(future), self.step_timeout)

    async def _close_stream(self) -> None:
        if self._call is not None:
            self._outbox.put_nowait(None)
            self._call.cancel()
            if self._reader is not None:
                self._reader.cancel()
                try:
                    await self._reader
                except asyncio.CancelledError:
                    pass
        self._call = self._reader = self._outbox = None
        self._waiting.clear()

    async def close(self) -> None:
        await self._close_stream()
        await self.channel.close()
