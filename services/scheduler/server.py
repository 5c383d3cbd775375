"""Run the scheduler service: `sluice scheduler --worker-address HOST:PORT`."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from services.common.gc_tuning import tune_gc
from services.common.metrics import serve_metrics
from services.common.pb import scheduler_pb2, scheduler_pb2_grpc
from services.common.rpc import GrpcServer, ServerAddress, full_name
from services.scheduler.config import SchedulerConfig
from services.scheduler.engine import SchedulerEngine
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.worker_client import GrpcWorkerLink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerServiceConfig:
    address: ServerAddress = ServerAddress(port=50052, metrics_port=9402)
    worker_address: str = "127.0.0.1:50053"  # rank 0 of the model replica this scheduler drives
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    worker_startup_timeout: float = 900.0  # seconds to wait for the worker to load its model


async def serve(config: SchedulerServiceConfig, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    serve_metrics(config.address.host, config.address.metrics_port)
    link = GrpcWorkerLink(config.worker_address, startup_timeout=config.worker_startup_timeout)
    engine = SchedulerEngine(config.scheduler, link)
    server = GrpcServer(config.address, [full_name(scheduler_pb2, "Scheduler")])
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(SchedulerServicer(engine), server.server)
    await server.start()
    log.info("scheduler listening on %s:%d; waiting for worker %s", config.address.host,
             server.port, config.worker_address)
    spec = await engine.start()
    await server.set_serving(True)
    log.info("scheduler serving: %d KV blocks of %d tokens, max_model_len %d", spec.num_blocks,
             spec.block_size, spec.max_model_len)
    tune_gc()
    if ready:
        ready.set()
    try:
        await (stop.wait() if stop else asyncio.Event().wait())
    finally:
        await server.set_serving(False)
        await engine.stop()
        await server.stop(grace=2.0)
        await link.close()
