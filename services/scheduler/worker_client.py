"""The engine's link to a worker over gRPC: protobuf stops here."""
from __future__ import annotations

import asyncio
import logging
import time

import grpc

from services.common.convert import cache_spec_from_pb, plan_to_pb, result_from_pb
from services.common.errors import Unavailable
from services.common.pb import worker_pb2, worker_pb2_grpc
from services.common.rpc import CHANNEL_OPTIONS
from services.common.step import CacheSpec, StepPlan, StepResult

log = logging.getLogger(__name__)


class GrpcWorkerLink:
    def __init__(self, address: str, startup_timeout: float = 900.0, step_timeout: float = 600.0):
        self.address = address
        self.startup_timeout = startup_timeout  # loading a large checkpoint takes minutes
        self.step_timeout = step_timeout  # a step longer than this means the worker is wedged
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = worker_pb2_grpc.WorkerStub(self.channel)

    async def init(self) -> CacheSpec:
        """Wait for the worker to come up (it may still be loading weights), then start a session."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                pb = await self.stub.Init(worker_pb2.InitRequest(), wait_for_ready=True,
                                          timeout=max(1.0, deadline - time.monotonic()))
                return cache_spec_from_pb(pb)
            except grpc.aio.AioRpcError as exc:
                if time.monotonic() >= deadline:
                    raise Unavailable(f"worker at {self.address} not ready: {exc.details()}") from exc
                log.info("waiting for worker at %s: %s", self.address, exc.code().name)
                await asyncio.sleep(0.5)

    async def step(self, plan: StepPlan) -> StepResult:
        pb = await self.stub.Step(plan_to_pb(plan), timeout=self.step_timeout)
        return result_from_pb(pb)

    async def close(self) -> None:
        await self.channel.close()
