"""An in-process worker link: the scheduler engine drives a ModelRunner directly, without gRPC.

Used by benchmarks to measure what the gRPC split costs, and by tests. Steps run through the same
StepExecutor as in the worker service, so overlapped scheduling works the same way.
"""
from __future__ import annotations

from services.common.step import CacheSpec, StepPlan, StepResult
from services.worker.config import WorkerConfig
from services.worker.executor import StepExecutor


class LocalWorkerLink:
    def __init__(self, config: WorkerConfig):
        self.config = config
        self.executor = StepExecutor()

    async def init(self) -> CacheSpec:
        if self.executor.runner is None:
            from services.worker.model_runner import ModelRunner
            await self.executor.load(ModelRunner, self.config)
        return await self.executor.init()

    async def step(self, plan: StepPlan) -> StepResult:
        return await self.executor.step(plan)

    def close(self) -> None:
        self.executor.close()
