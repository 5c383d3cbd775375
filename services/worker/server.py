"""Run a worker: `sluice worker --model DIR`. Serves health (NOT_SERVING while loading) at once,
loads the model on the model thread, then serves steps."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.common.gc_tuning import tune_gc
from services.common.metrics import serve_metrics
from services.common.pb import worker_pb2, worker_pb2_grpc
from services.common.rpc import GrpcServer, ServerAddress, full_name
from services.worker.config import WorkerConfig
from services.worker.executor import StepExecutor
from services.worker.servicer import WorkerServicer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerServiceConfig:
    worker: WorkerConfig
    address: ServerAddress = ServerAddress(port=50053, metrics_port=9403)


async def serve(config: WorkerServiceConfig, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    serve_metrics(config.address.host, config.address.metrics_port)
    executor = StepExecutor()
    servicer = WorkerServicer(executor)
    server = GrpcServer(config.address, [full_name(worker_pb2, "Worker")])
    worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server.server)
    await server.start()
    log.info("worker listening on %s:%d, loading %s", config.address.host, server.port,
             config.worker.model)
    from services.worker.model_runner import ModelRunner
    await executor.load(ModelRunner, config.worker)
    await server.set_serving(True)
    log.info("worker serving: %s", executor.runner.cache_spec())
    tune_gc()
    if ready:
        ready.set()
    try:
        await (stop.wait() if stop else asyncio.Event().wait())
    finally:
        await server.stop(grace=2.0)
        executor.close()
