"""How many streamed messages per second Python gRPC moves: the ceiling of per-token streaming.

`python -m benchmarks.grpc_rate [--streams 128] [--messages 200]` starts a grpc.aio server whose
`Scheduler.Generate` yields `--messages` one-token responses per call, opens `--streams` concurrent
calls from a client in the same process, and prints messages per second (server and client share the
process, so this is the cost of one message on both sides of one hop). Runs anywhere, no model.
"""
from __future__ import annotations

import argparse
import asyncio
import time

import grpc

from services.common.pb import scheduler_pb2, scheduler_pb2_grpc


class _OneTokenPerMessage(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, messages: int):
        self.messages = messages

    async def Generate(self, request, context):
        for i in range(self.messages):
            yield scheduler_pb2.GenerateTokensResponse(request_id=request.request_id, token_ids=[i])
            await asyncio.sleep(0)  # let other streams interleave, as a step's outputs do


async def measure(streams: int, messages: int) -> float:
    """Messages per second over `streams` concurrent calls of `messages` messages each."""
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(_OneTokenPerMessage(messages), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)

            async def one(i: int) -> int:
                call = stub.Generate(scheduler_pb2.GenerateTokensRequest(request_id=f"r{i}"))
                return sum([1 async for _ in call])

            started = time.perf_counter()
            total = sum(await asyncio.gather(*(one(i) for i in range(streams))))
            return total / (time.perf_counter() - started)
    finally:
        await server.stop(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=128)
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args(argv)
    rate = asyncio.run(measure(args.streams, args.messages))
    print(f"{args.streams} streams x {args.messages} messages: {rate:.0f} messages/s "
          f"({1e6 / rate:.0f} µs per message, server and client in one process)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
