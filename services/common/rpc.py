"""gRPC plumbing shared by the three services: server construction with health and reflection,
error mapping for handlers, deadline helpers and channel options."""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from services.common.errors import SluiceError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]
# Servers accept the clients' keepalive pings (every 30 s) instead of answering too_many_pings.
SERVER_OPTIONS = [o for o in CHANNEL_OPTIONS if o[0].startswith("grpc.max_")] + [
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]


@dataclass(frozen=True)
class ServerAddress:
    host: str = "127.0.0.1"  # interface to bind; 0.0.0.0 in containers
    port: int = 0  # gRPC port
    metrics_port: int = 0  # Prometheus /metrics port; 0 disables the HTTP endpoint

    def __post_init__(self) -> None:
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if not 0 <= value < 65536:
                raise ValueError(f"{name} must be in [0, 65535], got {value}")


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, SluiceError):
        return exc.code, str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    if isinstance(exc, grpc.aio.AioRpcError):
        # An error from a downstream service keeps its code (UNAVAILABLE, RESOURCE_EXHAUSTED, ...).
        return exc.code(), exc.details() or exc.code().name
    log.exception("unexpected error in handler")
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


async def queued_messages(queue: asyncio.Queue):
    """The request side of a long-lived client stream: whatever is put on `queue`, until None.
    Senders `put_nowait` and never await a write; grpc's own task sends in order."""
    while (message := await queue.get()) is not None:
        yield message


def handle_errors(fn: Callable) -> Callable:
    """Wrap an aio handler (coroutine or async generator) so domain errors become statuses."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream_wrapper(self, request, context):
            try:
                async for item in fn(self, request, context):
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status, never UNKNOWN
                code, message = _status_of(exc)
                await context.abort(code, message)
        return stream_wrapper

    @functools.wraps(fn)
    async def unary_wrapper(self, request, context):
        try:
            return await fn(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001
            code, message = _status_of(exc)
            await context.abort(code, message)
    return unary_wrapper


class GrpcServer:
    """An aio server that also serves grpc.health.v1 and server reflection."""

    def __init__(self, address: ServerAddress, service_names: Iterable[str]):
        self.address = address
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            self.service_names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                  reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(f"{address.host}:{address.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {address.host}:{address.port}")

    async def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in self.service_names + [""]:
            await self.health.set(name, status)

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()

    async def stop(self, grace: float = 5.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


def time_remaining(context: Any) -> float | None:
    """Seconds left before the caller's deadline (None when it set none), for propagation."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e8 else max(remaining, 0.0)


def full_name(service_descriptor_module, service: str) -> str:
    return service_descriptor_module.DESCRIPTOR.services_by_name[service].full_name
