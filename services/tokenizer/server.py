"""Run the tokenizer (front) service: `sluice tokenizer --model DIR --scheduler-address HOST:PORT`."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.common.gc_tuning import tune_gc
from services.common.metrics import serve_metrics
from services.common.pb import tokenizer_pb2, tokenizer_pb2_grpc
from services.common.rpc import GrpcServer, ServerAddress, full_name
from services.tokenizer.front import Front
from services.tokenizer.scheduler_client import SchedulerClient
from services.tokenizer.servicer import GenerationServicer
from services.tokenizer.tokenizer import TextTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerServiceConfig:
    model: str  # HF model directory holding the tokenizer files and chat template
    address: ServerAddress = ServerAddress(port=50051, metrics_port=9401)
    scheduler_address: str = "127.0.0.1:50052"  # the scheduler this front forwards to


async def serve(config: TokenizerServiceConfig, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    serve_metrics(config.address.host, config.address.metrics_port)
    tokenizer = await asyncio.to_thread(TextTokenizer, config.model)
    client = SchedulerClient(config.scheduler_address)
    front = Front(tokenizer, client)
    server = GrpcServer(config.address, [full_name(tokenizer_pb2, "Generation")])
    tokenizer_pb2_grpc.add_GenerationServicer_to_server(GenerationServicer(front), server.server)
    await server.start()
    await server.set_serving(True)
    log.info("tokenizer serving on %s:%d (scheduler %s)", config.address.host, server.port,
             config.scheduler_address)
    tune_gc()
    if ready:
        ready.set()
    try:
        await (stop.wait() if stop else asyncio.Event().wait())
    finally:
        await server.stop(grace=2.0)
        await client.close()
